/* format.c — tostring(tensor): values laid out like PyTorch/NumPy, with the
 * middle of large tensors elided, then dtype, shape and autograd info. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "microml.h"

#define ELIDE_ABOVE 1000 /* tensors with more elements show only their edges */
#define EDGE 3           /* items kept at each end of an elided dimension */

typedef struct { char *s; size_t n, cap; bool oom; } sbuf;

static void put(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    if (k < 0) { b->oom = true; return; }
    if (b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
    size_t cap = 2 * b->cap + (size_t)k + 64;
    char *s = realloc(b->s, cap);
    if (!s) { b->oom = true; return; }
    b->s = s;
    b->cap = cap;
  }
}

typedef struct {
  const mm_tensor *t;
  bool elide, ints, sci;
  int width, prec;
} fmt_state;

static void format_value(sbuf *b, const fmt_state *f, double v) {
  char tmp[64];
  if (f->t->dtype == MM_INT64) snprintf(tmp, sizeof tmp, "%lld", (long long)v);
  else if (isnan(v)) snprintf(tmp, sizeof tmp, "nan");
  else if (isinf(v)) snprintf(tmp, sizeof tmp, v > 0 ? "inf" : "-inf");
  else if (f->ints) snprintf(tmp, sizeof tmp, "%.0f.", v);
  else if (f->sci) snprintf(tmp, sizeof tmp, "%.*e", f->prec, v);
  else snprintf(tmp, sizeof tmp, "%.*f", f->prec, v);
  put(b, "%*s", f->width, tmp);
}

/* Recursively prints dimension d starting at element offset `off`. */
static void format_dim(sbuf *b, const fmt_state *f, int d, int64_t off, int indent) {
  const mm_tensor *t = f->t;
  int64_t n = t->shape[d];
  put(b, "[");
  for (int64_t i = 0; i < n; i++) {
    if (f->elide && n > 2 * EDGE && i == EDGE) {
      put(b, d == t->ndim - 1 ? "..., " : "...,\n%*s", d == t->ndim - 1 ? 0 : indent + 1, "");
      if (d < t->ndim - 1) for (int k = d + 1; k < t->ndim - 1; k++) put(b, "\n");
      i = n - EDGE;
    }
    int64_t o = off + i * t->stride[d];
    if (d == t->ndim - 1) {
      double v = t->dtype == MM_FLOAT32 ? ((float *)t->storage->data)[o]
               : t->dtype == MM_FLOAT64 ? ((double *)t->storage->data)[o]
               : (double)((int64_t *)t->storage->data)[o];
      format_value(b, f, v);
      if (i < n - 1) put(b, ", ");
    } else {
      format_dim(b, f, d + 1, o, indent + 1);
      if (i < n - 1) {
        put(b, ",");
        for (int k = d + 1; k < t->ndim; k++) put(b, "\n");
        put(b, "%*s", indent + 1, "");
      }
    }
  }
  put(b, "]");
}

/* Calls fn on every element format_dim will print, and on no other: the
 * format depends only on what is shown, and an elided view of 2^40
 * broadcast elements must not be walked (it would take hours). */
typedef void (*visit_fn)(void *ctx, double v);

static double value_at(const mm_tensor *t, int64_t o) {
  return t->dtype == MM_FLOAT32 ? ((float *)t->storage->data)[o]
       : t->dtype == MM_FLOAT64 ? ((double *)t->storage->data)[o]
       : (double)((int64_t *)t->storage->data)[o];
}

static void visit_printed(const fmt_state *f, int d, int64_t off, visit_fn fn, void *ctx) {
  const mm_tensor *t = f->t;
  if (d == t->ndim) { fn(ctx, value_at(t, off)); return; }
  int64_t n = t->shape[d];
  for (int64_t i = 0; i < n; i++) {
    if (f->elide && n > 2 * EDGE && i == EDGE) i = n - EDGE;   /* as format_dim skips */
    visit_printed(f, d + 1, off + i * t->stride[d], fn, ctx);
  }
}

typedef struct { double amax, amin; bool ints, any; } range_acc;

static void visit_range(void *ctx, double v) {
  range_acc *r = ctx;
  if (!isfinite(v)) return;
  r->any = true;
  double a = fabs(v);
  if (a > r->amax) r->amax = a;
  if (a > 0 && a < r->amin) r->amin = a;
  if (v != floor(v)) r->ints = false;
}

typedef struct { const fmt_state *probe; int width; } width_acc;

static void visit_width(void *ctx, double v) {
  width_acc *w = ctx;
  sbuf tmp = {0};
  format_value(&tmp, w->probe, v);
  if ((int)tmp.n > w->width) w->width = (int)tmp.n;
  free(tmp.s);
}

/* Chooses one format for all printed values: integers print as "3.",
 * moderate ranges as fixed point with 4 decimals, others in scientific. */
static void choose_format(fmt_state *f) {
  const mm_tensor *t = f->t;
  range_acc r = {0, INFINITY, true, false};
  bool empty = mm_numel(t) == 0;
  if (!empty) visit_printed(f, 0, t->offset, visit_range, &r);
  f->ints = t->dtype != MM_INT64 && r.ints && r.amax < 1e8;
  f->sci = r.any && !f->ints &&
           (r.amax >= 1e8 || (r.amin < 1e-4 && r.amin > 0) || r.amax / r.amin > 1e7);
  f->prec = 4;
  /* width: the widest printed element */
  fmt_state probe = *f;
  probe.width = 0;
  width_acc w = {&probe, 1};
  if (!empty) visit_printed(f, 0, t->offset, visit_width, &w);
  f->width = w.width;
}

char *mm_tensor_format(const mm_tensor *t) {
  sbuf b = {0};
  fmt_state f = {.t = t, .elide = mm_numel(t) > ELIDE_ABOVE};
  choose_format(&f);
  put(&b, "tensor(");
  if (t->ndim == 0) {
    f.width = 0;
    format_value(&b, &f, mm_get_flat(t, 0));
  } else if (mm_numel(t) == 0) {
    put(&b, "[]");
  } else {
    format_dim(&b, &f, 0, t->offset, 7);
  }
  char sh[200];
  put(&b, ", dtype=%s, shape=", mm_dtype_name(t->dtype));
  put(&b, "[");
  for (int i = 0; i < t->ndim; i++) put(&b, i ? ", %lld" : "%lld", (long long)t->shape[i]);
  put(&b, "]");
  (void)sh;
  if (t->grad_fn) put(&b, ", grad_fn=<%s>", mm_grad_fn_name(t));
  else if (t->requires_grad) put(&b, ", requires_grad=true");
  put(&b, ")");
  if (b.oom) {
    free(b.s);
    mm_set_error("out of memory formatting a tensor");
    return NULL;
  }
  return b.s;
}
