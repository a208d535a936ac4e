/* optim.c — the fused optimizer kernels declared in optim.h: SGD (momentum,
 * dampening, Nesterov, L2 decay), Adam/AdamW (bias correction, decoupled
 * decay, AMSGrad), and the norm accumulation behind clip_grad_norm.
 *
 * Each step is a single loop over the elements that reads the gradient and
 * the state once and writes the parameter and the state once; the Lua side
 * calls it once per parameter tensor.  The loop is split into fixed-size
 * blocks that the thread pool spreads over cores; every element's update is
 * independent of the others, so the split cannot change the result. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adam_kernel.h"
#include "internal.h"
#include "cpu.h"
#include "parallel.h"

/* Elements per parallel task: large enough that dispatch costs nothing
   next to the arithmetic, small enough that a 100k-element layer splits. */
#define OPTIM_BLOCK 16384

/* ---- argument checks --------------------------------------------------------- */

static bool same_shape(const mm_tensor *a, const mm_tensor *b) {
  return a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim);
}

/* t must match the parameter's dtype and shape (and be contiguous when
   it is a state buffer the kernel writes directly). */
static int check_like_param(const char *op, const char *what, const mm_tensor *param,
                            const mm_tensor *t, bool need_contiguous) {
  char b1[160], b2[160];
  if (!t) {
    mm_set_error("%s: expected a %s tensor, got nothing", op, what);
    return -1;
  }
  if (t->dtype != param->dtype) {
    mm_set_error("%s: expected %s to have the parameter's dtype %s, got %s", op, what,
                 mm_dtype_name(param->dtype), mm_dtype_name(t->dtype));
    return -1;
  }
  if (!same_shape(t, param)) {
    mm_set_error("%s: expected %s of the parameter's shape %s, got %s", op, what,
                 mm_shape_str(param->ndim, param->shape, b1, sizeof b1),
                 mm_shape_str(t->ndim, t->shape, b2, sizeof b2));
    return -1;
  }
  if (need_contiguous && !mm_is_contiguous(t)) {
    mm_set_error("%s: expected a contiguous %s buffer (allocate it with zeros_like), got "
                 "shape %s with non-contiguous strides", op, what,
                 mm_shape_str(t->ndim, t->shape, b1, sizeof b1));
    return -1;
  }
  return 0;
}

static int check_param(const char *op, const mm_tensor *param) {
  if (!param) {
    mm_set_error("%s: expected a parameter tensor, got nothing", op);
    return -1;
  }
  if (!mm_dtype_is_float(param->dtype)) {
    mm_set_error("%s: expected a float32 or float64 parameter, got %s", op,
                 mm_dtype_name(param->dtype));
    return -1;
  }
  return 0;
}

/* The kernels work on contiguous memory.  A gradient or parameter that is
 * a strided view is copied first; grad mode is off so the copy is never
 * recorded, whatever the caller's mode. */

/* Runs body over [0, n) in blocks on the pool. */
typedef struct {
  void (*body)(void *ctx, int64_t begin, int64_t end);
  void *ctx;
  int64_t n;
} blocked_job;

static void run_blocks(void *ctx, int64_t b, int64_t e) {
  blocked_job *j = ctx;
  int64_t begin = b * OPTIM_BLOCK, end = e * OPTIM_BLOCK;
  if (end > j->n) end = j->n;
  j->body(j->ctx, begin, end);
}

static void parallel_elements(int64_t n, void (*body)(void *, int64_t, int64_t), void *ctx) {
  if (n <= 0) return;
  blocked_job j = {body, ctx, n};
  mm_parallel_for((n + OPTIM_BLOCK - 1) / OPTIM_BLOCK, run_blocks, &j);
}

/* Wraps a kernel call: makes param and grad contiguous if they are not,
 * runs `apply` on the contiguous parameter, writes a copied parameter back,
 * and bumps the versions of everything written. */
typedef void (*apply_fn)(mm_tensor *p, mm_tensor *g, void *ctx);

static int with_contiguous(mm_tensor *param, mm_tensor *grad, apply_fn apply, void *ctx) {
  mm_tensor *g = mm_raw_contiguous(grad);
  if (!g) return -1;
  mm_tensor *p = mm_is_contiguous(param) ? param : mm_raw_contiguous(param);
  if (!p) { mm_tensor_release(g); return -1; }
  apply(p, g, ctx);
  int rc = 0;
  if (p != param) {
    rc = mm_raw_copy_into(param, p, "optimizer step");   /* the optimizer writes its leaf */
    if (rc == 0) mm_bump_version(param);
    mm_tensor_release(p);
  } else {
    mm_bump_version(param);
  }
  mm_tensor_release(g);
  return rc;
}

/* ---- SGD ----------------------------------------------------------------------- */

typedef struct {
  void *p;
  const void *g;
  void *buf;
  const mm_sgd_opts *o;
} sgd_ctx;

/* p (param, g) : (N) contiguous; buf (N) or NULL */
#define SGD_BODY(NAME, T)                                                          \
  static void NAME(void *vctx, int64_t begin, int64_t end) {                       \
    const sgd_ctx *c = vctx;                                                       \
    T *p = c->p, *buf = c->buf;                                                    \
    const T *gr = c->g;                                                            \
    const T lr = (T)c->o->lr, wd = (T)c->o->weight_decay, mom = (T)c->o->momentum; \
    const T keep = (T)(1 - c->o->dampening);                                       \
    const bool first = c->o->first_step, nesterov = c->o->nesterov;               \
    const bool decay = c->o->weight_decay != 0, has_mom = c->o->momentum != 0;     \
    for (int64_t i = begin; i < end; i++) {                                        \
      T g = gr[i];                                                                 \
      if (decay) g += wd * p[i];                                                   \
      if (has_mom) {                                                               \
        T b = first ? g : mom * buf[i] + keep * g;                                 \
        buf[i] = b;                                                                \
        g = nesterov ? g + mom * b : b;                                            \
      }                                                                            \
      p[i] -= lr * g;                                                              \
    }                                                                              \
  }
SGD_BODY(sgd_f32, float)
SGD_BODY(sgd_f64, double)

static void sgd_apply(mm_tensor *p, mm_tensor *g, void *vctx) {
  sgd_ctx *c = vctx;
  c->p = mm_data_ptr(p);
  c->g = mm_data_ptr(g);
  parallel_elements(mm_numel(p), p->dtype == MM_FLOAT32 ? sgd_f32 : sgd_f64, c);
}

int mm_sgd_step(mm_tensor *param, mm_tensor *grad, mm_tensor *momentum_buf,
                const mm_sgd_opts *o) {
  const char *op = "sgd_step";
  if (check_param(op, param) < 0 || check_like_param(op, "grad", param, grad, false) < 0)
    return -1;
  if (o->momentum != 0 && check_like_param(op, "momentum", param, momentum_buf, true) < 0)
    return -1;
  if (o->nesterov && (o->momentum <= 0 || o->dampening != 0)) {
    mm_set_error("%s: Nesterov momentum expects momentum > 0 and dampening = 0, got "
                 "momentum %g and dampening %g", op, o->momentum, o->dampening);
    return -1;
  }
  sgd_ctx c = {NULL, NULL, o->momentum != 0 ? mm_data_ptr(momentum_buf) : NULL, o};
  if (with_contiguous(param, grad, sgd_apply, &c) < 0) return -1;
  if (o->momentum != 0) mm_bump_version(momentum_buf);
  return 0;
}

/* ---- Adam / AdamW ---------------------------------------------------------------- */

typedef struct {
  void *p;
  const void *g;
  void *m, *v, *vmax;
  double step_size;   /* lr / (1 - beta1^step) */
  double bc2_sqrt;    /* sqrt(1 - beta2^step) */
  double decay;       /* AdamW: 1 - lr * weight_decay */
  const mm_adam_opts *o;
} adam_ctx;

/* p, g, m, v, vmax: (N) contiguous */
#define ADAM_BODY(NAME, T)                                                          \
  static void NAME(void *vctx, int64_t begin, int64_t end) {                        \
    const adam_ctx *c = vctx;                                                       \
    T *p = c->p, *m = c->m, *v = c->v, *vmax = c->vmax;                             \
    const T *gr = c->g;                                                             \
    const T b1 = (T)c->o->beta1, b2 = (T)c->o->beta2, eps = (T)c->o->eps;           \
    const T one_b1 = (T)(1 - c->o->beta1), one_b2 = (T)(1 - c->o->beta2);           \
    const T wd = (T)c->o->weight_decay, decay = (T)c->decay;                        \
    const T step_size = (T)c->step_size, bc2_sqrt = (T)c->bc2_sqrt;                 \
    const bool l2 = !c->o->decoupled && c->o->weight_decay != 0;                    \
    const bool decoupled = c->o->decoupled && c->o->weight_decay != 0;              \
    for (int64_t i = begin; i < end; i++) {                                         \
      T pi = p[i], g = gr[i];                                                       \
      if (l2) g += wd * pi;                                                         \
      if (decoupled) pi *= decay;                                                   \
      T mi = b1 * m[i] + one_b1 * g;                                                \
      T vi = b2 * v[i] + one_b2 * g * g;                                            \
      m[i] = mi;                                                                    \
      v[i] = vi;                                                                    \
      if (vmax) {                                                                   \
        /* NaN in v propagates into vmax, as torch.maximum does */                  \
        vi = vmax[i] >= vi ? vmax[i] : vi;                                          \
        vmax[i] = vi;                                                               \
      }                                                                             \
      p[i] = pi - step_size * mi / (sqrt(vi) / bc2_sqrt + eps);                     \
    }                                                                               \
  }
ADAM_BODY(adam_f32, float)
ADAM_BODY(adam_f64, double)

/* float32 without AMSGrad — every training run's case — goes through the
 * float-only loop of adam_kernel.h (AVX2 when the CPU has it): the generic
 * body above takes a double sqrt and division per element, which cost as
 * much as all of an MLP's matmuls together.  The fast loop computes in
 * float32 throughout, as PyTorch does. */
static void adam_fast_portable(void *a, int64_t b, int64_t e) { mm_adam_f32_body(a, b, e); }
static void adam_fast_avx2(void *a, int64_t b, int64_t e) { mm_adam_f32_avx2(a, b, e); }

static void adam_apply(mm_tensor *p, mm_tensor *g, void *vctx) {
  adam_ctx *c = vctx;
  c->p = mm_data_ptr(p);
  c->g = mm_data_ptr(g);
  if (p->dtype == MM_FLOAT32 && !c->vmax) {
    const mm_adam_opts *o = c->o;
    mm_adam_f32_args a = {
      .p = c->p, .g = c->g, .m = c->m, .v = c->v,
      .b1 = (float)o->beta1, .b2 = (float)o->beta2,
      .one_b1 = (float)(1 - o->beta1), .one_b2 = (float)(1 - o->beta2),
      .wd = (float)o->weight_decay, .l2 = !o->decoupled && o->weight_decay != 0,
      .decay = o->decoupled && o->weight_decay != 0 ? (float)c->decay : 1.0f,
      .step_size = (float)c->step_size, .inv_bc2 = (float)(1 / c->bc2_sqrt), .eps = (float)o->eps,
    };
    parallel_elements(mm_numel(p), mm_kernel_id() >= MM_KERNEL_AVX2 ? adam_fast_avx2
                                                                    : adam_fast_portable, &a);
    return;
  }
  parallel_elements(mm_numel(p), p->dtype == MM_FLOAT32 ? adam_f32 : adam_f64, c);
}

/* The checks of one Adam step; what prefixes messages about the i-th
 * parameter of a multi-tensor step ("" for a single step). */
static int adam_check(const char *op, const char *what, mm_tensor *param, mm_tensor *grad,
                      mm_tensor *exp_avg, mm_tensor *exp_avg_sq, mm_tensor *max_sq,
                      const mm_adam_opts *o, int64_t step) {
  char where[96];
  snprintf(where, sizeof where, "%s%s", op, what);
  if (check_param(where, param) < 0 || check_like_param(where, "grad", param, grad, false) < 0 ||
      check_like_param(where, "exp_avg", param, exp_avg, true) < 0 ||
      check_like_param(where, "exp_avg_sq", param, exp_avg_sq, true) < 0)
    return -1;
  if (o->amsgrad && check_like_param(where, "max_exp_avg_sq", param, max_sq, true) < 0) return -1;
  if (step < 1) {
    mm_set_error("%s: expected a step count >= 1 (bias correction divides by 1 - beta^step), "
                 "got %lld", where, (long long)step);
    return -1;
  }
  if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1)) {
    mm_set_error("%s: expected betas in [0, 1), got (%g, %g)", where, o->beta1, o->beta2);
    return -1;
  }
  return 0;
}

static adam_ctx adam_context(mm_tensor *exp_avg, mm_tensor *exp_avg_sq, mm_tensor *max_sq,
                             const mm_adam_opts *o, int64_t step) {
  return (adam_ctx){
    .m = mm_data_ptr(exp_avg), .v = mm_data_ptr(exp_avg_sq),
    .vmax = o->amsgrad ? mm_data_ptr(max_sq) : NULL,
    .step_size = o->lr / (1 - pow(o->beta1, (double)step)),
    .bc2_sqrt = sqrt(1 - pow(o->beta2, (double)step)),
    .decay = 1 - o->lr * o->weight_decay,
    .o = o,
  };
}

static void adam_bump(mm_tensor *exp_avg, mm_tensor *exp_avg_sq, mm_tensor *max_sq, bool amsgrad) {
  mm_bump_version(exp_avg);
  mm_bump_version(exp_avg_sq);
  if (amsgrad) mm_bump_version(max_sq);
}

int mm_adam_step(mm_tensor *param, mm_tensor *grad, mm_tensor *exp_avg, mm_tensor *exp_avg_sq,
                 mm_tensor *max_sq, const mm_adam_opts *o) {
  const char *op = o->decoupled ? "adamw_step" : "adam_step";
  if (adam_check(op, "", param, grad, exp_avg, exp_avg_sq, max_sq, o, o->step) < 0) return -1;
  adam_ctx c = adam_context(exp_avg, exp_avg_sq, max_sq, o, o->step);
  if (with_contiguous(param, grad, adam_apply, &c) < 0) return -1;
  adam_bump(exp_avg, exp_avg_sq, max_sq, o->amsgrad);
  return 0;
}

/* ---- Adam over many parameters in one pool loop ---------------------------------
 *
 * A model's parameters are a handful of tensors of very different sizes (an
 * MLP: 200k, 33k, 1.3k weights and biases of a few hundred).  Stepping them
 * one by one costs a pool dispatch per tensor and leaves a core idle on
 * every small one; here the float32 ones are cut into blocks of one list and
 * claimed by the pool together.  Each element still sees exactly
 * mm_adam_f32_body's operations, so the result is the one-by-one result, bit
 * for bit, at any thread count. */
#define ADAM_MULTI_BLOCK 8192

typedef struct { int32_t seg; int64_t begin, end; } adam_task;
typedef struct {
  const mm_adam_f32_args *segs;
  const adam_task *tasks;
  void (*kernel)(const mm_adam_f32_args *, int64_t, int64_t);
} adam_multi_job;

static void adam_multi_run(void *ctx, int64_t b, int64_t e) {
  const adam_multi_job *j = ctx;
  for (int64_t t = b; t < e; t++) {
    const adam_task *k = &j->tasks[t];
    j->kernel(&j->segs[k->seg], k->begin, k->end);
  }
}

static void adam_portable_kernel(const mm_adam_f32_args *a, int64_t b, int64_t e) {
  mm_adam_f32_body(a, b, e);
}

typedef struct { uintptr_t lo, hi; } byte_range;

static int range_cmp(const void *x, const void *y) {
  const byte_range *a = x, *b = y;
  return a->lo < b->lo ? -1 : a->lo > b->lo;
}

/* Whether any two of the n ranges overlap. */
static bool any_overlap(byte_range *r, int64_t n) {
  qsort(r, (size_t)n, sizeof *r, range_cmp);
  for (int64_t i = 1; i < n; i++)
    if (r[i].lo < r[i - 1].hi) return true;
  return false;
}

int mm_adam_step_multi(int64_t n, const mm_adam_item *items, const mm_adam_opts *o) {
  const char *op = o->decoupled ? "adamw_step" : "adam_step";
  if (n < 0) {
    mm_set_error("%s: expected a parameter count >= 0, got %lld", op, (long long)n);
    return -1;
  }
  /* Every check first, so a bad item leaves every parameter untouched. */
  for (int64_t i = 0; i < n; i++) {
    const mm_adam_item *it = &items[i];
    char what[48];
    snprintf(what, sizeof what, " (parameter %lld)", (long long)(i + 1));
    if (adam_check(op, what, it->param, it->grad, it->exp_avg, it->exp_avg_sq, it->max_sq, o,
                   it->step) < 0)
      return -1;
  }
  /* The fused loop takes float32, contiguous parameter and gradient, no
   * AMSGrad: everything a training run has.  Anything else, and any set
   * whose written buffers overlap (where only one-by-one order defines the
   * result), goes through mm_adam_step one item at a time. */
  int64_t nfast = 0, ntasks = 0;
  bool *fast = calloc((size_t)(n ? n : 1), sizeof *fast);
  mm_adam_f32_args *segs = malloc((size_t)(n ? n : 1) * sizeof *segs);
  byte_range *ranges = malloc((size_t)(n ? n : 1) * 3 * sizeof *ranges);
  if (!fast || !segs || !ranges) {
    free(fast); free(segs); free(ranges);
    mm_set_error("%s: out of memory for %lld parameters", op, (long long)n);
    return -1;
  }
  for (int64_t i = 0; i < n; i++) {
    const mm_adam_item *it = &items[i];
    fast[i] = it->param->dtype == MM_FLOAT32 && !o->amsgrad && mm_is_contiguous(it->param) &&
              mm_is_contiguous(it->grad);
    if (!fast[i]) continue;
    int64_t len = mm_numel(it->param);
    uintptr_t p = (uintptr_t)mm_data_ptr(it->param), m = (uintptr_t)mm_data_ptr(it->exp_avg),
              v = (uintptr_t)mm_data_ptr(it->exp_avg_sq), bytes = (uintptr_t)len * sizeof(float);
    ranges[3 * nfast] = (byte_range){p, p + bytes};
    ranges[3 * nfast + 1] = (byte_range){m, m + bytes};
    ranges[3 * nfast + 2] = (byte_range){v, v + bytes};
    nfast++;
    ntasks += (len + ADAM_MULTI_BLOCK - 1) / ADAM_MULTI_BLOCK;
  }
  if (any_overlap(ranges, 3 * nfast)) {
    for (int64_t i = 0; i < n; i++) fast[i] = false;
    ntasks = 0;
  }
  free(ranges);
  adam_task *tasks = malloc((size_t)(ntasks ? ntasks : 1) * sizeof *tasks);
  if (!tasks) {
    free(fast); free(segs);
    mm_set_error("%s: out of memory for %lld parameters", op, (long long)n);
    return -1;
  }
  int64_t t = 0;
  int32_t nseg = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!fast[i]) continue;
    const mm_adam_item *it = &items[i];
    adam_ctx c = adam_context(it->exp_avg, it->exp_avg_sq, NULL, o, it->step);
    segs[nseg] = (mm_adam_f32_args){
      .p = mm_data_ptr(it->param), .g = mm_data_ptr(it->grad), .m = c.m, .v = c.v,
      .b1 = (float)o->beta1, .b2 = (float)o->beta2,
      .one_b1 = (float)(1 - o->beta1), .one_b2 = (float)(1 - o->beta2),
      .wd = (float)o->weight_decay, .l2 = !o->decoupled && o->weight_decay != 0,
      .decay = o->decoupled && o->weight_decay != 0 ? (float)c.decay : 1.0f,
      .step_size = (float)c.step_size, .inv_bc2 = (float)(1 / c.bc2_sqrt), .eps = (float)o->eps,
    };
    int64_t len = mm_numel(it->param);
    for (int64_t b = 0; b < len; b += ADAM_MULTI_BLOCK)
      tasks[t++] = (adam_task){nseg, b, b + ADAM_MULTI_BLOCK < len ? b + ADAM_MULTI_BLOCK : len};
    nseg++;
  }
  if (t > 0) {
    adam_multi_job j = {segs, tasks,
                        mm_kernel_id() >= MM_KERNEL_AVX2 ? mm_adam_f32_avx2 : adam_portable_kernel};
    mm_parallel_for_chunks(t, t, adam_multi_run, &j);   /* claimed one by one: sizes differ */
  }
  free(tasks);
  free(segs);
  int rc = 0;
  for (int64_t i = 0; i < n && rc == 0; i++) {
    const mm_adam_item *it = &items[i];
    if (fast[i]) {
      mm_bump_version(it->param);
      adam_bump(it->exp_avg, it->exp_avg_sq, NULL, false);
    } else {
      mm_adam_opts oi = *o;
      oi.step = it->step;
      rc = mm_adam_step(it->param, it->grad, it->exp_avg, it->exp_avg_sq, it->max_sq, &oi);
    }
  }
  free(fast);
  return rc;
}

/* ---- norms for gradient clipping ---------------------------------------------------- */

#define NORM_ACC(NAME, T)                                                  \
  static double NAME(const T *x, int64_t n, double p) {                    \
    double s = 0;                                                          \
    if (isinf(p)) {                                                        \
      for (int64_t i = 0; i < n; i++) {                                    \
        double a = fabs((double)x[i]);                                     \
        if (a > s || a != a) s = a;                                        \
        if (s != s) break;                                                 \
      }                                                                    \
    } else if (p == 2) {                                                   \
      for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];   \
    } else if (p == 1) {                                                   \
      for (int64_t i = 0; i < n; i++) s += fabs((double)x[i]);             \
    } else {                                                               \
      for (int64_t i = 0; i < n; i++) s += pow(fabs((double)x[i]), p);     \
    }                                                                      \
    return s;                                                              \
  }
NORM_ACC(norm_acc_f32, float)
NORM_ACC(norm_acc_f64, double)

int mm_norm_accumulate(mm_tensor *t, double p, double *out) {
  if (!mm_dtype_is_float(t->dtype)) {
    mm_set_error("norm_accumulate: expected a float32 or float64 tensor, got %s",
                 mm_dtype_name(t->dtype));
    return -1;
  }
  if (!(p > 0)) {
    mm_set_error("norm_accumulate: expected a norm order p > 0, got %g", p);
    return -1;
  }
  mm_tensor *c = mm_raw_contiguous(t);
  if (!c) return -1;
  int64_t n = mm_numel(c);
  *out = c->dtype == MM_FLOAT32 ? norm_acc_f32(mm_data_ptr(c), n, p)
                                : norm_acc_f64(mm_data_ptr(c), n, p);
  mm_tensor_release(c);
  return 0;
}
