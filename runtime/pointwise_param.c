/* pointwise_param.c — pointwise ops with parameters and a piecewise
 * gradient: clamp and leaky_relu. */
#include <math.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"
#include "iter.h"

/* ---- clamp ---------------------------------------------------------------------- */

typedef struct { double lo, hi; bool has_lo, has_hi; } clamp_ctx;

/* A NaN input stays NaN (comparisons with it are false); a NaN bound gives
 * NaN, as torch.clamp does. */
#define CLAMP_FW(SUF, T)                                                             \
  static void clamp_fw_##SUF(int64_t n, char **p, const int64_t *s, const void *vc) { \
    const clamp_ctx *c = vc;                                                         \
    const T lo = (T)c->lo, hi = (T)c->hi;                                            \
    for (int64_t i = 0; i < n; i++) {                                                \
      T y = *(const T *)(p[1] + i * s[1]);                                           \
      if (c->has_lo && (y < lo || lo != lo)) y = lo;                                 \
      if (c->has_hi && (y > hi || hi != hi)) y = hi;                                 \
      *(T *)(p[0] + i * s[0]) = y;                                                   \
    }                                                                                \
  }
/* operands (gin, g, x): g where lo <= x <= hi, else 0 */
#define CLAMP_BW(SUF, T)                                                             \
  static void clamp_bw_##SUF(int64_t n, char **p, const int64_t *s, const void *vc) { \
    const clamp_ctx *c = vc;                                                         \
    const T lo = (T)c->lo, hi = (T)c->hi;                                            \
    for (int64_t i = 0; i < n; i++) {                                                \
      T x = *(const T *)(p[2] + i * s[2]);                                           \
      bool in = (!c->has_lo || x >= lo) && (!c->has_hi || x <= hi);                  \
      *(T *)(p[0] + i * s[0]) = in ? *(const T *)(p[1] + i * s[1]) : (T)0;           \
    }                                                                                \
  }
CLAMP_FW(f32, float)
CLAMP_FW(f64, double)
CLAMP_FW(i64, int64_t)
CLAMP_BW(f32, float)
CLAMP_BW(f64, double)

static mm_loop_fn pick(mm_dtype dt, mm_loop_fn f32, mm_loop_fn f64, mm_loop_fn i64) {
  return dt == MM_FLOAT32 ? f32 : dt == MM_FLOAT64 ? f64 : i64;
}

/* Runs a 3-operand derivative kernel (gin, g, x) over x's shape. */
static mm_tensor *pointwise_grad(mm_tensor *g, mm_tensor *x, mm_loop_fn f32, mm_loop_fn f64,
                                 const void *ctx) {
  mm_tensor *gc = g->dtype == x->dtype ? (mm_tensor_retain(g), g) : mm_to_dtype(g, x->dtype);
  mm_tensor *gin = gc ? mm_tensor_empty(x->dtype, x->ndim, x->shape) : NULL;
  if (gin) {
    mm_iter it;
    mm_tensor *ops[3] = {gin, gc, x};
    mm_iter_init(&it, 3, ops, x->ndim, x->shape);
    mm_iter_run(&it, x->dtype == MM_FLOAT32 ? f32 : f64, ctx);
  }
  mm_tensor_release(gc);
  return gin;
}

static int clamp_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  gin[0] = pointwise_grad(g, n->saved[0], clamp_bw_f32, clamp_bw_f64, mm_node_args(n));
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_clamp(mm_tensor *x, const double *lo, const double *hi) {
  if (!lo && !hi) {
    mm_set_error("clamp: expected at least one of min and max, got neither");
    return NULL;
  }
  clamp_ctx c = {lo ? *lo : 0, hi ? *hi : 0, lo != NULL, hi != NULL};
  if (x->dtype == MM_INT64) {
    const double lim = 9.2e18;
    bool integral = (!lo || *lo == floor(*lo)) && (!hi || *hi == floor(*hi));
    if (integral && ((lo && fabs(*lo) > lim) || (hi && fabs(*hi) > lim))) {
      mm_set_error("clamp: bound %g is outside the int64 range", lo && fabs(*lo) > lim ? *lo : *hi);
      return NULL;
    }
    if (!integral) { /* a fractional bound makes the result float, as torch promotes */
      mm_tensor *xf = mm_to_dtype(x, MM_FLOAT32);
      mm_tensor *r = xf ? mm_clamp(xf, lo, hi) : NULL;
      mm_tensor_release(xf);
      return r;
    }
  }
  mm_tensor *out = mm_tensor_empty(x->dtype, x->ndim, x->shape);
  if (!out) return NULL;
  mm_iter it;
  mm_tensor *ops[2] = {out, x};
  mm_iter_init(&it, 2, ops, x->ndim, x->shape);
  mm_iter_run(&it, pick(x->dtype, clamp_fw_f32, clamp_fw_f64, clamp_fw_i64), &c);
  static const mm_op_def CLAMP = {"clamp", "ClampBackward", clamp_backward};
  out = mm_record(out, &CLAMP, 1, &x, 1, &x, &c, sizeof c);
  return out;
}

/* ---- leaky_relu ------------------------------------------------------------------- */

#define LEAKY_KERNELS(SUF, T)                                                        \
  static void leaky_fw_##SUF(int64_t n, char **p, const int64_t *s, const void *vc) { \
    const T a = (T) * (const double *)vc;                                            \
    for (int64_t i = 0; i < n; i++) {                                                \
      T x = *(const T *)(p[1] + i * s[1]);                                           \
      *(T *)(p[0] + i * s[0]) = x > 0 ? x : a * x;                                   \
    }                                                                                \
  }                                                                                  \
  /* operands (gin, g, x): g for x > 0, slope * g otherwise */                       \
  static void leaky_bw_##SUF(int64_t n, char **p, const int64_t *s, const void *vc) { \
    const T a = (T) * (const double *)vc;                                            \
    for (int64_t i = 0; i < n; i++) {                                                \
      T x = *(const T *)(p[2] + i * s[2]), g = *(const T *)(p[1] + i * s[1]);        \
      *(T *)(p[0] + i * s[0]) = x > 0 ? g : a * g;                                   \
    }                                                                                \
  }
LEAKY_KERNELS(f32, float)
LEAKY_KERNELS(f64, double)

static int leaky_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  gin[0] = pointwise_grad(g, n->saved[0], leaky_bw_f32, leaky_bw_f64, mm_node_args(n));
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_leaky_relu(mm_tensor *x, double slope) {
  if (!mm_dtype_is_float(x->dtype)) {
    mm_set_error("leaky_relu: expected a float32 or float64 tensor, got %s (convert with :float())",
                 mm_dtype_name(x->dtype));
    return NULL;
  }
  mm_tensor *out = mm_tensor_empty(x->dtype, x->ndim, x->shape);
  if (!out) return NULL;
  mm_iter it;
  mm_tensor *ops[2] = {out, x};
  mm_iter_init(&it, 2, ops, x->ndim, x->shape);
  mm_iter_run(&it, x->dtype == MM_FLOAT32 ? leaky_fw_f32 : leaky_fw_f64, &slope);
  static const mm_op_def LEAKY = {"leaky_relu", "LeakyReluBackward", leaky_backward};
  out = mm_record(out, &LEAKY, 1, &x, 1, &x, &slope, sizeof slope);
  return out;
}
