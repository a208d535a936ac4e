/* reduce.c — reductions (sum, mean, var, std, prod, max/min, argmax/argmin,
 * logsumexp, norm) with their backward rules, and the row layout
 * (mm_rows) that these and the fused NN ops iterate with.
 *
 * How a reduction runs: the input is seen as rows along the reduced
 * dimension (mm_rows; a reduction over every element is one row of the
 * flattened, contiguous input).  A row is cut into fixed blocks of RBLOCK
 * elements; each block is reduced in double (int64 exactly) and the block
 * results are combined in block order.  Rows are spread over threads, and a
 * single long row spreads its blocks; either way the arithmetic and its order
 * depend only on the shape, never on the thread count.  Blocks also make
 * float sums pairwise-like: a 10^6-element float32 sum stays accurate.
 *
 * Backward rules live next to their forward and use ordinary ops (grad mode
 * is off during backward); where that would need many temporaries (prod,
 * max/min, logsumexp, norm) a small kernel computes the local derivative. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"
#include "iter.h"
#include "parallel.h"
#include "reduce.h"

/* ---- block kernels ----------------------------------------------------------- */

/* The elementary reductions a block can do.  c is a per-row constant: the
 * centre for R_SUMSQ and R_SUMEXP, the exponent for R_SUMPOW. */
typedef enum { R_SUM, R_SUMSQ, R_SUMEXP, R_SUMABS, R_SUMPOW, R_PROD, R_MAX, R_MIN, R_MAXABS } rop;

/* A partial result: v for floats, iv for int64, i the position of max/min. */
typedef struct { double v; int64_t iv; int64_t i; } racc;

#define RBLOCK 8192

/* sum of EXPR(x) over a block.  Four accumulators on the contiguous path let
 * the additions overlap; their order is still fixed. */
#define DEF_SUM(NAME, T, EXPR)                                                        \
  static double NAME(const T *p, int64_t n, int64_t s, double c) {                   \
    (void)c;                                                                          \
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, x;                                         \
    int64_t i = 0;                                                                    \
    if (s == 1) {                                                                     \
      for (; i + 4 <= n; i += 4) {                                                    \
        x = p[i], a0 += (EXPR);                                                       \
        x = p[i + 1], a1 += (EXPR);                                                   \
        x = p[i + 2], a2 += (EXPR);                                                   \
        x = p[i + 3], a3 += (EXPR);                                                   \
      }                                                                               \
      for (; i < n; i++) x = p[i], a0 += (EXPR);                                      \
    } else {                                                                          \
      for (; i < n; i++) x = p[i * s], a0 += (EXPR);                                  \
    }                                                                                 \
    return (a0 + a1) + (a2 + a3);                                                     \
  }

/* Position of the first maximum (CMP >) or minimum (CMP <); the first NaN
 * wins outright, so NaN propagates as in PyTorch. */
#define DEF_ARG(NAME, T, CMP)                                                         \
  static racc NAME(const T *p, int64_t n, int64_t s) {                               \
    racc r = {0, 0, 0};                                                               \
    T best = p[0];                                                                    \
    if (best == best)                                                                 \
      for (int64_t i = 1; i < n; i++) {                                               \
        T x = p[i * s];                                                               \
        if (x != x || x CMP best) {                                                   \
          best = x;                                                                   \
          r.i = i;                                                                    \
          if (x != x) break;                                                          \
        }                                                                             \
      }                                                                               \
    r.v = (double)best;                                                               \
    return r;                                                                         \
  }

#define DEF_FLOAT_BLOCKS(T)                                                           \
  DEF_SUM(sum_##T, T, x)                                                              \
  DEF_SUM(sumsq_##T, T, (x - c) * (x - c))                                            \
  DEF_SUM(sumexp_##T, T, exp(x - c))                                                  \
  DEF_SUM(sumabs_##T, T, fabs(x))                                                     \
  DEF_SUM(sumpow_##T, T, pow(fabs(x), c))                                             \
  DEF_ARG(argmax_##T, T, >)                                                           \
  DEF_ARG(argmin_##T, T, <)                                                           \
  static racc block_##T(rop op, const T *p, int64_t n, int64_t s, double c) {         \
    racc r = {0, 0, 0};                                                               \
    switch (op) {                                                                     \
    case R_SUM: r.v = sum_##T(p, n, s, c); break;                                     \
    case R_SUMSQ: r.v = sumsq_##T(p, n, s, c); break;                                 \
    case R_SUMEXP: r.v = sumexp_##T(p, n, s, c); break;                               \
    case R_SUMABS: r.v = sumabs_##T(p, n, s, c); break;                               \
    case R_SUMPOW: r.v = sumpow_##T(p, n, s, c); break;                               \
    case R_PROD:                                                                      \
      r.v = 1;                                                                        \
      for (int64_t i = 0; i < n; i++) r.v *= p[i * s];                                \
      break;                                                                          \
    case R_MAX: r = argmax_##T(p, n, s); break;                                       \
    case R_MIN: r = argmin_##T(p, n, s); break;                                       \
    case R_MAXABS:                                                                    \
      for (int64_t i = 0; i < n; i++) {                                               \
        double a = fabs((double)p[i * s]);                                            \
        if (a != a) { r.v = a; break; }                                               \
        if (a > r.v) r.v = a;                                                         \
      }                                                                               \
      break;                                                                          \
    }                                                                                 \
    return r;                                                                         \
  }

typedef float f32;
typedef double f64;
DEF_FLOAT_BLOCKS(f32)
DEF_FLOAT_BLOCKS(f64)

/* int64: exact; overflow wraps (done in unsigned arithmetic, which is defined). */
static racc block_i64(rop op, const int64_t *p, int64_t n, int64_t s) {
  racc r = {0, 0, 0};
  uint64_t acc = op == R_PROD ? 1 : 0;
  switch (op) {
  case R_SUM:
    for (int64_t i = 0; i < n; i++) acc += (uint64_t)p[i * s];
    r.iv = (int64_t)acc;
    break;
  case R_PROD:
    for (int64_t i = 0; i < n; i++) acc *= (uint64_t)p[i * s];
    r.iv = (int64_t)acc;
    break;
  case R_MAX:
  case R_MIN:
    r.iv = p[0];
    for (int64_t i = 1; i < n; i++) {
      int64_t x = p[i * s];
      if (op == R_MAX ? x > r.iv : x < r.iv) { r.iv = x; r.i = i; }
    }
    break;
  default: break;   /* the float-only ops are refused before we get here */
  }
  r.v = (double)r.iv;
  return r;
}

static racc block(rop op, mm_dtype dt, const char *p, int64_t n, int64_t s, double c) {
  switch (dt) {
  case MM_FLOAT32: return block_f32(op, (const float *)p, n, s, c);
  case MM_FLOAT64: return block_f64(op, (const double *)p, n, s, c);
  default: return block_i64(op, (const int64_t *)p, n, s);
  }
}

/* a then b (a covers earlier positions, so ties keep a). */
static racc combine(rop op, mm_dtype dt, racc a, racc b) {
  bool is_int = dt == MM_INT64;
  switch (op) {
  case R_PROD:
    a.v *= b.v;
    a.iv = (int64_t)((uint64_t)a.iv * (uint64_t)b.iv);
    return a;
  case R_MAX:
  case R_MIN:
  case R_MAXABS:
    if (is_int) {
      bool better = op == R_MAX ? b.iv > a.iv : b.iv < a.iv;
      return better ? b : a;
    }
    if (a.v != a.v) return a;
    if (b.v != b.v) return b;
    return (op == R_MIN ? b.v < a.v : b.v > a.v) ? b : a;
  default:
    a.v += b.v;
    a.iv = (int64_t)((uint64_t)a.iv + (uint64_t)b.iv);
    return a;
  }
}

typedef struct {
  rop op; mm_dtype dt; const char *p; int64_t n, s; double c; racc *part;
} blocks_job;

/* Block b of the row, with positions counted from the row's start. */
static racc block_at(const blocks_job *j, int64_t b) {
  size_t es = mm_dtype_size(j->dt);
  int64_t first = b * RBLOCK, len = j->n - first < RBLOCK ? j->n - first : RBLOCK;
  racc r = block(j->op, j->dt, j->p + (ptrdiff_t)(first * j->s) * (ptrdiff_t)es, len, j->s, j->c);
  r.i += first;
  return r;
}

static void blocks_task(void *vj, int64_t b0, int64_t b1) {
  const blocks_job *j = vj;
  for (int64_t b = b0; b < b1; b++) j->part[b] = block_at(j, b);
}

/* One row, block by block.  `par`: this is the only row, so its blocks may
 * run on several threads (each block's result is the same either way). */
static racc row_reduce(rop op, mm_dtype dt, const char *p, int64_t n, int64_t s, double c,
                       bool par) {
  if (n <= RBLOCK) return block(op, dt, p, n, s, c);
  int64_t nb = (n + RBLOCK - 1) / RBLOCK;
  blocks_job j = {op, dt, p, n, s, c, NULL};
  /* Without the scratch array (no threads, or no memory) the same blocks
   * run in the same order on this thread. */
  if (par && n >= MM_PARALLEL_MIN_WORK && mm_get_num_threads() > 1 &&
      (j.part = malloc((size_t)nb * sizeof *j.part)))
    mm_parallel_for(nb, blocks_task, &j);
  racc acc = {0, 0, 0};
  for (int64_t b = 0; b < nb; b++) {
    racc one = j.part ? j.part[b] : block_at(&j, b);
    acc = b ? combine(op, dt, acc, one) : one;
  }
  free(j.part);
  return acc;
}

/* ---- composite reductions over one row ------------------------------------------ */

typedef enum { K_SUM, K_MEAN, K_VAR, K_STD, K_PROD, K_MAX, K_MIN, K_LSE, K_NORM } rkind;

typedef struct {
  rkind kind;
  mm_dtype dt;
  double p;      /* ddof for var/std, the exponent for norm */
} rspec;

static racc row_value(const rspec *sp, const char *p, int64_t n, int64_t s, bool par) {
  mm_dtype dt = sp->dt;
  racc r = {0, 0, 0};
  switch (sp->kind) {
  case K_SUM: return row_reduce(R_SUM, dt, p, n, s, 0, par);
  case K_PROD: return row_reduce(R_PROD, dt, p, n, s, 0, par);
  case K_MAX: return row_reduce(R_MAX, dt, p, n, s, 0, par);
  case K_MIN: return row_reduce(R_MIN, dt, p, n, s, 0, par);
  case K_MEAN:
    r.v = row_reduce(R_SUM, dt, p, n, s, 0, par).v / (double)n;
    return r;
  case K_VAR:
  case K_STD: {
    /* Two passes (mean, then squared deviations): no cancellation. */
    if (n == 0) { r.v = NAN; return r; }
    double m = row_reduce(R_SUM, dt, p, n, s, 0, par).v / (double)n;
    double ss = row_reduce(R_SUMSQ, dt, p, n, s, m, par).v;
    r.v = ss / ((double)n - sp->p);
    if (sp->kind == K_STD) r.v = sqrt(r.v);
    return r;
  }
  case K_LSE: {
    if (n == 0) { r.v = -INFINITY; return r; }
    double m = row_reduce(R_MAX, dt, p, n, s, 0, par).v;
    if (m != m || isinf(m)) { r.v = m; return r; }   /* NaN, all -inf, or +inf */
    r.v = m + log(row_reduce(R_SUMEXP, dt, p, n, s, m, par).v);
    return r;
  }
  case K_NORM: {
    double q = sp->p;
    if (q == 2) r.v = sqrt(row_reduce(R_SUMSQ, dt, p, n, s, 0, par).v);
    else if (q == 1) r.v = row_reduce(R_SUMABS, dt, p, n, s, 0, par).v;
    else if (isinf(q)) r.v = row_reduce(R_MAXABS, dt, p, n, s, 0, par).v;
    else r.v = pow(row_reduce(R_SUMPOW, dt, p, n, s, q, par).v, 1 / q);
    return r;
  }
  }
  return r;
}

typedef struct {
  rspec sp;
  char *out;        /* values, contiguous in row order (NULL: not wanted) */
  int64_t *idx;     /* positions (0-based), or NULL */
} fw_ctx;

static void fw_rows(void *vc, const mm_rows *r, int64_t r0, int64_t r1) {
  const fw_ctx *c = vc;
  char *ptr[MM_ROWS_MAX_OPS];
  bool par = r->nrows == 1;
  for (int64_t row = r0; row < r1; row++) {
    mm_rows_at(r, row, ptr);
    racc a = row_value(&c->sp, ptr[0], r->n, r->rstride[0], par);
    if (c->out) {
      switch (c->sp.dt) {
      case MM_FLOAT32: ((float *)c->out)[row] = (float)a.v; break;
      case MM_FLOAT64: ((double *)c->out)[row] = a.v; break;
      case MM_INT64: ((int64_t *)c->out)[row] = a.iv; break;
      }
    }
    if (c->idx) c->idx[row] = a.i;
  }
}

/* Column sums of a contiguous [outer, n, inner] block (reducing the middle
 * dimension): rows of the input are read in memory order and added into a
 * strip of accumulators, instead of walking each column with stride inner.
 * Each output sums its column top to bottom, whatever the thread split. */
#define COL_STRIP 256

typedef struct {
  mm_dtype dt; const char *x; char *out; int64_t outer, n, inner, nstrips; double scale;
} col_job;

static void col_task(void *vj, int64_t t0, int64_t t1) {
  const col_job *j = vj;
  for (int64_t t = t0; t < t1; t++) {
    int64_t o = t / j->nstrips, c0 = (t % j->nstrips) * COL_STRIP;
    int64_t w = j->inner - c0 < COL_STRIP ? j->inner - c0 : COL_STRIP;
    int64_t first = o * j->n * j->inner + c0, ofs = o * j->inner + c0;
    if (j->dt == MM_INT64) {
      uint64_t acc[COL_STRIP] = {0};
      const int64_t *x = (const int64_t *)j->x + first;
      for (int64_t r = 0; r < j->n; r++, x += j->inner)
        for (int64_t k = 0; k < w; k++) acc[k] += (uint64_t)x[k];
      for (int64_t k = 0; k < w; k++) ((int64_t *)j->out)[ofs + k] = (int64_t)acc[k];
      continue;
    }
    double acc[COL_STRIP] = {0};
    if (j->dt == MM_FLOAT32) {
      const float *x = (const float *)j->x + first;
      for (int64_t r = 0; r < j->n; r++, x += j->inner)
        for (int64_t k = 0; k < w; k++) acc[k] += x[k];
      for (int64_t k = 0; k < w; k++) ((float *)j->out)[ofs + k] = (float)(acc[k] * j->scale);
    } else {
      const double *x = (const double *)j->x + first;
      for (int64_t r = 0; r < j->n; r++, x += j->inner)
        for (int64_t k = 0; k < w; k++) acc[k] += x[k];
      for (int64_t k = 0; k < w; k++) ((double *)j->out)[ofs + k] = acc[k] * j->scale;
    }
  }
}

/* ---- the forward driver --------------------------------------------------------- */

/* A contiguous 1-D view of all of t's elements (copying only if t is not
 * contiguous).  Never recorded: reductions record themselves. */
static mm_tensor *flat_view(mm_tensor *t) {
  int64_t n = mm_numel(t), one = 1;
  if (mm_is_contiguous(t)) return mm_tensor_view_of(t, 1, &n, &one, t->offset);
  mm_tensor *d = mm_detach(t);
  mm_tensor *c = d ? mm_contiguous(d) : NULL;
  mm_tensor_release(d);
  if (!c) return NULL;
  mm_tensor *v = mm_tensor_view_of(c, 1, &n, &one, c->offset);
  mm_tensor_release(c);
  return v;
}

/* Resolves dim against t (a scalar reduces as a whole); MM_ALL_DIMS passes. */
static int resolve_dim(mm_tensor *t, int dim, const char *name) {
  if (dim == MM_ALL_DIMS) return dim;
  if ((dim = mm_wrap_dim(dim, t->ndim, name)) < 0) return -2;
  return t->ndim == 0 ? MM_ALL_DIMS : dim;
}

static void out_shape(const mm_tensor *t, int dim, bool keepdim, int *nd, int64_t *shape) {
  *nd = 0;
  for (int d = 0; d < t->ndim; d++) {
    if (dim == MM_ALL_DIMS || d == dim) {
      if (keepdim) shape[(*nd)++] = 1;
    } else {
      shape[(*nd)++] = t->shape[d];
    }
  }
}

static int check_float(mm_tensor *t, const char *name) {
  if (mm_dtype_is_float(t->dtype)) return 0;
  mm_set_error("%s: expected a float32 or float64 tensor, got %s (convert with :float())", name,
               mm_dtype_name(t->dtype));
  return -1;
}

/* Runs a reduction of t over *dim (resolved in place).  Returns the values
 * (or NULL with want_values false), and the 0-based positions in *idx when
 * idx is not NULL. */
static mm_tensor *reduce_run(const char *name, mm_tensor *t, int *dim, bool keepdim, rspec sp,
                             bool want_values, mm_tensor **idx, bool *failed) {
  char b1[160];
  *failed = true;
  if (idx) *idx = NULL;
  if ((*dim = resolve_dim(t, *dim, name)) == -2) return NULL;
  int d = *dim;
  int64_t n = d == MM_ALL_DIMS ? mm_numel(t) : t->shape[d];
  if (n == 0 && (sp.kind == K_MAX || sp.kind == K_MIN)) {
    if (d == MM_ALL_DIMS)
      mm_set_error("%s: expected a non-empty tensor, got shape %s (an empty tensor has no %s)",
                   name, mm_shape_str(t->ndim, t->shape, b1, sizeof b1),
                   sp.kind == K_MAX ? "maximum" : "minimum");
    else
      mm_set_error("%s: expected a non-empty dimension %d, got size 0 (input shape %s)", name,
                   d + 1, mm_shape_str(t->ndim, t->shape, b1, sizeof b1));
    return NULL;
  }
  int ond;
  int64_t oshape[MM_MAX_DIMS];
  out_shape(t, d, keepdim, &ond, oshape);
  mm_dtype vdt = sp.dt;
  mm_tensor *vals = want_values ? mm_tensor_empty(vdt, ond, oshape) : NULL;
  mm_tensor *ix = idx ? mm_tensor_empty(MM_INT64, ond, oshape) : NULL;
  mm_tensor *src = d == MM_ALL_DIMS ? flat_view(t) : (mm_tensor_retain(t), t);
  if ((want_values && !vals) || (idx && !ix) || !src) goto fail;

  bool col = (sp.kind == K_SUM || sp.kind == K_MEAN) && d != MM_ALL_DIMS && d < t->ndim - 1 &&
             mm_is_contiguous(t) && !idx;
  int64_t inner = 1, outer = 1;
  if (col) {
    for (int k = d + 1; k < t->ndim; k++) inner *= t->shape[k];
    for (int k = 0; k < d; k++) outer *= t->shape[k];
    col = inner > 1 && n > 1;
  }
  if (col) {
    col_job j = {sp.dt, mm_data_ptr(t), mm_data_ptr(vals), outer, n, inner,
                 (inner + COL_STRIP - 1) / COL_STRIP, sp.kind == K_MEAN ? 1.0 / (double)n : 1.0};
    int64_t ntasks = outer * j.nstrips;
    if (ntasks > 1 && outer * n * inner >= MM_PARALLEL_MIN_WORK) mm_parallel_for(ntasks, col_task, &j);
    else col_task(&j, 0, ntasks);
  } else {
    mm_rows rows;
    mm_rows_init(&rows, 1, &src, d == MM_ALL_DIMS ? 0 : d);
    fw_ctx c = {sp, vals ? mm_data_ptr(vals) : NULL, ix ? mm_data_ptr(ix) : NULL};
    mm_rows_run(&rows, fw_rows, &c);
  }
  mm_tensor_release(src);
  if (idx) *idx = ix;
  *failed = false;
  return vals;
fail:
  mm_tensor_release(vals);
  mm_tensor_release(ix);
  mm_tensor_release(src);
  return NULL;
}

/* Every reduction's node carries the same arguments. */
typedef struct {
  int dim;          /* -1: over all elements */
  bool keepdim;
  double count;     /* number of reduced elements */
  double farg;      /* var/std: the correction; norm: p */
  int64_t flat;     /* max/min over all elements: the flat position that won */
} reduce_args;

/* Records a one-input reduction with up to two saved tensors. */
static mm_tensor *record(mm_tensor *out, mm_tensor *t, const char *name, mm_backward_fn fn,
                         int dim, bool keepdim, double farg, mm_tensor *s0, mm_tensor *s1,
                         int64_t flat) {
  if (!out || !mm_dtype_is_float(t->dtype)) return out;
  reduce_args a = {dim == MM_ALL_DIMS ? -1 : dim, keepdim,
                   (double)(dim == MM_ALL_DIMS ? mm_numel(t) : t->shape[dim]), farg, flat};
  mm_tensor *saved[2] = {s0, s1};
  mm_op_def def = {name, name, fn};
  return mm_record(out, &def, 1, &t, 2, saved, &a, sizeof a);
}

static const reduce_args *rargs(const mm_node *n) { return mm_node_args(n); }

static int node_dim(const mm_node *n) { return rargs(n)->dim < 0 ? MM_ALL_DIMS : rargs(n)->dim; }

/* A tensor of the reduced shape viewed with the reduced dim back as size 1,
 * so that it broadcasts against the input. */
static mm_tensor *keep_shape(const mm_node *n, mm_tensor *t) {
  if (rargs(n)->dim >= 0 && !rargs(n)->keepdim) return mm_unsqueeze(t, rargs(n)->dim);
  mm_tensor_retain(t);   /* over all dims: 0-dim or all ones, both broadcast */
  return t;
}

/* The output gradient spread over the input's shape (a stride-0 view). */
static mm_tensor *expand_to_input(const mm_node *n, mm_tensor *g) {
  mm_tensor *k = keep_shape(n, g);
  if (!k) return NULL;
  mm_tensor *e = mm_expand(k, n->edges[0].ndim, n->edges[0].shape);
  mm_tensor_release(k);
  return e;
}

/* ---- sum / mean ---------------------------------------------------------------- */

static int sum_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  return (gin[0] = expand_to_input(n, g)) ? 0 : -1;
}

mm_tensor *mm_sum(mm_tensor *t, int dim, bool keepdim) {
  rspec sp = {K_SUM, t->dtype, 0};
  bool failed;
  mm_tensor *out = reduce_run("sum", t, &dim, keepdim, sp, true, NULL, &failed);
  return record(out, t, "SumBackward", sum_backward, dim, keepdim, 0, NULL, NULL, 0);
}

static int mean_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *e = expand_to_input(n, g);
  if (!e) return -1;
  gin[0] = mm_binary_scalar(MM_OP_MUL, e, 1.0 / rargs(n)->count, false);
  mm_tensor_release(e);
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_mean(mm_tensor *t, int dim, bool keepdim) {
  if (check_float(t, "mean") < 0) return NULL;
  rspec sp = {K_MEAN, t->dtype, 0};
  bool failed;
  mm_tensor *out = reduce_run("mean", t, &dim, keepdim, sp, true, NULL, &failed);
  return record(out, t, "MeanBackward", mean_backward, dim, keepdim, 0, NULL, NULL, 0);
}

/* ---- var / std -------------------------------------------------------------------- */

/* d var / dx = 2 (x - mean) / (n - ddof);  d std / dx = (x - mean) / ((n - ddof) std). */
static int var_std_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  bool is_std = n->saved[1] != NULL;   /* std saves its output too */
  double den = rargs(n)->count - rargs(n)->farg;
  mm_tensor *x = n->saved[0], *mk = NULL, *diff = NULL, *gk = NULL, *ok = NULL, *s = NULL,
            *q = NULL;
  int rc = -1;
  if (!(mk = mm_mean(x, node_dim(n), true))) goto out;
  if (!(diff = mm_binary(MM_OP_SUB, x, mk))) goto out;
  if (!(gk = keep_shape(n, g))) goto out;
  if (is_std) {
    if (!(ok = keep_shape(n, n->saved[1]))) goto out;
    if (!(s = mm_binary_scalar(MM_OP_MUL, ok, den, false))) goto out;
    if (!(q = mm_binary(MM_OP_DIV, gk, s))) goto out;
  } else if (!(q = mm_binary_scalar(MM_OP_MUL, gk, 2.0 / den, false))) {
    goto out;
  }
  if (!(gin[0] = mm_binary(MM_OP_MUL, diff, q))) goto out;
  if (is_std) {   /* a constant slice: std 0, and its gradient 0 (not 0/0), as PyTorch */
    mm_tensor *nz = mm_binary_scalar(MM_OP_NE, ok, 0.0, false);
    mm_tensor *m = nz ? mm_where(nz, gin[0], NULL) : NULL;
    mm_tensor_release(nz);
    mm_tensor_release(gin[0]);
    if (!(gin[0] = m)) goto out;
  }
  rc = 0;
out:
  mm_tensor_release(mk), mm_tensor_release(diff), mm_tensor_release(gk);
  mm_tensor_release(ok), mm_tensor_release(s), mm_tensor_release(q);
  return rc;
}

static mm_tensor *var_std(mm_tensor *t, int dim, bool unbiased, bool keepdim, bool is_std) {
  const char *name = is_std ? "std" : "var";
  if (check_float(t, name) < 0) return NULL;
  rspec sp = {is_std ? K_STD : K_VAR, t->dtype, unbiased ? 1 : 0};
  bool failed;
  mm_tensor *out = reduce_run(name, t, &dim, keepdim, sp, true, NULL, &failed);
  return record(out, t, is_std ? "StdBackward" : "VarBackward", var_std_backward, dim, keepdim,
                sp.p, t, is_std ? out : NULL, 0);
}

mm_tensor *mm_var(mm_tensor *t, int dim, bool unbiased, bool keepdim) {
  return var_std(t, dim, unbiased, keepdim, false);
}
mm_tensor *mm_std(mm_tensor *t, int dim, bool unbiased, bool keepdim) {
  return var_std(t, dim, unbiased, keepdim, true);
}

/* ---- prod ------------------------------------------------------------------------- */

/* d prod / dx_i = product of the others, computed without dividing by a
 * zero: with no zero in the row it is prod / x_i; with exactly one zero only
 * that position gets the product of the non-zeros; with two or more, all 0. */
#define PROD_GRAD(T)                                                                  \
  static void prod_grad_##T(void *vc, const mm_rows *r, int64_t r0, int64_t r1) {     \
    (void)vc;                                                                         \
    char *ptr[MM_ROWS_MAX_OPS];                                                       \
    for (int64_t row = r0; row < r1; row++) {                                         \
      mm_rows_at(r, row, ptr);                                                        \
      T *d = (T *)ptr[0];                                                             \
      const T *x = (const T *)ptr[1];                                                 \
      int64_t sd = r->rstride[0], sx = r->rstride[1], zeros = 0;                      \
      double nz = 1;                                                                  \
      for (int64_t i = 0; i < r->n; i++) {                                            \
        T v = x[i * sx];                                                              \
        if (v == 0) zeros++;                                                          \
        else nz *= v;                                                                 \
      }                                                                               \
      for (int64_t i = 0; i < r->n; i++) {                                            \
        T v = x[i * sx];                                                              \
        d[i * sd] = (T)(zeros == 0 ? nz / v : zeros == 1 && v == 0 ? nz : 0);         \
      }                                                                               \
    }                                                                                 \
  }
PROD_GRAD(f32)
PROD_GRAD(f64)

static int prod_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *x = n->saved[0];
  int dim = node_dim(n);
  mm_tensor *d = mm_tensor_empty(x->dtype, x->ndim, x->shape), *gk = NULL;
  mm_tensor *src = d ? (dim == MM_ALL_DIMS ? flat_view(x) : (mm_tensor_retain(x), x)) : NULL;
  mm_tensor *dv = NULL;
  int rc = -1;
  if (!src) goto out;
  if (dim == MM_ALL_DIMS) {   /* d is contiguous: view it flat as well */
    int64_t nel = mm_numel(d), one = 1;
    if (!(dv = mm_tensor_view_of(d, 1, &nel, &one, d->offset))) goto out;
  } else {
    mm_tensor_retain(d);
    dv = d;
  }
  mm_rows rows;
  mm_tensor *ops[2] = {dv, src};
  mm_rows_init(&rows, 2, ops, dim == MM_ALL_DIMS ? 0 : dim);
  mm_rows_run(&rows, x->dtype == MM_FLOAT32 ? prod_grad_f32 : prod_grad_f64, NULL);
  if (!(gk = keep_shape(n, g))) goto out;
  if ((gin[0] = mm_binary(MM_OP_MUL, d, gk))) rc = 0;
out:
  mm_tensor_release(d), mm_tensor_release(src), mm_tensor_release(dv), mm_tensor_release(gk);
  return rc;
}

mm_tensor *mm_prod(mm_tensor *t, int dim, bool keepdim) {
  rspec sp = {K_PROD, t->dtype, 0};
  bool failed;
  mm_tensor *out = reduce_run("prod", t, &dim, keepdim, sp, true, NULL, &failed);
  return record(out, t, "ProdBackward", prod_backward, dim, keepdim, 0, t, NULL, 0);
}

/* ---- max / min / argmax / argmin ------------------------------------------------------- */

/* The gradient goes to the selected position of each row; over all dims
 * the flat position is in the arguments. */
static int select_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_edge *e = &n->edges[0];
  mm_tensor *z = mm_tensor_zeros(g->dtype, e->ndim, e->shape);
  if (!z) return -1;
  if (rargs(n)->dim < 0) {
    /* over all elements, ties share the gradient evenly (PyTorch 1.13's
     * max()/min()); a NaN result gives it all to the position that won */
    mm_tensor *x = n->saved[0], *v = n->saved[1];
    mm_tensor *eq = mm_binary(MM_OP_EQ, x, v);
    double ties = 0;
    for (int64_t i = 0, k = eq ? mm_numel(eq) : 0; i < k; i++) ties += mm_get_flat(eq, i);
    if (!eq || ties == 0) {
      mm_tensor_release(eq);
      mm_set_flat(z, rargs(n)->flat, mm_get_flat(g, 0));
      gin[0] = z;
      return 0;
    }
    mm_tensor_release(z);
    mm_tensor *share = mm_binary_scalar(MM_OP_MUL, g, 1.0 / ties, false);
    gin[0] = share ? mm_binary(MM_OP_MUL, eq, share) : NULL;
    mm_tensor_release(share), mm_tensor_release(eq);
    return gin[0] ? 0 : -1;
  }
  mm_tensor *gc = mm_contiguous(g);
  if (!gc) { mm_tensor_release(z); return -1; }
  mm_rows rows;
  mm_rows_init(&rows, 1, &z, rargs(n)->dim);
  const int64_t *idx = mm_data_ptr(n->saved[0]);
  char *ptr[1];
  for (int64_t row = 0; row < rows.nrows; row++) {
    mm_rows_at(&rows, row, ptr);
    int64_t k = idx[row] * rows.rstride[0];
    if (g->dtype == MM_FLOAT32) ((float *)ptr[0])[k] = ((const float *)mm_data_ptr(gc))[row];
    else ((double *)ptr[0])[k] = ((const double *)mm_data_ptr(gc))[row];
  }
  mm_tensor_release(gc);
  gin[0] = z;
  return 0;
}

/* Shared by max and min: values, optional indices from base, and a node. */
static mm_tensor *maxmin(mm_tensor *t, int dim, bool keepdim, int64_t base, mm_tensor **indices,
                         bool is_max) {
  const char *name = is_max ? "max" : "min";
  if (indices) *indices = NULL;
  rspec sp = {is_max ? K_MAX : K_MIN, t->dtype, 0};
  bool failed;
  mm_tensor *idx = NULL;
  mm_tensor *out = reduce_run(name, t, &dim, keepdim, sp, true, &idx, &failed);
  if (!out) return NULL;
  mm_tensor *shown = NULL;
  if (indices) {
    if (base == 0) {
      mm_tensor_retain(idx);
      shown = idx;
    } else if ((shown = mm_tensor_empty(MM_INT64, idx->ndim, idx->shape))) {
      const int64_t *src = mm_data_ptr(idx);
      int64_t *dst = mm_data_ptr(shown), k = mm_numel(idx);
      for (int64_t i = 0; i < k; i++) dst[i] = src[i] + base;
    } else {
      goto fail;
    }
  }
  if (mm_dtype_is_float(t->dtype) && mm_needs_grad(1, &t)) {
    bool all = dim == MM_ALL_DIMS;
    out = record(out, t, is_max ? "MaxBackward" : "MinBackward", select_backward, dim, keepdim,
                 0, all ? t : idx, all ? out : NULL,
                 all ? ((const int64_t *)mm_data_ptr(idx))[0] : 0);
    if (!out) goto fail;
  }
  mm_tensor_release(idx);
  if (indices) *indices = shown;
  return out;
fail:
  mm_tensor_release(out);
  mm_tensor_release(idx);
  mm_tensor_release(shown);
  return NULL;
}

mm_tensor *mm_max(mm_tensor *t, int dim, bool keepdim, int64_t base, mm_tensor **indices) {
  return maxmin(t, dim, keepdim, base, indices, true);
}
mm_tensor *mm_min(mm_tensor *t, int dim, bool keepdim, int64_t base, mm_tensor **indices) {
  return maxmin(t, dim, keepdim, base, indices, false);
}

static mm_tensor *argmaxmin(mm_tensor *t, int dim, bool keepdim, int64_t base, bool is_max) {
  rspec sp = {is_max ? K_MAX : K_MIN, t->dtype, 0};
  bool failed;
  mm_tensor *idx = NULL;
  reduce_run(is_max ? "argmax" : "argmin", t, &dim, keepdim, sp, false, &idx, &failed);
  if (failed) return NULL;
  if (base) {
    int64_t *p = mm_data_ptr(idx), k = mm_numel(idx);
    for (int64_t i = 0; i < k; i++) p[i] += base;
  }
  return idx;
}

mm_tensor *mm_argmax(mm_tensor *t, int dim, bool keepdim, int64_t base) {
  return argmaxmin(t, dim, keepdim, base, true);
}
mm_tensor *mm_argmin(mm_tensor *t, int dim, bool keepdim, int64_t base) {
  return argmaxmin(t, dim, keepdim, base, false);
}

/* ---- logsumexp ----------------------------------------------------------------------- */

/* d lse / dx = exp(x - lse), the softmax; 0 for a slice that is all -inf. */
#define LSE_GRAD(T)                                                                   \
  static void lse_grad_##T(int64_t n, char **p, const int64_t *s, const void *ctx) {  \
    (void)ctx;                                                                        \
    for (int64_t i = 0; i < n; i++) {                                                 \
      T x = *(const T *)(p[1] + i * s[1]), o = *(const T *)(p[2] + i * s[2]);         \
      T g = *(const T *)(p[3] + i * s[3]);                                            \
      *(T *)(p[0] + i * s[0]) = o == -INFINITY ? (T)0 : g * exp(x - o);              \
    }                                                                                 \
  }
LSE_GRAD(f32)
LSE_GRAD(f64)

/* Runs an (out, x, o, g) kernel over x's shape with o and g broadcast. */
static mm_tensor *grad_kernel(mm_node *n, mm_tensor *g, mm_tensor *x, mm_tensor *o,
                              mm_loop_fn k32, mm_loop_fn k64, const void *ctx) {
  mm_tensor *ok = keep_shape(n, o), *gk = ok ? keep_shape(n, g) : NULL;
  mm_tensor *d = gk ? mm_tensor_empty(x->dtype, x->ndim, x->shape) : NULL;
  if (d) {
    mm_iter it;
    mm_tensor *ops[4] = {d, x, ok, gk};
    mm_iter_init(&it, 4, ops, x->ndim, x->shape);
    mm_iter_run(&it, x->dtype == MM_FLOAT32 ? k32 : k64, ctx);
  }
  mm_tensor_release(ok);
  mm_tensor_release(gk);
  return d;
}

static int lse_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  gin[0] = grad_kernel(n, g, n->saved[0], n->saved[1], lse_grad_f32, lse_grad_f64, NULL);
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_logsumexp(mm_tensor *t, int dim, bool keepdim) {
  if (check_float(t, "logsumexp") < 0) return NULL;
  rspec sp = {K_LSE, t->dtype, 0};
  bool failed;
  mm_tensor *out = reduce_run("logsumexp", t, &dim, keepdim, sp, true, NULL, &failed);
  return record(out, t, "LogsumexpBackward", lse_backward, dim, keepdim, 0, t, out, 0);
}

/* ---- norm ------------------------------------------------------------------------------- */

/* d ||x||_p / dx = sign(x) |x|^(p-1) / ||x||^(p-1)  (x / ||x|| for p = 2),
 * taken as 0 where the norm is 0.  For p = inf the kernel marks the
 * elements attaining the maximum with sign(x); mm_norm's backward then
 * shares the gradient between them. */
#define NORM_GRAD(T)                                                                  \
  static void norm_grad_##T(int64_t n, char **p, const int64_t *s, const void *ctx) { \
    double q = *(const double *)ctx;                                                  \
    for (int64_t i = 0; i < n; i++) {                                                 \
      T x = *(const T *)(p[1] + i * s[1]), o = *(const T *)(p[2] + i * s[2]);         \
      T g = *(const T *)(p[3] + i * s[3]), sg = (T)((x > 0) - (x < 0)), d;            \
      if (isinf(q)) d = fabs(x) == o ? sg : 0;                                        \
      else if (q == 1) d = g * sg;                                                    \
      else if (o == 0) d = 0;                                                         \
      else if (q == 2) d = g * x / o;                                                 \
      else d = (T)(g * sg * pow(fabs(x), q - 1) / pow(o, q - 1));                     \
      *(T *)(p[0] + i * s[0]) = d;                                                    \
    }                                                                                 \
  }
NORM_GRAD(f32)
NORM_GRAD(f64)

static int norm_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  double q = rargs(n)->farg;
  mm_tensor *d = grad_kernel(n, g, n->saved[0], n->saved[1], norm_grad_f32, norm_grad_f64, &q);
  if (!d) return -1;
  if (!isinf(q)) {
    gin[0] = d;
    return 0;
  }
  /* Ties at the maximum share the gradient equally (count >= 1 avoids 0/0
   * where the norm is 0 and every mark is already 0). */
  mm_tensor *a = mm_unary(MM_OP_ABS, d), *cnt = a ? mm_sum(a, node_dim(n), true) : NULL;
  mm_tensor *c1 = cnt ? mm_binary_scalar(MM_OP_MAXIMUM, cnt, 1, false) : NULL;
  mm_tensor *gk = c1 ? keep_shape(n, g) : NULL, *w = gk ? mm_binary(MM_OP_DIV, gk, c1) : NULL;
  gin[0] = w ? mm_binary(MM_OP_MUL, d, w) : NULL;
  mm_tensor_release(d), mm_tensor_release(a), mm_tensor_release(cnt), mm_tensor_release(c1);
  mm_tensor_release(gk), mm_tensor_release(w);
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_norm(mm_tensor *t, double p, int dim, bool keepdim) {
  if (check_float(t, "norm") < 0) return NULL;
  if (!(p > 0)) {
    mm_set_error("norm: expected p > 0 (2, 1, math.huge or another positive number), got %g", p);
    return NULL;
  }
  rspec sp = {K_NORM, t->dtype, p};
  bool failed;
  mm_tensor *out = reduce_run("norm", t, &dim, keepdim, sp, true, NULL, &failed);
  return record(out, t, "NormBackward", norm_backward, dim, keepdim, p, t, out, 0);
}
