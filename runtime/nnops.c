/* nnops.c — the fused NN ops declared in nnops.h: softmax and log_softmax,
 * cross_entropy, nll_loss, mse_loss, binary_cross_entropy_with_logits,
 * layer_norm and dropout, each forward next to its backward.
 *
 * Why fused: composed from elementwise ops, log(softmax(x)) overflows or
 * loses all precision for large logits, and a training step would allocate
 * a temporary per op.  Here a row of softmax / cross-entropy is one kernel
 * call: a max sweep and an exp sweep over a row that stays in L1, writing
 * only the output and what backward needs (the output, or one log-sum-exp
 * per row).  Rows are split across threads (mm_rows_run / mm_parallel_for);
 * totals over rows are added in row order on one thread, so no result
 * depends on the thread count. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"
#include "iter.h"
#include "parallel.h"
#include "reduce.h"

typedef float f32;
typedef double f64;

/* Cross-entropy's rows cost an exp per element (and a log per row): weigh
   each element as this many copies, so a training batch of logits
   ([128, 10]) is split across threads instead of running on the calling
   thread while the others wait, forward and backward, every step. */
#define CE_ELEM_WORK 32

static int check_float(mm_tensor *t, const char *name, const char *what) {
  if (mm_dtype_is_float(t->dtype)) return 0;
  mm_set_error("%s: expected float32 or float64 %s, got %s (convert with :float())", name, what,
               mm_dtype_name(t->dtype));
  return -1;
}

/* ---- softmax / log_softmax -------------------------------------------------------- */

/* The maximum of a row, ignoring NaN: a NaN anywhere still reaches the
 * result through exp(NaN - m) in the sum.  Four running maxima on the
 * contiguous path keep the compares independent.  A row of -inf and NaN
 * only is told apart from an all -inf row by row_has_nan (rare path). */
#define ROW_MAX(T)                                                                     \
  static inline T row_max_##T(const T *x, int64_t n, int64_t s) {                      \
    T m0 = -INFINITY, m1 = -INFINITY, m2 = -INFINITY, m3 = -INFINITY;                  \
    int64_t i = 0;                                                                     \
    if (s == 1)                                                                        \
      for (; i + 4 <= n; i += 4) {                                                     \
        m0 = x[i] > m0 ? x[i] : m0;                                                    \
        m1 = x[i + 1] > m1 ? x[i + 1] : m1;                                            \
        m2 = x[i + 2] > m2 ? x[i + 2] : m2;                                            \
        m3 = x[i + 3] > m3 ? x[i + 3] : m3;                                            \
      }                                                                                \
    for (; i < n; i++) m0 = x[i * s] > m0 ? x[i * s] : m0;                             \
    m0 = m1 > m0 ? m1 : m0;                                                            \
    m2 = m3 > m2 ? m3 : m2;                                                            \
    return m2 > m0 ? m2 : m0;                                                          \
  }                                                                                    \
  static bool row_has_nan_##T(const T *x, int64_t n, int64_t s) {                      \
    for (int64_t i = 0; i < n; i++)                                                    \
      if (x[i * s] != x[i * s]) return true;                                           \
    return false;                                                                      \
  }
ROW_MAX(f32)
ROW_MAX(f64)

/* One row: m = max, then exp(x - m) (softmax, normalised in a third sweep
 * over the output) or x - m - log(sum exp(x - m)) (log_softmax).  The exp
 * sums go to two double accumulators (independent chains, fixed order). */
#define SOFTMAX_ROWS(T, EXP)                                                           \
  static void softmax_rows_##T(void *vc, const mm_rows *r, int64_t r0, int64_t r1) {   \
    bool lg = *(const bool *)vc;                                                       \
    int64_t n = r->n, so = r->rstride[0], sx = r->rstride[1];                          \
    char *ptr[MM_ROWS_MAX_OPS];                                                        \
    for (int64_t row = r0; row < r1; row++) {                                          \
      mm_rows_at(r, row, ptr);                                                         \
      T *y = (T *)ptr[0];                                                              \
      const T *x = (const T *)ptr[1];                                                  \
      T m = row_max_##T(x, n, sx);                                                     \
      if (m == -INFINITY) { /* all -inf: see nnops.h */                               \
        T fill = row_has_nan_##T(x, n, sx) ? (T)NAN : lg ? -INFINITY : 0;              \
        for (int64_t i = 0; i < n; i++) y[i * so] = fill;                              \
        continue;                                                                      \
      }                                                                                \
      double s0 = 0, s1 = 0;                                                           \
      int64_t i = 0;                                                                   \
      if (lg) {                                                                        \
        for (; i + 2 <= n; i += 2) {                                                   \
          s0 += EXP(x[i * sx] - m);                                                    \
          s1 += EXP(x[(i + 1) * sx] - m);                                              \
        }                                                                              \
        for (; i < n; i++) s0 += EXP(x[i * sx] - m);                                   \
        T ls = (T)log(s0 + s1);                                                        \
        for (i = 0; i < n; i++) y[i * so] = (x[i * sx] - m) - ls;                      \
      } else {                                                                         \
        for (; i + 2 <= n; i += 2) {                                                   \
          T e0 = EXP(x[i * sx] - m), e1 = EXP(x[(i + 1) * sx] - m);                    \
          y[i * so] = e0;                                                              \
          y[(i + 1) * so] = e1;                                                        \
          s0 += e0;                                                                    \
          s1 += e1;                                                                    \
        }                                                                              \
        for (; i < n; i++) {                                                           \
          T e = EXP(x[i * sx] - m);                                                    \
          y[i * so] = e;                                                               \
          s0 += e;                                                                     \
        }                                                                              \
        T inv = (T)(1.0 / (s0 + s1));                                                  \
        for (i = 0; i < n; i++) y[i * so] *= inv;                                      \
      }                                                                                \
    }                                                                                  \
  }

/* softmax:     dx = y (g - sum(g y))
 * log_softmax: dx = g - exp(y) sum(g), and 0 for an all -inf row. */
#define SOFTMAX_GRAD_ROWS(T, EXP)                                                      \
  static void softmax_grad_rows_##T(void *vc, const mm_rows *r, int64_t r0, int64_t r1) { \
    bool lg = *(const bool *)vc;                                                       \
    int64_t n = r->n, sd = r->rstride[0], sy = r->rstride[1], sg = r->rstride[2];      \
    char *ptr[MM_ROWS_MAX_OPS];                                                        \
    for (int64_t row = r0; row < r1; row++) {                                          \
      mm_rows_at(r, row, ptr);                                                         \
      T *d = (T *)ptr[0];                                                              \
      const T *y = (const T *)ptr[1], *g = (const T *)ptr[2];                          \
      double acc = 0;                                                                  \
      if (lg) {                                                                        \
        bool live = false;                                                             \
        for (int64_t i = 0; i < n; i++) {                                              \
          acc += g[i * sg];                                                            \
          live |= y[i * sy] != -INFINITY;                                              \
        }                                                                              \
        T sum = (T)acc;                                                                \
        for (int64_t i = 0; i < n; i++)                                                \
          d[i * sd] = live ? g[i * sg] - EXP(y[i * sy]) * sum : 0;                     \
      } else {                                                                         \
        for (int64_t i = 0; i < n; i++) acc += (double)g[i * sg] * y[i * sy];          \
        T dot = (T)acc;                                                                \
        for (int64_t i = 0; i < n; i++) d[i * sd] = y[i * sy] * (g[i * sg] - dot);     \
      }                                                                                \
    }                                                                                  \
  }

SOFTMAX_ROWS(f32, expf)
SOFTMAX_ROWS(f64, exp)
SOFTMAX_GRAD_ROWS(f32, expf)
SOFTMAX_GRAD_ROWS(f64, exp)

typedef struct { int dim; bool lg; } softmax_args;

static int softmax_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const softmax_args *a = mm_node_args(n);
  mm_tensor *y = n->saved[0];
  bool lg = a->lg;
  mm_tensor *d = mm_tensor_empty(y->dtype, y->ndim, y->shape);
  if (!d) return -1;
  mm_rows rows;
  mm_tensor *ops[3] = {d, y, g};
  mm_rows_init(&rows, 3, ops, a->dim);
  mm_rows_run(&rows, y->dtype == MM_FLOAT32 ? softmax_grad_rows_f32 : softmax_grad_rows_f64, &lg);
  gin[0] = d;
  return 0;
}

static mm_tensor *softmax_impl(mm_tensor *x, int dim, bool lg) {
  const char *name = lg ? "log_softmax" : "softmax";
  if (check_float(x, name, "input") < 0) return NULL;
  if ((dim = mm_wrap_dim(dim, x->ndim, name)) < 0) return NULL;
  mm_tensor *y = mm_tensor_empty(x->dtype, x->ndim, x->shape);
  if (!y) return NULL;
  mm_rows rows;
  mm_tensor *ops[2] = {y, x};
  mm_rows_init(&rows, 2, ops, dim);
  mm_rows_run(&rows, x->dtype == MM_FLOAT32 ? softmax_rows_f32 : softmax_rows_f64, &lg);
  static const mm_op_def SOFTMAX = {"softmax", "SoftmaxBackward", softmax_backward};
  static const mm_op_def LOG_SOFTMAX = {"log_softmax", "LogSoftmaxBackward", softmax_backward};
  softmax_args a = {dim, lg};
  return mm_record(y, lg ? &LOG_SOFTMAX : &SOFTMAX, 1, &x, 1, &y, &a, sizeof a);
}

mm_tensor *mm_softmax(mm_tensor *x, int dim) { return softmax_impl(x, dim, false); }
mm_tensor *mm_log_softmax(mm_tensor *x, int dim) { return softmax_impl(x, dim, true); }

/* ---- labels ------------------------------------------------------------------------ */

static const mm_loss_opts default_opts = {MM_REDUCTION_MEAN, 0, false, 0};

/* Checks logits [N, C] and labels [N]; counts the rows that are not ignored. */
static int check_labels(const char *name, const char *what, mm_tensor *x, mm_tensor *labels,
                        const mm_loss_opts *o, int64_t base, int64_t *count) {
  char b1[160], b2[160];
  if (check_float(x, name, what) < 0) return -1;
  if (x->ndim != 2) {
    mm_set_error("%s: expected 2-D %s [N, C], got shape %s", name, what,
                 mm_shape_str(x->ndim, x->shape, b1, sizeof b1));
    return -1;
  }
  if (labels->dtype != MM_INT64) {
    mm_set_error("%s: expected int64 labels, got %s (class labels are integers; use :long())",
                 name, mm_dtype_name(labels->dtype));
    return -1;
  }
  if (labels->ndim != 1 || labels->shape[0] != x->shape[0]) {
    mm_set_error("%s: expected labels of shape (%lld) (one per row of %s %s), got shape %s", name,
                 (long long)x->shape[0], what, mm_shape_str(x->ndim, x->shape, b1, sizeof b1),
                 mm_shape_str(labels->ndim, labels->shape, b2, sizeof b2));
    return -1;
  }
  int64_t n = x->shape[0], c = x->shape[1], ls = labels->stride[0], k = 0;
  const int64_t *lab = mm_data_ptr(labels);
  for (int64_t i = 0; i < n; i++) {
    int64_t y = lab[i * ls];
    if (o->has_ignore_index && y == o->ignore_index) continue;
    if (y < base || y >= base + c) {
      mm_set_error("%s: label %lld in row %lld is out of range: expected %lld..%lld for C = %lld "
                   "classes", name, (long long)y, (long long)(i + base), (long long)base,
                   (long long)(base + c - 1), (long long)c);
      return -1;
    }
    k++;
  }
  *count = k;
  return 0;
}

static bool ignored(const mm_loss_opts *o, int64_t y) {
  return o->has_ignore_index && y == o->ignore_index;
}

/* The weight of row i's loss in the result: g (per row or one number),
 * divided by the number of counted rows for a mean. */
typedef struct {
  const char *g;      /* contiguous; per row for NONE, one element otherwise */
  mm_dtype dt;
  mm_reduction red;
  double inv_count;
} row_weight;

static double weight_of(const row_weight *w, int64_t i) {
  int64_t k = w->red == MM_REDUCTION_NONE ? i : 0;
  double g = w->dt == MM_FLOAT32 ? ((const float *)w->g)[k] : ((const double *)w->g)[k];
  return w->red == MM_REDUCTION_MEAN ? g * w->inv_count : g;
}

#define LOSS_STACK_ROWS 512

/* Writes the per-row losses as the result, or adds them up in row order. */
static mm_tensor *finish_rows(const double *loss, int64_t n, mm_dtype dt, mm_reduction red,
                              int64_t count) {
  if (red == MM_REDUCTION_NONE) {
    mm_tensor *out = mm_tensor_empty(dt, 1, &n);
    if (!out) return NULL;
    for (int64_t i = 0; i < n; i++) {
      if (dt == MM_FLOAT32) ((float *)mm_data_ptr(out))[i] = (float)loss[i];
      else ((double *)mm_data_ptr(out))[i] = loss[i];
    }
    return out;
  }
  double total = 0;
  for (int64_t i = 0; i < n; i++) total += loss[i];
  /* mean over zero counted rows is 0/0 = NaN, as in PyTorch */
  if (red == MM_REDUCTION_MEAN) total /= (double)count;
  return mm_tensor_scalar(dt, total);
}

/* ---- cross_entropy ----------------------------------------------------------------------- */

typedef struct {
  const char *x;            /* logits, element strides s0 (rows), s1 (classes) */
  int64_t s0, s1, n, c;
  const int64_t *lab;
  int64_t ls, base;
  const mm_loss_opts *o;
  char *lse;                /* forward: per-row log-sum-exp out; backward: in */
  double *loss;             /* forward: per-row loss out */
  char *gin;                /* backward: contiguous [N, C] out */
  row_weight w;
} ce_ctx;

/* Row i: lse = m + log(sum exp(x - m)); loss = lse - (1-eps) x_y - eps/C sum(x). */
#define CE_ROWS(T, EXP)                                                                \
  static void ce_rows_##T(void *vc, int64_t r0, int64_t r1) {                          \
    const ce_ctx *c = vc;                                                              \
    double eps = c->o->label_smoothing;                                                \
    for (int64_t i = r0; i < r1; i++) {                                                \
      const T *x = (const T *)c->x + i * c->s0;                                        \
      int64_t s = c->s1;                                                               \
      T m = row_max_##T(x, c->c, s);                                                   \
      double se = 0, sx = 0;                                                           \
      for (int64_t j = 0; j < c->c; j++) se += EXP(x[j * s] - m);                      \
      if (eps > 0)                                                                     \
        for (int64_t j = 0; j < c->c; j++) sx += x[j * s];                             \
      double lse = (double)m + log(se);                                                \
      ((T *)c->lse)[i] = (T)lse;                                                       \
      int64_t y = c->lab[i * c->ls];                                                   \
      if (ignored(c->o, y)) { c->loss[i] = 0; continue; }                              \
      double l = lse - (double)x[(y - c->base) * s];                                   \
      if (eps > 0) /* (only then: 0 * -inf logits would be NaN) */                     \
        l = lse - (1 - eps) * (double)x[(y - c->base) * s] - eps / (double)c->c * sx;  \
      c->loss[i] = l;                                                                  \
    }                                                                                  \
  }

/* dx_ij = w_i (softmax_ij - target_ij), target = (1-eps) onehot + eps/C. */
#define CE_GRAD_ROWS(T, EXP)                                                           \
  static void ce_grad_rows_##T(void *vc, int64_t r0, int64_t r1) {                     \
    const ce_ctx *c = vc;                                                              \
    double eps = c->o->label_smoothing;                                                \
    T off = (T)(eps / (double)c->c), on = (T)(1 - eps + eps / (double)c->c);           \
    for (int64_t i = r0; i < r1; i++) {                                                \
      const T *x = (const T *)c->x + i * c->s0;                                        \
      T *d = (T *)c->gin + i * c->c;                                                   \
      int64_t y = c->lab[i * c->ls], s = c->s1;                                        \
      if (ignored(c->o, y)) {                                                          \
        for (int64_t j = 0; j < c->c; j++) d[j] = 0;                                   \
        continue;                                                                      \
      }                                                                                \
      y -= c->base;                                                                    \
      T w = (T)weight_of(&c->w, i), lse = ((const T *)c->lse)[i];                      \
      for (int64_t j = 0; j < c->c; j++)                                               \
        d[j] = w * (EXP(x[j * s] - lse) - (j == y ? on : off));                        \
    }                                                                                  \
  }

CE_ROWS(f32, expf)
CE_ROWS(f64, exp)
CE_GRAD_ROWS(f32, expf)
CE_GRAD_ROWS(f64, exp)

/* Rows on threads when there is enough work; each row is computed the same
 * way wherever it runs. */
static void run_rows(int64_t nrows, int64_t width, mm_parallel_fn fn, void *ctx) {
  if (nrows > 1 && nrows * width >= MM_PARALLEL_MIN_WORK) mm_parallel_for(nrows, fn, ctx);
  else if (nrows > 0) fn(ctx, 0, nrows);
}

/* What the class-index losses' backward needs besides the saved tensors. */
typedef struct {
  mm_loss_opts o;
  int64_t base;     /* label of the first class */
  double count;     /* labels that count (not ignored) */
} class_loss_args;

static int ce_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const class_loss_args *a = mm_node_args(n);
  mm_tensor *x = n->saved[0], *lab = n->saved[1], *lse = n->saved[2];
  mm_loss_opts o = a->o;
  mm_tensor *d = mm_tensor_empty(x->dtype, 2, x->shape), *gc = d ? mm_contiguous(g) : NULL;
  if (!gc) { mm_tensor_release(d); return -1; }
  ce_ctx c = {mm_data_ptr(x), x->stride[0], x->stride[1], x->shape[0], x->shape[1],
              mm_data_ptr(lab), lab->stride[0], a->base, &o, mm_data_ptr(lse), NULL,
              mm_data_ptr(d), {mm_data_ptr(gc), gc->dtype, o.reduction, 1.0 / a->count}};
  run_rows(c.n, c.c * CE_ELEM_WORK, x->dtype == MM_FLOAT32 ? ce_grad_rows_f32 : ce_grad_rows_f64,
           &c);
  mm_tensor_release(gc);
  gin[0] = d;
  return 0;
}

mm_tensor *mm_cross_entropy(mm_tensor *logits, mm_tensor *labels, const mm_loss_opts *opts,
                            int64_t base) {
  const mm_loss_opts *o = opts ? opts : &default_opts;
  int64_t count;
  if (check_labels("cross_entropy", "logits", logits, labels, o, base, &count) < 0) return NULL;
  if (!(o->label_smoothing >= 0 && o->label_smoothing < 1)) {
    mm_set_error("cross_entropy: expected label_smoothing in [0, 1), got %g", o->label_smoothing);
    return NULL;
  }
  int64_t n = logits->shape[0];
  mm_tensor *lse = mm_tensor_empty(logits->dtype, 1, &n);
  /* per-row losses, added up in row order once every row is done; a
   * training batch fits on the stack */
  double small[LOSS_STACK_ROWS];
  double *loss = n <= LOSS_STACK_ROWS ? small : malloc((size_t)n * sizeof *loss);
  mm_tensor *out = NULL;
  if (!lse || !loss) {
    if (!loss) mm_set_error("cross_entropy: out of memory for %lld row losses", (long long)n);
    goto done;
  }
  ce_ctx c = {mm_data_ptr(logits), logits->stride[0], logits->stride[1], n, logits->shape[1],
              mm_data_ptr(labels), labels->stride[0], base, o, mm_data_ptr(lse), loss, NULL,
              {0}};
  run_rows(n, c.c * CE_ELEM_WORK, logits->dtype == MM_FLOAT32 ? ce_rows_f32 : ce_rows_f64, &c);
  if (!(out = finish_rows(loss, n, logits->dtype, o->reduction, count))) goto done;
  static const mm_op_def CE = {"cross_entropy", "CrossEntropyBackward", ce_backward};
  mm_tensor *saved[3] = {logits, labels, lse};
  class_loss_args a = {*o, base, (double)count};
  out = mm_record(out, &CE, 1, &logits, 3, saved, &a, sizeof a);
done:
  mm_tensor_release(lse);
  if (loss != small) free(loss);
  return out;
}

/* ---- nll_loss -------------------------------------------------------------------------- */

static int nll_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const class_loss_args *a = mm_node_args(n);
  mm_tensor *lab = n->saved[0];
  mm_edge *e = &n->edges[0];
  mm_loss_opts o = a->o;
  mm_tensor *d = mm_tensor_zeros(g->dtype, 2, e->shape), *gc = d ? mm_contiguous(g) : NULL;
  if (!gc) { mm_tensor_release(d); return -1; }
  row_weight w = {mm_data_ptr(gc), gc->dtype, o.reduction, 1.0 / a->count};
  const int64_t *l = mm_data_ptr(lab);
  int64_t rows = e->shape[0], cols = e->shape[1], base = a->base;
  for (int64_t i = 0; i < rows; i++) {
    int64_t y = l[i * lab->stride[0]];
    if (ignored(&o, y)) continue;
    double v = -weight_of(&w, i);
    if (d->dtype == MM_FLOAT32) ((float *)mm_data_ptr(d))[i * cols + y - base] = (float)v;
    else ((double *)mm_data_ptr(d))[i * cols + y - base] = v;
  }
  mm_tensor_release(gc);
  gin[0] = d;
  return 0;
}

mm_tensor *mm_nll_loss(mm_tensor *logp, mm_tensor *labels, const mm_loss_opts *opts,
                       int64_t base) {
  const mm_loss_opts *o = opts ? opts : &default_opts;
  int64_t count;
  if (check_labels("nll_loss", "log-probabilities", logp, labels, o, base, &count) < 0)
    return NULL;
  int64_t n = logp->shape[0];
  double small[LOSS_STACK_ROWS];
  double *loss = n <= LOSS_STACK_ROWS ? small : malloc((size_t)n * sizeof *loss);
  if (!loss) {
    mm_set_error("nll_loss: out of memory for %lld row losses", (long long)n);
    return NULL;
  }
  const int64_t *l = mm_data_ptr(labels);
  for (int64_t i = 0; i < n; i++) {
    int64_t y = l[i * labels->stride[0]];
    loss[i] = ignored(o, y) ? 0 : -mm_get_flat(logp, i * logp->shape[1] + y - base);
  }
  mm_tensor *out = finish_rows(loss, n, logp->dtype, o->reduction, count);
  if (loss != small) free(loss);
  static const mm_op_def NLL = {"nll_loss", "NllLossBackward", nll_backward};
  class_loss_args a = {*o, base, (double)count};
  return mm_record(out, &NLL, 1, &logp, 1, &labels, &a, sizeof a);
}

/* ---- elementwise losses ---------------------------------------------------------------- */

/* Broadcast shape of a and b, with the loss's name on the error. */
static int loss_shapes(const char *name, mm_tensor *a, mm_tensor *b, const char *what,
                       int *nd, int64_t *shape) {
  if (check_float(a, name, what) < 0 || check_float(b, name, what) < 0) return -1;
  /* The same shape, not just broadcastable ones: (4, 1) against (4) would
   * broadcast to (4, 4) and give a plausible, wrong loss. */
  if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim)) {
    char b1[160], b2[160];
    mm_set_error("%s: expected the target to have the input's shape %s, got %s (reshape one of "
                 "them; broadcasting here is almost always a bug)", name,
                 mm_shape_str(a->ndim, a->shape, b1, sizeof b1),
                 mm_shape_str(b->ndim, b->shape, b2, sizeof b2));
    return -1;
  }
  *nd = a->ndim;
  memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
  return 0;
}

/* Reduces an elementwise loss (consumed) as asked. */
static mm_tensor *reduce_loss(mm_tensor *l, mm_reduction red) {
  if (!l || red == MM_REDUCTION_NONE) return l;
  mm_tensor *r = red == MM_REDUCTION_MEAN ? mm_mean(l, MM_ALL_DIMS, false)
                                          : mm_sum(l, MM_ALL_DIMS, false);
  mm_tensor_release(l);
  return r;
}

/* The output gradient times 2/numel (mean) or 1: the factor every element
 * of an elementwise loss shares. */
typedef struct { mm_reduction red; double count; } elem_loss_args;

static mm_tensor *loss_scale(mm_node *n, mm_tensor *g, double factor) {
  const elem_loss_args *a = mm_node_args(n);
  double k = a->red == MM_REDUCTION_MEAN ? factor / a->count : factor;
  return mm_binary_scalar(MM_OP_MUL, g, k, false);
}

static int mse_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *gk = loss_scale(n, g, 2.0), *ga = gk ? mm_binary(MM_OP_MUL, n->saved[0], gk) : NULL;
  mm_tensor_release(gk);
  if (!ga) return -1;
  if (n->edges[1].needs_grad && !(gin[1] = mm_unary(MM_OP_NEG, ga))) {
    mm_tensor_release(ga);
    return -1;
  }
  gin[0] = ga;
  return 0;
}

mm_tensor *mm_mse_loss(mm_tensor *a, mm_tensor *b, mm_reduction red) {
  int nd;
  int64_t shape[MM_MAX_DIMS];
  if (loss_shapes("mse_loss", a, b, "tensors", &nd, shape) < 0) return NULL;
  /* raw kernels: these intermediates are not part of the graph */
  mm_tensor *diff = mm_raw_binary(MM_OP_SUB, a, b);
  mm_tensor *out = reduce_loss(diff ? mm_raw_binary(MM_OP_MUL, diff, diff) : NULL, red);
  static const mm_op_def MSE = {"mse_loss", "MseLossBackward", mse_backward};
  mm_tensor *in[2] = {a, b};
  elem_loss_args args = {red, diff ? (double)mm_numel(diff) : 0};
  out = mm_record(out, &MSE, 2, in, 1, &diff, &args, sizeof args);
  mm_tensor_release(diff);
  return out;
}

/* Operands (loss, x, y). */
#define BCE_KERNEL(T, EXP, LOG1P)                                                      \
  static void bce_##T(int64_t n, char **p, const int64_t *s, const void *ctx) {        \
    (void)ctx;                                                                         \
    for (int64_t i = 0; i < n; i++) {                                                  \
      T x = *(const T *)(p[1] + i * s[1]), y = *(const T *)(p[2] + i * s[2]);          \
      *(T *)(p[0] + i * s[0]) = (x > 0 ? x : 0) - x * y + LOG1P(EXP(-fabs(x)));        \
    }                                                                                  \
  }
BCE_KERNEL(f32, expf, log1pf)
BCE_KERNEL(f64, exp, log1p)

/* d/dx = sigmoid(x) - y,  d/dy = -x. */
static int bce_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *x = n->saved[0], *y = n->saved[1];
  mm_tensor *gk = loss_scale(n, g, 1.0), *s = NULL, *d = NULL;
  int rc = -1;
  if (!gk) return -1;
  if (n->edges[0].needs_grad) {
    if (!(s = mm_unary(MM_OP_SIGMOID, x)) || !(d = mm_binary(MM_OP_SUB, s, y))) goto out;
    if (!(gin[0] = mm_binary(MM_OP_MUL, d, gk))) goto out;
  }
  if (n->edges[1].needs_grad) {
    mm_tensor *xg = mm_binary(MM_OP_MUL, x, gk);
    gin[1] = xg ? mm_unary(MM_OP_NEG, xg) : NULL;
    mm_tensor_release(xg);
    if (!gin[1]) goto out;
  }
  rc = 0;
out:
  mm_tensor_release(gk), mm_tensor_release(s), mm_tensor_release(d);
  return rc;
}

mm_tensor *mm_binary_cross_entropy_with_logits(mm_tensor *x, mm_tensor *y, mm_reduction red) {
  const char *name = "binary_cross_entropy_with_logits";
  int nd;
  int64_t shape[MM_MAX_DIMS];
  if (loss_shapes(name, x, y, "logits and targets", &nd, shape) < 0) return NULL;
  mm_dtype dt = x->dtype == MM_FLOAT64 || y->dtype == MM_FLOAT64 ? MM_FLOAT64 : MM_FLOAT32;
  mm_tensor *xc = mm_raw_cast(x, dt), *yc = xc ? mm_raw_cast(y, dt) : NULL;
  mm_tensor *l = yc ? mm_tensor_empty(dt, nd, shape) : NULL, *out = NULL;
  if (l) {
    mm_iter it;
    mm_tensor *ops[3] = {l, xc, yc};
    mm_iter_init(&it, 3, ops, nd, shape);
    mm_iter_run(&it, dt == MM_FLOAT32 ? bce_f32 : bce_f64, NULL);
    out = reduce_loss(l, red);
  }
  static const mm_op_def BCE = {"binary_cross_entropy_with_logits",
                                "BinaryCrossEntropyWithLogitsBackward", bce_backward};
  mm_tensor *in[2] = {x, y}, *saved[2] = {xc, yc};
  int64_t count = 1;
  for (int i = 0; i < nd; i++) count *= shape[i];
  elem_loss_args args = {red, (double)count};
  out = mm_record(out, &BCE, 2, in, 2, saved, &args, sizeof args);
  mm_tensor_release(xc);
  mm_tensor_release(yc);
  return out;
}

/* ---- layer_norm --------------------------------------------------------------------------- */

typedef struct {
  const char *x, *w, *b, *g;  /* x, g: contiguous [R, D]; w, b: [D] or NULL */
  char *y, *mean, *rstd, *dx; /* y / dx: [R, D]; mean, rstd: [R] */
  int64_t d;
  double eps;
} ln_ctx;

/* Row r: mean and biased variance in double, two passes; y = xhat w + b. */
#define LN_ROWS(T)                                                                     \
  static void ln_rows_##T(void *vc, int64_t r0, int64_t r1) {                          \
    const ln_ctx *c = vc;                                                              \
    const T *w = (const T *)c->w, *b = (const T *)c->b;                                \
    for (int64_t r = r0; r < r1; r++) {                                                \
      const T *x = (const T *)c->x + r * c->d;                                         \
      T *y = (T *)c->y + r * c->d;                                                     \
      double s = 0, ss = 0;                                                            \
      for (int64_t j = 0; j < c->d; j++) s += x[j];                                    \
      double mu = s / (double)c->d;                                                    \
      for (int64_t j = 0; j < c->d; j++) ss += (x[j] - mu) * (x[j] - mu);              \
      double rs = 1 / sqrt(ss / (double)c->d + c->eps);                                \
      ((T *)c->mean)[r] = (T)mu;                                                       \
      ((T *)c->rstd)[r] = (T)rs;                                                       \
      for (int64_t j = 0; j < c->d; j++) {                                             \
        T v = (T)((x[j] - mu) * rs);                                                   \
        if (w) v *= w[j];                                                              \
        if (b) v += b[j];                                                              \
        y[j] = v;                                                                      \
      }                                                                                \
    }                                                                                  \
  }

/* dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),  dxhat = g w. */
#define LN_GRAD_ROWS(T)                                                                \
  static void ln_grad_rows_##T(void *vc, int64_t r0, int64_t r1) {                     \
    const ln_ctx *c = vc;                                                              \
    const T *w = (const T *)c->w;                                                      \
    for (int64_t r = r0; r < r1; r++) {                                                \
      const T *x = (const T *)c->x + r * c->d, *g = (const T *)c->g + r * c->d;        \
      T *dx = (T *)c->dx + r * c->d;                                                   \
      double mu = ((const T *)c->mean)[r], rs = ((const T *)c->rstd)[r], a = 0, b = 0; \
      for (int64_t j = 0; j < c->d; j++) {                                             \
        double dh = w ? (double)g[j] * w[j] : g[j], xh = (x[j] - mu) * rs;             \
        a += dh;                                                                       \
        b += dh * xh;                                                                  \
      }                                                                                \
      a /= (double)c->d;                                                               \
      b /= (double)c->d;                                                               \
      for (int64_t j = 0; j < c->d; j++) {                                             \
        double dh = w ? (double)g[j] * w[j] : g[j], xh = (x[j] - mu) * rs;             \
        dx[j] = (T)(rs * (dh - a - xh * b));                                           \
      }                                                                                \
    }                                                                                  \
  }

/* dw_j = sum_r g_rj xhat_rj, db_j = sum_r g_rj: a strip of columns per task,
 * each summed over the rows top to bottom (same order on any thread count). */
#define LN_STRIP 64
typedef struct { ln_ctx c; int64_t rows; char *dw, *db; } ln_wb_ctx;

#define LN_WB(T)                                                                       \
  static void ln_wb_##T(void *vc, int64_t t0, int64_t t1) {                            \
    const ln_wb_ctx *k = vc;                                                           \
    const ln_ctx *c = &k->c;                                                           \
    for (int64_t t = t0; t < t1; t++) {                                                \
      int64_t j0 = t * LN_STRIP, w = c->d - j0 < LN_STRIP ? c->d - j0 : LN_STRIP;      \
      double aw[LN_STRIP] = {0}, ab[LN_STRIP] = {0};                                   \
      for (int64_t r = 0; r < k->rows; r++) {                                          \
        const T *x = (const T *)c->x + r * c->d + j0, *g = (const T *)c->g + r * c->d + j0; \
        double mu = ((const T *)c->mean)[r], rs = ((const T *)c->rstd)[r];            \
        for (int64_t j = 0; j < w; j++) {                                              \
          aw[j] += g[j] * ((x[j] - mu) * rs);                                          \
          ab[j] += g[j];                                                               \
        }                                                                              \
      }                                                                                \
      for (int64_t j = 0; j < w; j++) {                                                \
        if (k->dw) ((T *)k->dw)[j0 + j] = (T)aw[j];                                    \
        if (k->db) ((T *)k->db)[j0 + j] = (T)ab[j];                                    \
      }                                                                                \
    }                                                                                  \
  }

LN_ROWS(f32)
LN_ROWS(f64)
LN_GRAD_ROWS(f32)
LN_GRAD_ROWS(f64)
LN_WB(f32)
LN_WB(f64)

/* saved: x (contiguous), mean, rstd, weight (if any). */
static int ln_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *x = n->saved[0], *mean = n->saved[1], *rstd = n->saved[2];
  mm_tensor *w = n->nsaved > 3 ? n->saved[3] : NULL;
  mm_tensor *gc = mm_contiguous(g);
  if (!gc) return -1;
  int64_t rows = mean->shape[0], d = rows ? mm_numel(x) / rows : 0;
  bool single = x->dtype == MM_FLOAT32;
  ln_ctx c = {mm_data_ptr(x), w ? mm_data_ptr(w) : NULL, NULL, mm_data_ptr(gc), NULL,
              mm_data_ptr(mean), mm_data_ptr(rstd), NULL, d, 0};
  int rc = -1;
  if (n->edges[0].needs_grad) {
    if (!(gin[0] = mm_tensor_empty(x->dtype, x->ndim, x->shape))) goto out;
    c.dx = mm_data_ptr(gin[0]);
    run_rows(rows, d, single ? ln_grad_rows_f32 : ln_grad_rows_f64, &c);
  }
  bool gw = n->ninputs > 1 && n->edges[1].needs_grad, gb = n->ninputs > 2 && n->edges[2].needs_grad;
  if (gw || gb) {
    if (gw && !(gin[1] = mm_tensor_empty(x->dtype, n->edges[1].ndim, n->edges[1].shape)))
      goto out;
    if (gb && !(gin[2] = mm_tensor_empty(x->dtype, n->edges[2].ndim, n->edges[2].shape))) goto out;
    ln_wb_ctx k = {c, rows, gw ? mm_data_ptr(gin[1]) : NULL, gb ? mm_data_ptr(gin[2]) : NULL};
    int64_t strips = (d + LN_STRIP - 1) / LN_STRIP;
    run_rows(strips, rows * LN_STRIP, single ? ln_wb_f32 : ln_wb_f64, &k);
  }
  rc = 0;
out:
  mm_tensor_release(gc);
  return rc;
}

/* A contiguous copy of t (or t itself) cut from the graph. */

static int check_param(mm_tensor *p, const char *what, mm_tensor *x, int nnorm,
                       const int64_t *nshape) {
  char b1[160], b2[160];
  if (!p) return 0;
  if (p->dtype != x->dtype) {
    mm_set_error("layer_norm: expected %s of dtype %s (the input's), got %s", what,
                 mm_dtype_name(x->dtype), mm_dtype_name(p->dtype));
    return -1;
  }
  if (p->ndim != nnorm || memcmp(p->shape, nshape, sizeof(int64_t) * (size_t)nnorm)) {
    mm_set_error("layer_norm: expected %s of shape %s (normalized_shape), got %s", what,
                 mm_shape_str(nnorm, nshape, b1, sizeof b1),
                 mm_shape_str(p->ndim, p->shape, b2, sizeof b2));
    return -1;
  }
  return 0;
}

mm_tensor *mm_layer_norm(mm_tensor *x, int nnorm, const int64_t *nshape, mm_tensor *weight,
                         mm_tensor *bias, double eps) {
  char b1[160], b2[160];
  if (check_float(x, "layer_norm", "input") < 0) return NULL;
  if (nnorm < 1 || nnorm > x->ndim ||
      memcmp(x->shape + x->ndim - nnorm, nshape, sizeof(int64_t) * (size_t)nnorm)) {
    mm_set_error("layer_norm: normalized_shape %s does not match the trailing dimensions of the "
                 "input's shape %s", mm_shape_str(nnorm, nshape, b1, sizeof b1),
                 mm_shape_str(x->ndim, x->shape, b2, sizeof b2));
    return NULL;
  }
  if (check_param(weight, "weight", x, nnorm, nshape) < 0 ||
      check_param(bias, "bias", x, nnorm, nshape) < 0)
    return NULL;
  if (!(eps >= 0)) {
    mm_set_error("layer_norm: expected eps >= 0, got %g", eps);
    return NULL;
  }
  int64_t d = 1;
  for (int i = 0; i < nnorm; i++) d *= nshape[i];
  int64_t rows = d ? mm_numel(x) / d : 0;
  mm_tensor *xc = mm_raw_contiguous(x), *wc = weight ? mm_raw_contiguous(weight) : NULL;
  mm_tensor *bc = bias ? mm_raw_contiguous(bias) : NULL;
  mm_tensor *y = mm_tensor_empty(x->dtype, x->ndim, x->shape);
  mm_tensor *mean = mm_tensor_empty(x->dtype, 1, &rows), *rstd = mm_tensor_empty(x->dtype, 1, &rows);
  mm_tensor *out = NULL;
  if (!xc || (weight && !wc) || (bias && !bc) || !y || !mean || !rstd) goto done;
  ln_ctx c = {mm_data_ptr(xc), wc ? mm_data_ptr(wc) : NULL, bc ? mm_data_ptr(bc) : NULL, NULL,
              mm_data_ptr(y), mm_data_ptr(mean), mm_data_ptr(rstd), NULL, d, eps};
  run_rows(rows, d, x->dtype == MM_FLOAT32 ? ln_rows_f32 : ln_rows_f64, &c);
  out = y;
  y = NULL;
  static const mm_op_def LN = {"layer_norm", "LayerNormBackward", ln_backward};
  mm_tensor *in[3] = {x, weight, bias}, *saved[4] = {xc, mean, rstd, wc};
  out = mm_record(out, &LN, 3, in, 4, saved, NULL, 0);
done:
  mm_tensor_release(xc), mm_tensor_release(wc), mm_tensor_release(bc);
  mm_tensor_release(y), mm_tensor_release(mean), mm_tensor_release(rstd);
  return out;
}

/* ---- dropout ------------------------------------------------------------------------------ */

static int dropout_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  return (gin[0] = mm_binary(MM_OP_MUL, g, n->saved[0])) ? 0 : -1;
}

mm_tensor *mm_dropout(mm_tensor *x, double p, bool training) {
  if (check_float(x, "dropout", "input") < 0) return NULL;
  if (!(p >= 0 && p <= 1)) {
    mm_set_error("dropout: expected p in [0, 1], got %g", p);
    return NULL;
  }
  if (!training || p == 0) {
    mm_tensor_retain(x);
    return x;
  }
  /* The mask holds 0 or 1/(1-p), so forward and backward are one multiply. */
  mm_tensor *mask = mm_tensor_empty(x->dtype, x->ndim, x->shape);
  if (!mask) return NULL;
  int64_t k = mm_numel(x);
  double scale = p < 1 ? 1 / (1 - p) : 0;
  for (int64_t i = 0; i < k; i++) {
    double v = p < 1 && mm_random_uniform() >= p ? scale : 0;
    if (x->dtype == MM_FLOAT32) ((float *)mm_data_ptr(mask))[i] = (float)v;
    else ((double *)mm_data_ptr(mask))[i] = v;
  }
  static const mm_op_def DROPOUT = {"dropout", "DropoutBackward", dropout_backward};
  mm_tensor *out = mm_record(mm_raw_binary(MM_OP_MUL, x, mask), &DROPOUT, 1, &x, 1, &mask, NULL, 0);
  mm_tensor_release(mask);
  return out;
}
