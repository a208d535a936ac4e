/* pointwise_raw.c — the raw pointwise kernels: broadcasting binary and
 * unary ops, derivative kernels, fill, copy/cast, where, and sum_to
 * (broadcasting's inverse).  Nothing here records a node or reads grad
 * mode: the engine and tensor lifetime stand on this layer, and the
 * recorded ops in elementwise.c are built on it.
 *
 * Kernels are written once per element type with a macro; the macro body is
 * a plain loop with three fast paths (all contiguous, right operand a
 * scalar, left operand a scalar) that the compiler vectorises, and a
 * general strided path. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <tgmath.h>

#include "cpu.h"
#include "elementwise_avx2.h"
#include "internal.h"
#include "iter.h"
#include "parallel.h"

/* ---- shape inference -------------------------------------------------- */

int mm_broadcast_shapes(int na, const int64_t *sa, int nb, const int64_t *sb, int *nout,
                        int64_t *out) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t a = ia >= 0 ? sa[ia] : 1, b = ib >= 0 ? sb[ib] : 1;
    if (a != b && a != 1 && b != 1) {
      char b1[160], b2[160];
      mm_set_error("shapes %s and %s cannot broadcast (dimension %d: %lld vs %lld)",
                   mm_shape_str(na, sa, b1, sizeof b1), mm_shape_str(nb, sb, b2, sizeof b2),
                   i + 1, (long long)a, (long long)b);
      return -1;
    }
    out[i] = a == 1 ? b : a;
  }
  *nout = n;
  return 0;
}

/* ---- binary kernels ----------------------------------------------------- */

#define BINARY_KERNEL(NAME, T, EXPR)                                                  \
  static void NAME(int64_t n, char **p, const int64_t *s, const void *ctx) {          \
    (void)ctx;                                                                        \
    T *o = (T *)p[0];                                                                 \
    const T *x = (const T *)p[1], *y = (const T *)p[2];                               \
    const int64_t z = (int64_t)sizeof(T);                                             \
    if (s[0] == z && s[1] == z && s[2] == z) {                                        \
      for (int64_t i = 0; i < n; i++) { T a = x[i], b = y[i]; o[i] = (EXPR); }        \
    } else if (s[0] == z && s[1] == z && s[2] == 0) {                                 \
      T b = *y;                                                                       \
      for (int64_t i = 0; i < n; i++) { T a = x[i]; o[i] = (EXPR); }                  \
    } else if (s[0] == z && s[1] == 0 && s[2] == z) {                                 \
      T a = *x;                                                                       \
      for (int64_t i = 0; i < n; i++) { T b = y[i]; o[i] = (EXPR); }                  \
    } else {                                                                          \
      const int64_t so = s[0] / z, sx = s[1] / z, sy = s[2] / z;                      \
      for (int64_t i = 0; i < n; i++) { T a = x[i * sx], b = y[i * sy]; o[i * so] = (EXPR); } \
    }                                                                                 \
  }

/* NaN-propagating maximum/minimum, as IEEE-minded users expect. */
#define MAXIMUM(a, b) ((a) != (a) ? (a) : ((a) > (b) || (b) != (b)) ? ((a) > (b) ? (a) : (b)) : (b))
#define MINIMUM(a, b) ((a) != (a) ? (a) : ((a) < (b) || (b) != (b)) ? ((a) < (b) ? (a) : (b)) : (b))

static inline int64_t ipow(int64_t a, int64_t b) {
  if (b < 0) return a == 1 ? 1 : (a == -1 ? (b & 1 ? -1 : 1) : 0);
  uint64_t r = 1, x = (uint64_t)a;   /* wraps like Lua's integers, no UB */
  while (b) { if (b & 1) r *= x; x *= x; b >>= 1; }
  return (int64_t)r;
}

/* int64 arithmetic wraps around on overflow, as Lua's integers do; signed
 * overflow is undefined in C, so it is done in uint64_t.  _Generic picks the
 * plain expression for floats (the other branch is not evaluated). */
#define WRAP(OP, a, b) _Generic((a), int64_t: (int64_t)((uint64_t)(a) OP (uint64_t)(b)), \
                                default: (a) OP (b))

#define BINARY_FAMILY(SUF, T, POW)                                    \
  BINARY_KERNEL(add_##SUF, T, WRAP(+, a, b))                          \
  BINARY_KERNEL(sub_##SUF, T, WRAP(-, a, b))                          \
  BINARY_KERNEL(mul_##SUF, T, WRAP(*, a, b))                          \
  BINARY_KERNEL(div_##SUF, T, a / b)                                  \
  BINARY_KERNEL(pow_##SUF, T, POW(a, b))                              \
  BINARY_KERNEL(maximum_##SUF, T, MAXIMUM(a, b))                      \
  BINARY_KERNEL(minimum_##SUF, T, MINIMUM(a, b))                      \
  BINARY_KERNEL(eq_##SUF, T, (T)(a == b))                             \
  BINARY_KERNEL(ne_##SUF, T, (T)(a != b))                             \
  BINARY_KERNEL(lt_##SUF, T, (T)(a < b))                              \
  BINARY_KERNEL(le_##SUF, T, (T)(a <= b))                             \
  BINARY_KERNEL(gt_##SUF, T, (T)(a > b))                              \
  BINARY_KERNEL(ge_##SUF, T, (T)(a >= b))                             \
  static const mm_loop_fn binary_##SUF[MM_BINARY_COUNT] = {           \
    add_##SUF, sub_##SUF, mul_##SUF, div_##SUF, pow_##SUF,            \
    maximum_##SUF, minimum_##SUF, eq_##SUF, ne_##SUF, lt_##SUF,       \
    le_##SUF, gt_##SUF, ge_##SUF};

BINARY_FAMILY(f32, float, pow)
BINARY_FAMILY(f64, double, pow)
BINARY_FAMILY(i64, int64_t, ipow)

static const mm_loop_fn *binary_table(mm_dtype dt) {
  return dt == MM_FLOAT32 ? binary_f32 : dt == MM_FLOAT64 ? binary_f64 : binary_i64;
}

static const char *const binary_names[MM_BINARY_COUNT] = {
  "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge"};
const char *mm_binary_name(mm_binary_op op) { return binary_names[op]; }

/* Integer division is true division, as in PyTorch: promote to float32. */
mm_dtype mm_raw_binary_dtype(mm_binary_op op, mm_dtype a, mm_dtype b) {
  mm_dtype d = mm_promote(a, b);
  if (d == MM_INT64 && op == MM_OP_DIV) d = MM_FLOAT32;
  return d;
}

/* Casts t to dt if needed (new reference either way). */
static mm_tensor *as_dtype(mm_tensor *t, mm_dtype dt) { return mm_raw_cast(t, dt); }


/* The small-operand fast path: operands of one dtype whose result keeps it,
 * where either both have one shape and are contiguous, or one of them is a
 * single element (a number from Lua arrives as a 0-dim tensor) with no more
 * dims than the other, contiguous one.  Then the output has the big
 * operand's shape and the kernel runs once over flat arrays, the single
 * element read with stride 0 — as the iterator would set it up.  Returns
 * the operand whose shape the output takes, or NULL. */
static const mm_tensor *flat_operands(mm_binary_op op, const mm_tensor *a, const mm_tensor *b) {
  if (a->dtype != b->dtype) return NULL;
  if (a->dtype == MM_INT64 && op == MM_OP_DIV) return NULL;   /* promotes to float32 */
  if (a->ndim == b->ndim) {
    int i = 0;
    while (i < a->ndim && a->shape[i] == b->shape[i]) i++;
    if (i == a->ndim) return mm_is_contiguous(a) && mm_is_contiguous(b) ? a : NULL;
  }
  if (b->ndim <= a->ndim && mm_numel(b) == 1) return mm_is_contiguous(a) ? a : NULL;
  if (a->ndim <= b->ndim && mm_numel(a) == 1) return mm_is_contiguous(b) ? b : NULL;
  return NULL;
}

/* Forward of a binary op into a fresh tensor, no recording. */
mm_tensor *mm_raw_binary(mm_binary_op op, mm_tensor *a, mm_tensor *b) {
  /* Small operands (scalars, a bias, a batch-1 activation, x * 0.5): one
   * call of the kernel on flat arrays, skipping shape inference, the
   * iterator's setup and the dtype round trip — most of the cost of an op
   * this small.  Same kernel, same elements, so the same result as the
   * general path. */
  const mm_tensor *big = flat_operands(op, a, b);
  if (big) {
    int64_t n = mm_numel(big);
    if (n < 16384) {
      mm_dtype dt = a->dtype;
      mm_tensor *out = mm_tensor_empty_unchecked(dt, big->ndim, big->shape);
      if (!out) return NULL;
      if (n > 0) {
        int64_t es = dt == MM_FLOAT32 ? 4 : 8;
        /* a lone element broadcast to n > 1 is read with stride 0 */
        int64_t st[3] = {es, a == big || mm_numel(a) == n ? es : 0,
                         b == big || mm_numel(b) == n ? es : 0};
        char *p[3] = {(char *)out->storage->data,   /* fresh: offset 0 */
                      (char *)a->storage->data + a->offset * es,
                      (char *)b->storage->data + b->offset * es};
        binary_table(dt)[op](n, p, st, NULL);
      }
      return out;
    }
  }
  int nd;
  int64_t shape[MM_MAX_DIMS];
  if (mm_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, shape) < 0) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", binary_names[op], mm_error());
    mm_set_error("%s", msg);
    return NULL;
  }
  mm_dtype dt = mm_raw_binary_dtype(op, a->dtype, b->dtype);
  mm_tensor *ca = as_dtype(a, dt), *cb = ca ? as_dtype(b, dt) : NULL;
  mm_tensor *out = cb ? mm_tensor_empty(dt, nd, shape) : NULL;
  if (out) {
    mm_iter it;
    mm_tensor *ops[3] = {out, ca, cb};
    mm_iter_init(&it, 3, ops, nd, shape);
    mm_iter_run(&it, binary_table(dt)[op], NULL);
  }
  mm_tensor_release(ca);
  mm_tensor_release(cb);
  return out;
}
int mm_raw_binary_check_(mm_binary_op op, const mm_tensor *a, const mm_tensor *b) {
  int nd;
  int64_t shape[MM_MAX_DIMS];
  char b1[160], b2[160];
  if (mm_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, shape) < 0) return -1;
  if (nd != a->ndim || memcmp(shape, a->shape, sizeof(int64_t) * (size_t)nd)) {
    mm_set_error("%s_: result shape %s does not fit the in-place tensor's shape %s",
                 binary_names[op], mm_shape_str(nd, shape, b1, sizeof b1),
                 mm_shape_str(a->ndim, a->shape, b2, sizeof b2));
    return -1;
  }
  if (mm_raw_binary_dtype(op, a->dtype, b->dtype) != a->dtype && a->dtype == MM_INT64) {
    mm_set_error("%s_: the result is %s but the in-place tensor is int64", binary_names[op],
                 mm_dtype_name(mm_raw_binary_dtype(op, a->dtype, b->dtype)));
    return -1;
  }
  return 0;
}

int mm_raw_binary_(mm_binary_op op, mm_tensor *a, mm_tensor *b) {
  if (mm_raw_binary_check_(op, a, b) < 0) return -1;
  /* b may view a's own memory (a:add_(a:t())): read it from a copy, so the
   * result is what it would be with a temporary */
  mm_tensor *cb = b->storage == a->storage && b != a ? mm_raw_clone(b) : as_dtype(b, a->dtype);
  if (cb && cb->dtype != a->dtype) {
    mm_tensor *c2 = as_dtype(cb, a->dtype);
    mm_tensor_release(cb);
    cb = c2;
  }
  if (!cb) return -1;
  mm_iter it;
  mm_tensor *ops[3] = {a, a, cb};
  mm_iter_init(&it, 3, ops, a->ndim, a->shape);
  mm_iter_run(&it, binary_table(a->dtype)[op], NULL);
  mm_tensor_release(cb);
  mm_bump_version(a);
  return 0;
}


/* ---- unary kernels ------------------------------------------------------ */
/* Generated from pointwise.def: each kernel switches once per call on the
 * op and runs a plain loop per op inside (no per-element dispatch), written
 * once per element type by including the table with T a local typedef. */

#define SQRT_2_OVER_PI 0.7978845608028654
#define INV_SQRT_2 0.7071067811865476

/* ---- unary helpers: named in pointwise.def expressions.  Each takes float
 * or double (picked by _Generic on the argument) and computes in that type. */
#define UNARY_HELPERS(T)                                                              \
  /* Stable for large |x|: never exponentiates a large positive number. */          \
  static inline T sigmoid_##T(T x) {                                                  \
    if (x >= 0) return 1 / (1 + exp(-x));                                             \
    T e = exp(x);                                                                     \
    return e / (1 + e);                                                               \
  }                                                                                   \
  static inline T silu_grad_##T(T x) { T s = sigmoid_##T(x); return s * (1 + x * (1 - s)); } \
  static inline T gelu_grad_##T(T x) {                                                \
    return (T)0.5 * (1 + erf(x * (T)INV_SQRT_2)) +                                    \
           x * exp((T)-0.5 * x * x) * (T)(0.5 * M_2_SQRTPI * INV_SQRT_2);             \
  }                                                                                   \
  static inline T gelu_tanh_##T(T x) {                                                \
    return (T)0.5 * x * (1 + tanh((T)SQRT_2_OVER_PI * (x + (T)0.044715 * x * x * x))); \
  }                                                                                   \
  static inline T gelu_tanh_grad_##T(T x) {                                           \
    T u = (T)SQRT_2_OVER_PI * (x + (T)0.044715 * x * x * x), t = tanh(u);             \
    return (T)0.5 * (1 + t) +                                                         \
           (T)0.5 * x * (1 - t * t) * (T)SQRT_2_OVER_PI * (1 + (T)(3 * 0.044715) * x * x); \
  }
typedef float f32;
typedef double f64;
UNARY_HELPERS(f32)
UNARY_HELPERS(f64)
#undef UNARY_HELPERS
#define BY_TYPE(NAME, x) _Generic((x), float: NAME##_f32, double: NAME##_f64)(x)
#define SIGMOID(x) BY_TYPE(sigmoid, x)
#define SILU_GRAD(x) BY_TYPE(silu_grad, x)
#define GELU_GRAD(x) BY_TYPE(gelu_grad, x)
#define GELU_TANH(x) BY_TYPE(gelu_tanh, x)
#define GELU_TANH_GRAD(x) BY_TYPE(gelu_tanh_grad, x)
/* ReLU as PyTorch defines it: x where x > 0, NaN stays NaN, everything else
 * (-inf and -0 included) is +0.  Written as a select of x or 0 on the mask
 * (x > 0 || x != x) rather than a branch: as a branch it mispredicts on
 * about half of a layer's activations and cost more than the matmul beside
 * it.  The gradient is likewise a select: g where x > 0, exactly 0 elsewhere
 * (even where g is NaN or inf), as torch's threshold_backward. */
#define RELU_FW(x) ((x) > 0 || (x) != (x) ? (x) : (T)0)
/* torch.clamp's order: the lower bound first, then the upper one; a NaN
 * bound wins (comparisons with NaN are false, so test it explicitly). */
#define CLAMP_LO(x, lo) ((x) < (lo) || (lo) != (lo) ? (lo) : (x))
#define CLAMP(x, lo, hi) (CLAMP_LO(x, lo) > (hi) || (hi) != (hi) ? (hi) : CLAMP_LO(x, lo))
/* -x for int64 wraps at INT64_MIN, as Lua's integers do (no UB). */
#define WNEG(x) ((int64_t)(0 - (uint64_t)(x)))

/* In the table, I64(e) / F_ONLY and PARAMS*(...) are read by elementwise.c;
 * the kernels use only the expressions. */
typedef struct { mm_unary_op op; double p[MM_POINTWISE_MAX_PARAMS]; } pointwise_ctx;

/* Forward: operands (y, x).  ctx is a pointwise_ctx. */
#define FW_CASE(ID, FW)                                                              \
  case MM_OP_##ID:                                                                   \
    if (so == 1 && sx == 1)                                                          \
      for (int64_t i = 0; i < n; i++) { T x = in[i]; (void)x; o[i] = (FW); }         \
    else                                                                             \
      for (int64_t i = 0; i < n; i++) { T x = in[i * sx]; (void)x; o[i * so] = (FW); } \
    break;
#define FW_PROLOGUE                                                                  \
  const pointwise_ctx *c = ctx;                                                      \
  T *o = (T *)ptr[0];                                                                \
  const T *in = (const T *)ptr[1];                                                   \
  const int64_t so = s[0] / (int64_t)sizeof(T), sx = s[1] / (int64_t)sizeof(T)

static void unary_fw_f32(int64_t n, char **ptr, const int64_t *s, const void *ctx) {
  typedef float T;
  FW_PROLOGUE;
  const T p[2] = {(T)c->p[0], (T)c->p[1]};
#define MM_UNARY(ID, NAME, NODE, I64, PARAMS, FW, BW) FW_CASE(ID, FW)
  switch (c->op) {
#include "pointwise.def"
  default: break;
  }
#undef MM_UNARY
}

static void unary_fw_f64(int64_t n, char **ptr, const int64_t *s, const void *ctx) {
  typedef double T;
  FW_PROLOGUE;
  const T p[2] = {c->p[0], c->p[1]};
#define MM_UNARY(ID, NAME, NODE, I64, PARAMS, FW, BW) FW_CASE(ID, FW)
  switch (c->op) {
#include "pointwise.def"
  default: break;
  }
#undef MM_UNARY
}

/* int64: the I64(...) column.  F_ONLY ops never get here (mm_pointwise
 * refuses them); their case would write zeros. */
static int64_t saturate_i64(double v) {
  return v != v ? 0 : v <= -9.2233720368547758e18 ? INT64_MIN
                    : v >= 9.2233720368547758e18 ? INT64_MAX : (int64_t)v;
}
#define I64(e) e
#define F_ONLY 0
static void unary_fw_i64(int64_t n, char **ptr, const int64_t *s, const void *ctx) {
  typedef int64_t T;
  FW_PROLOGUE;
  /* the entry checked finite parameters are in range; infinite ones saturate */
  const T p[2] = {saturate_i64(c->p[0]), saturate_i64(c->p[1])};
  (void)p;
#define MM_UNARY(ID, NAME, NODE, I64, PARAMS, FW, BW) FW_CASE(ID, I64)
  switch (c->op) {
#include "pointwise.def"
  default: break;
  }
#undef MM_UNARY
}
#undef I64
#undef F_ONLY

/* Gradient: operands (gin, g, x, y) all of x's shape and dtype:
 * gin = g * dy/dx, exactly 0 where dy/dx is 0 (see pointwise.def). */
#define BW_CASE(ID, BW)                                                              \
  case MM_OP_##ID:                                                                   \
    for (int64_t i = 0; i < n; i++) {                                                \
      T x = xs[i * sx], y = ys[i * sy];                                              \
      (void)x, (void)y;                                                              \
      T d = (BW);                                                                    \
      o[i * so] = d == 0 ? (T)0 : gs[i * sg] * d;                                    \
    }                                                                                \
    break;
#define BW_PROLOGUE                                                                  \
  const pointwise_ctx *c = ctx;                                                      \
  T *o = (T *)ptr[0];                                                                \
  const T *gs = (const T *)ptr[1], *xs = (const T *)ptr[2], *ys = (const T *)ptr[3]; \
  const int64_t z = (int64_t)sizeof(T), so = s[0] / z, sg = s[1] / z, sx = s[2] / z, \
                sy = s[3] / z

static void unary_bw_f32(int64_t n, char **ptr, const int64_t *s, const void *ctx) {
  typedef float T;
  BW_PROLOGUE;
  const T p[2] = {(T)c->p[0], (T)c->p[1]};
#define MM_UNARY(ID, NAME, NODE, I64, PARAMS, FW, BW) BW_CASE(ID, BW)
  switch (c->op) {
#include "pointwise.def"
  default: break;
  }
#undef MM_UNARY
}

static void unary_bw_f64(int64_t n, char **ptr, const int64_t *s, const void *ctx) {
  typedef double T;
  BW_PROLOGUE;
  const T p[2] = {c->p[0], c->p[1]};
#define MM_UNARY(ID, NAME, NODE, I64, PARAMS, FW, BW) BW_CASE(ID, BW)
  switch (c->op) {
#include "pointwise.def"
  default: break;
  }
#undef MM_UNARY
}

/* ReLU's gin = (x > 0 ? g : 0) in one pass, without writing the derivative
 * to a temporary and reading it back (operands: gin, g, x, all of x's dtype
 * and shape). */
#define RELU_BW(T)                                                                      \
  static void relu_bw_##T(int64_t n, char **p, const int64_t *s, const void *ctx) {    \
    (void)ctx;                                                                          \
    T *o = (T *)p[0];                                                                   \
    const T *g = (const T *)p[1], *x = (const T *)p[2];                                 \
    if (s[0] == sizeof(T) && s[1] == sizeof(T) && s[2] == sizeof(T))                    \
      for (int64_t i = 0; i < n; i++) o[i] = x[i] > 0 ? g[i] : (T)0;                    \
    else                                                                                \
      for (int64_t i = 0; i < n; i++)                                                   \
        *(T *)(p[0] + i * s[0]) =                                                       \
          *(const T *)(p[2] + i * s[2]) > 0 ? *(const T *)(p[1] + i * s[1]) : (T)0;     \
  }
RELU_BW(f32)
RELU_BW(f64)
#undef RELU_BW

/* A float32 ReLU over contiguous memory goes to the AVX2 loop (bit-identical
 * to the portable one), cut into fixed blocks the pool shares out: an MLP's
 * [128, 256] activations (32K floats) ran on the calling thread while the
 * other core waited, four times a step.  Every element is independent, so
 * the split cannot change a result. */
#define RELU_BLOCK 8192          /* floats per task: 32 KiB in, 32 KiB out */
#define RELU_PARALLEL_MIN 16384  /* below this one thread is quicker than a dispatch */

static bool relu_avx2_ok(const mm_tensor *x) {
  return x->dtype == MM_FLOAT32 && mm_is_contiguous(x) && mm_kernel_id() >= MM_KERNEL_AVX2;
}

typedef struct {
  int64_t n;
  const float *g, *x;   /* g NULL: forward */
  float *y;
} relu_job;

static void relu_blocks(void *ctx, int64_t b0, int64_t b1) {
  const relu_job *j = ctx;
  int64_t i0 = b0 * RELU_BLOCK, i1 = b1 * RELU_BLOCK;
  if (i1 > j->n) i1 = j->n;
  if (j->g) mm_relu_bw_f32_avx2(i1 - i0, j->g + i0, j->x + i0, j->y + i0);
  else mm_relu_f32_avx2(i1 - i0, j->x + i0, j->y + i0);
}

/* y = relu(x), or y = g * relu'(x) when g is given; all contiguous float32. */
static void relu_avx2_run(int64_t n, const float *g, const float *x, float *y) {
  relu_job j = {n, g, x, y};
  int64_t nb = (n + RELU_BLOCK - 1) / RELU_BLOCK;
  if (n < RELU_PARALLEL_MIN) relu_blocks(&j, 0, nb);
  else mm_parallel_for(nb, relu_blocks, &j);
}

/* ---- fill, copy, cast ------------------------------------------------------ */

typedef struct { double v; mm_dtype dt; } fill_ctx;

static void fill_kernel(int64_t n, char **p, const int64_t *s, const void *vctx) {
  const fill_ctx *c = vctx;
  if (c->dt == MM_FLOAT32) {
    float f = (float)c->v;
    for (int64_t i = 0; i < n; i++) *(float *)(p[0] + i * s[0]) = f;
  } else if (c->dt == MM_FLOAT64) {
    for (int64_t i = 0; i < n; i++) *(double *)(p[0] + i * s[0]) = c->v;
  } else {
    int64_t k = (int64_t)c->v;
    for (int64_t i = 0; i < n; i++) *(int64_t *)(p[0] + i * s[0]) = k;
  }
}

void mm_raw_fill(mm_tensor *t, double v) {
  fill_ctx ctx = {v, t->dtype};
  mm_iter it;
  mm_iter_init(&it, 1, &t, t->ndim, t->shape);
  mm_iter_run(&it, fill_kernel, &ctx);
}

#define COPY_KERNEL(NAME, TD, TS)                                                    \
  static void NAME(int64_t n, char **p, const int64_t *s, const void *ctx) {         \
    (void)ctx;                                                                       \
    if (s[0] == sizeof(TD) && s[1] == sizeof(TS))                                    \
      for (int64_t i = 0; i < n; i++) ((TD *)p[0])[i] = (TD)((const TS *)p[1])[i];  \
    else                                                                             \
      for (int64_t i = 0; i < n; i++)                                                \
        *(TD *)(p[0] + i * s[0]) = (TD) * (const TS *)(p[1] + i * s[1]);            \
  }
COPY_KERNEL(copy_f32_f32, float, float)
COPY_KERNEL(copy_f32_f64, float, double)
COPY_KERNEL(copy_f32_i64, float, int64_t)
COPY_KERNEL(copy_f64_f32, double, float)
COPY_KERNEL(copy_f64_f64, double, double)
COPY_KERNEL(copy_f64_i64, double, int64_t)
COPY_KERNEL(copy_i64_f32, int64_t, float)
COPY_KERNEL(copy_i64_f64, int64_t, double)
COPY_KERNEL(copy_i64_i64, int64_t, int64_t)
static const mm_loop_fn copy_table[3][3] = {
  {copy_f32_f32, copy_f32_f64, copy_f32_i64},
  {copy_f64_f32, copy_f64_f64, copy_f64_i64},
  {copy_i64_f32, copy_i64_f64, copy_i64_i64}};

/* Raw copy with broadcasting and casting; no checks beyond shapes. */
int mm_raw_copy_into(mm_tensor *dst, mm_tensor *src, const char *where) {
  int nd;
  int64_t shape[MM_MAX_DIMS];
  char b1[160], b2[160];
  if (mm_broadcast_shapes(dst->ndim, dst->shape, src->ndim, src->shape, &nd, shape) < 0 ||
      nd != dst->ndim || memcmp(shape, dst->shape, sizeof(int64_t) * (size_t)nd)) {
    mm_set_error("%s: source shape %s cannot be copied into shape %s", where,
                 mm_shape_str(src->ndim, src->shape, b1, sizeof b1),
                 mm_shape_str(dst->ndim, dst->shape, b2, sizeof b2));
    return -1;
  }
  /* A source that views the destination's memory (a:copy_(a:t())) is read
   * from a copy: the result is what it would be with a temporary. */
  mm_tensor *own = NULL;
  if (src->storage == dst->storage && src != dst) {
    if (!(own = mm_tensor_empty_unchecked(src->dtype, src->ndim, src->shape))) return -1;
    mm_iter it;
    mm_tensor *ops[2] = {own, src};
    mm_iter_init(&it, 2, ops, src->ndim, src->shape);
    mm_iter_run(&it, copy_table[src->dtype][src->dtype], NULL);
    src = own;
  }
  mm_iter it;
  mm_tensor *ops[2] = {dst, src};
  mm_iter_init(&it, 2, ops, dst->ndim, dst->shape);
  mm_iter_run(&it, copy_table[dst->dtype][src->dtype], NULL);
  mm_tensor_release(own);
  return 0;
}

mm_tensor *mm_raw_cast(mm_tensor *t, mm_dtype dt) {
  if (t->dtype == dt) { mm_tensor_retain(t); return t; }
  mm_tensor *out = mm_tensor_empty_unchecked(dt, t->ndim, t->shape);
  if (out) mm_raw_copy_into(out, t, "cast");
  return out;
}

mm_tensor *mm_raw_clone(mm_tensor *t) {
  mm_tensor *out = mm_tensor_empty_unchecked(t->dtype, t->ndim, t->shape);
  if (out) mm_raw_copy_into(out, t, "clone");
  return out;
}

mm_tensor *mm_raw_contiguous(mm_tensor *t) {
  if (mm_is_contiguous(t)) { mm_tensor_retain(t); return t; }
  return mm_raw_clone(t);
}

/* ---- sum_to: broadcasting's inverse -------------------------------------- */

mm_tensor *mm_raw_sum_to(mm_tensor *g, int ndim, const int64_t *shape) {
  if (g->ndim == ndim && !memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim)) {
    mm_tensor_retain(g);
    return g;
  }
  mm_tensor *out = mm_tensor_zeros(g->dtype, ndim, shape);
  if (!out) return NULL;
  /* View the result expanded to g's shape (stride 0 where broadcast) and
   * accumulate g into it: each output element sums its broadcast copies. */
  int64_t st[MM_MAX_DIMS];
  int lead = g->ndim - ndim;
  for (int d = 0; d < g->ndim; d++) {
    int od = d - lead;
    st[d] = (od < 0 || shape[od] == 1) ? 0 : out->stride[od];
  }
  mm_tensor *exp_view = mm_tensor_view_of(out, g->ndim, g->shape, st, 0);
  if (!exp_view) { mm_tensor_release(out); return NULL; }
  mm_iter it;
  mm_tensor *ops[3] = {exp_view, exp_view, g};
  mm_iter_init(&it, 3, ops, g->ndim, g->shape);
  mm_iter_run(&it, binary_table(g->dtype)[MM_OP_ADD], NULL);
  mm_tensor_release(exp_view);
  return out;
}

/* ---- where / masked_fill --------------------------------------------------- */

#define WHERE_KERNEL(NAME, T)                                                        \
  static void NAME(int64_t n, char **p, const int64_t *s, const void *ctx) {         \
    (void)ctx;                                                                       \
    for (int64_t i = 0; i < n; i++)                                                  \
      *(T *)(p[0] + i * s[0]) = *(const T *)(p[1] + i * s[1]) != 0                   \
                                    ? *(const T *)(p[2] + i * s[2])                  \
                                    : *(const T *)(p[3] + i * s[3]);                 \
  }
WHERE_KERNEL(where_f32, float)
WHERE_KERNEL(where_f64, double)
WHERE_KERNEL(where_i64, int64_t)

/* ---- raw unary entry points ------------------------------------------------ */

mm_tensor *mm_raw_pointwise(mm_unary_op op, mm_tensor *a, const double *params) {
  mm_tensor *out = mm_tensor_empty_unchecked(a->dtype, a->ndim, a->shape);
  if (!out) return NULL;
  if (op == MM_OP_RELU && relu_avx2_ok(a)) {
    relu_avx2_run(mm_numel(a), NULL, mm_data_ptr(a), mm_data_ptr(out));
  } else {
    pointwise_ctx c = {op, {params[0], params[1]}};
    mm_iter it;
    mm_tensor *ops[2] = {out, a};
    mm_iter_init(&it, 2, ops, a->ndim, a->shape);
    mm_iter_run(&it, a->dtype == MM_FLOAT32 ? unary_fw_f32 : a->dtype == MM_FLOAT64 ? unary_fw_f64
                     : unary_fw_i64, &c);
  }
  return out;
}

mm_tensor *mm_raw_pointwise_grad(mm_unary_op op, mm_tensor *g, mm_tensor *x, mm_tensor *y,
                                 const double *params) {
  if (op == MM_OP_RELU) return mm_raw_relu_backward(g, x);   /* the fused AVX2 path */
  mm_tensor *o = mm_tensor_empty_unchecked(x->dtype, x->ndim, x->shape);
  if (!o) return NULL;
  pointwise_ctx c = {op, {params[0], params[1]}};
  mm_iter it;
  mm_tensor *ops[4] = {o, g, x, y};
  mm_iter_init(&it, 4, ops, x->ndim, x->shape);
  mm_iter_run(&it, x->dtype == MM_FLOAT32 ? unary_bw_f32 : unary_bw_f64, &c);
  return o;
}

mm_tensor *mm_raw_relu_backward(mm_tensor *g, mm_tensor *x) {
  mm_tensor *o = mm_tensor_empty_unchecked(x->dtype, x->ndim, x->shape);
  if (!o) return NULL;
  if (relu_avx2_ok(x) && mm_is_contiguous(g)) {
    relu_avx2_run(mm_numel(x), mm_data_ptr(g), mm_data_ptr(x), mm_data_ptr(o));
    return o;
  }
  mm_iter it;
  mm_tensor *ops[3] = {o, g, x};
  mm_iter_init(&it, 3, ops, x->ndim, x->shape);
  mm_iter_run(&it, x->dtype == MM_FLOAT32 ? relu_bw_f32 : relu_bw_f64, NULL);
  return o;
}

mm_tensor *mm_raw_where(mm_tensor *cond, mm_tensor *a, mm_tensor *b) {
  int nd, nd2;
  int64_t sh[MM_MAX_DIMS], sh2[MM_MAX_DIMS];
  mm_tensor *out = NULL, *cc = NULL, *ca = NULL, *cb = NULL;
  if (mm_broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &nd, sh) < 0 ||
      mm_broadcast_shapes(cond->ndim, cond->shape, nd, sh, &nd2, sh2) < 0) {
    char msg[512];
    snprintf(msg, sizeof msg, "where: %s", mm_error());
    mm_set_error("%s", msg);
    return NULL;
  }
  mm_dtype dt = mm_promote(a->dtype, b->dtype);
  if ((cc = as_dtype(cond, dt)) && (ca = as_dtype(a, dt)) && (cb = as_dtype(b, dt)) &&
      (out = mm_tensor_empty_unchecked(dt, nd2, sh2))) {
    mm_iter it;
    mm_tensor *ops[4] = {out, cc, ca, cb};
    mm_iter_init(&it, 4, ops, nd2, sh2);
    mm_iter_run(&it, dt == MM_FLOAT32 ? where_f32 : dt == MM_FLOAT64 ? where_f64 : where_i64, NULL);
  }
  mm_tensor_release(cc), mm_tensor_release(ca), mm_tensor_release(cb);
  return out;
}
