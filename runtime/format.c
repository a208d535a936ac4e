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

/* Chooses one format for all printed values: integers print as "3.",
 * moderate ranges as fixed point with 4 decimals, others in scientific. */
static void choose_format(fmt_state *f) {
  const mm_tensor *t = f->t;
  int64_t n = mm_numel(t);
  double amax = 0, amin = INFINITY;
  bool ints = true, any = false;
  for (int64_t i = 0; i < n; i++) {
    if (f->elide && n > 2 * EDGE * 64 && i > EDGE * 64 && i < n - EDGE * 64) continue;
    double v = mm_get_flat(t, i);
    if (!isfinite(v)) continue;
    any = true;
    double a = fabs(v);
    if (a > amax) amax = a;
    if (a > 0 && a < amin) amin = a;
    if (v != floor(v)) ints = false;
  }
  f->ints = t->dtype != MM_INT64 && ints && amax < 1e8;
  f->sci = any && !f->ints && (amax >= 1e8 || (amin < 1e-4 && amin > 0) || amax / amin > 1e7);
  f->prec = 4;
  /* width: the widest printed element */
  fmt_state probe = *f;
  probe.width = 0;
  int w = 1;
  for (int64_t i = 0; i < n; i++) {
    if (f->elide && n > 2 * EDGE * 64 && i > EDGE * 64 && i < n - EDGE * 64) continue;
    sbuf tmp = {0};
    format_value(&tmp, &probe, mm_get_flat(t, i));
    if ((int)tmp.n > w) w = (int)tmp.n;
    free(tmp.s);
  }
  f->width = w;
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
