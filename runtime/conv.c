/* conv.c — conv2d by im2col + GEMM, and 2-D max/avg pooling, each with its
 * backward next to its forward.
 *
 * Owns: the NCHW window geometry (output size, padded windows), the im2col /
 * col2im copies, and the batching of images into groups.
 *
 * Convolution works on a group of images at a time: im2col lays the group's
 * patches side by side as columns of one matrix col [C*kh*kw, images*Ho*Wo],
 * so the backward steps are one wide GEMM each, which blocks and threads
 * well even for few channels:
 *     forward   y_n = W col_n + b              (one GEMM per image, straight into y)
 *     dx        col = W^T buf                  (buf = the group's dy; col2im adds into dx)
 *     dW        dW += buf col^T                (groups in order: deterministic)
 * The group size depends only on the shapes (a memory budget), never on the
 * thread count, so results are the same on any number of threads.  The
 * copies (im2col, col2im, gathers) are split across threads by (image,
 * channel), each task writing its own part.  Pooling splits by (image,
 * channel) plane. */
#include <string.h>

#include "autograd.h"
#include "internal.h"
#include "gemm.h"
#include "iter.h"
#include "parallel.h"

/* ---- helpers ------------------------------------------------------------------ */


/* t in dtype dt, contiguous if asked; a new reference, copied (unrecorded)
 * only when needed. */
static mm_tensor *raw_as(mm_tensor *t, mm_dtype dt, bool contiguous) {
  if (t->dtype == dt && (!contiguous || mm_is_contiguous(t))) {
    mm_tensor_retain(t);
    return t;
  }
  if (t->dtype != dt) return mm_raw_cast(t, dt);   /* a fresh, contiguous copy */
  return mm_raw_clone(t);
}

/* ---- window geometry ------------------------------------------------------------ */

typedef struct {
  int64_t N, C, H, W;        /* input */
  int64_t O;                 /* output channels (conv); C for pooling */
  int64_t kh, kw, sh, sw, ph, pw;
  int64_t Ho, Wo;
} geom;

static int geom_init(geom *g, const mm_tensor *x, int64_t O, int64_t kh, int64_t kw,
                     const int64_t stride[2], const int64_t padding[2], const char *op) {
  char b1[160], b2[160];
  *g = (geom){.N = x->shape[0], .C = x->shape[1], .H = x->shape[2], .W = x->shape[3], .O = O,
              .kh = kh, .kw = kw, .sh = stride[0], .sw = stride[1], .ph = padding[0],
              .pw = padding[1]};
  if (kh < 1 || kw < 1) {
    mm_set_error("%s: expected a kernel of at least 1x1, got %lldx%lld", op, (long long)kh,
                 (long long)kw);
    return -1;
  }
  if (g->sh < 1 || g->sw < 1) {
    mm_set_error("%s: expected strides >= 1, got (%lld, %lld)", op, (long long)g->sh,
                 (long long)g->sw);
    return -1;
  }
  if (g->ph < 0 || g->pw < 0) {
    mm_set_error("%s: expected paddings >= 0, got (%lld, %lld)", op, (long long)g->ph,
                 (long long)g->pw);
    return -1;
  }
  /* Paddings come from the user: the padded sizes and every product the
   * kernels form from them (output plane, one image's columns) must fit,
   * so they are computed checked once here; conv_geom_of and the kernels
   * then recompute nothing larger. */
  int64_t Hp, Wp, P, per;
  if (!mm_mul_ok(2, g->ph, &Hp) || !mm_add_ok(Hp, g->H, &Hp) || !mm_mul_ok(2, g->pw, &Wp) ||
      !mm_add_ok(Wp, g->W, &Wp)) {
    mm_set_error("%s: padding (%lld, %lld) is too large for input shape %s", op,
                 (long long)g->ph, (long long)g->pw,
                 mm_shape_str(x->ndim, x->shape, b1, sizeof b1));
    return -1;
  }
  if (Hp < kh || Wp < kw) {
    mm_set_error("%s: kernel %lldx%lld is larger than the padded input %lldx%lld (input shape "
                 "%s, padding (%lld, %lld))", op, (long long)kh, (long long)kw,
                 (long long)Hp, (long long)Wp,
                 mm_shape_str(x->ndim, x->shape, b1, sizeof b1), (long long)g->ph,
                 (long long)g->pw);
    return -1;
  }
  g->Ho = (Hp - kh) / g->sh + 1;
  g->Wo = (Wp - kw) / g->sw + 1;
  int64_t yshape[4] = {g->N, O, g->Ho, g->Wo}, y;
  if (!mm_mul_ok(g->Ho, g->Wo, &P) || !mm_mul_ok(g->C, kh, &per) || !mm_mul_ok(per, kw, &per) ||
      !mm_add_ok(per, O, &per) || !mm_mul_ok(per, P, &per) ||
      !mm_shape_numel(4, yshape, &y) || y > ((int64_t)1 << 50)) {
    mm_set_error("%s: output shape %s is too large (input shape %s, padding (%lld, %lld))", op,
                 mm_shape_str(4, yshape, b2, sizeof b2),
                 mm_shape_str(x->ndim, x->shape, b1, sizeof b1), (long long)g->ph,
                 (long long)g->pw);
    return -1;
  }
  return 0;
}

/* Output columns [*lo, *hi) whose kernel tap k lands inside the input
 * (0 <= o*stride - pad + k < size); the others read padding. */
static void valid_range(int64_t k, int64_t pad, int64_t stride, int64_t size, int64_t osize,
                        int64_t *lo, int64_t *hi) {
  int64_t first = pad - k <= 0 ? 0 : (pad - k + stride - 1) / stride;
  int64_t last = size - 1 + pad - k;   /* o*stride <= last */
  int64_t h = last < 0 ? 0 : last / stride + 1;
  if (h > osize) h = osize;
  if (first > h) first = h;
  *lo = first;
  *hi = h;
}

static int check_4d(const mm_tensor *t, const char *op, const char *what) {
  char b1[160];
  if (t->ndim == 4) return 0;
  mm_set_error("%s: expected a 4-D %s, got shape %s", op, what,
               mm_shape_str(t->ndim, t->shape, b1, sizeof b1));
  return -1;
}

static int check_float(const mm_tensor *t, const char *op, const char *what) {
  if (mm_dtype_is_float(t->dtype)) return 0;
  mm_set_error("%s: expected a float32 or float64 %s, got %s (convert with :float() or "
               ":double())", op, what, mm_dtype_name(t->dtype));
  return -1;
}

/* ---- conv2d kernels --------------------------------------------------------------- */

/* One group of images [n0, n0 + gn): the shared state of its parallel copies. */
typedef struct {
  geom g;
  mm_dtype dt;
  int64_t n0, gn, ld;        /* ld = gn*Ho*Wo, the row length of col and buf */
  char *col;                 /* [C*kh*kw, ld] */
  char *buf;                 /* [O, ld]: the group's output gradients (backward) */
  const char *x;             /* input read by im2col, strides xs */
  int64_t xs[4];
  char *dx;                  /* contiguous [N, C, H, W], col2im adds into it */
  const char *w;             /* weight as a contiguous matrix [O, C*kh*kw] */
  char *y;                   /* contiguous [N, O, Ho, Wo] */
  const char *bias;          /* [O] with stride bs, or NULL */
  int64_t bs;
  const char *gy;            /* output gradient, strides gs */
  int64_t gs[4];
  char *db;                  /* [O] */
} conv_job;

#define CONV_KERNELS(T)                                                                \
  /* Task (image gi of the group, channel c): its kh*kw rows of col. */               \
  static void im2col_##T(const conv_job *j, int64_t task) {                           \
    const geom *g = &j->g;                                                            \
    int64_t gi = task / g->C, c = task % g->C, P = g->Ho * g->Wo;                     \
    const T *x = (const T *)j->x + (j->n0 + gi) * j->xs[0] + c * j->xs[1];            \
    for (int64_t i = 0; i < g->kh; i++)                                               \
      for (int64_t k = 0; k < g->kw; k++) {                                           \
        T *dst = (T *)j->col + ((c * g->kh + i) * g->kw + k) * j->ld + gi * P;        \
        int64_t lo, hi;                                                               \
        valid_range(k, g->pw, g->sw, g->W, g->Wo, &lo, &hi);                          \
        for (int64_t oy = 0; oy < g->Ho; oy++) {                                      \
          T *d = dst + oy * g->Wo;                                                    \
          int64_t iy = oy * g->sh - g->ph + i;                                        \
          if (iy < 0 || iy >= g->H) {                                                 \
            for (int64_t ox = 0; ox < g->Wo; ox++) d[ox] = 0;                         \
            continue;                                                                 \
          }                                                                           \
          const T *src = x + iy * j->xs[2] + (k - g->pw) * j->xs[3];                  \
          int64_t step = g->sw * j->xs[3];                                            \
          for (int64_t ox = 0; ox < lo; ox++) d[ox] = 0;                              \
          if (step == 1)                                                              \
            for (int64_t ox = lo; ox < hi; ox++) d[ox] = src[ox];                     \
          else                                                                        \
            for (int64_t ox = lo; ox < hi; ox++) d[ox] = src[ox * step];              \
          for (int64_t ox = hi; ox < g->Wo; ox++) d[ox] = 0;                          \
        }                                                                             \
      }                                                                               \
  }                                                                                   \
  /* Task (gi, c): adds the columns back into the plane dx[n0 + gi, c]. */            \
  static void col2im_##T(const conv_job *j, int64_t task) {                           \
    const geom *g = &j->g;                                                            \
    int64_t gi = task / g->C, c = task % g->C, P = g->Ho * g->Wo;                     \
    T *dx = (T *)j->dx + ((j->n0 + gi) * g->C + c) * g->H * g->W;                     \
    for (int64_t i = 0; i < g->kh; i++)                                               \
      for (int64_t k = 0; k < g->kw; k++) {                                           \
        const T *src = (const T *)j->col + ((c * g->kh + i) * g->kw + k) * j->ld + gi * P; \
        int64_t lo, hi;                                                               \
        valid_range(k, g->pw, g->sw, g->W, g->Wo, &lo, &hi);                          \
        for (int64_t oy = 0; oy < g->Ho; oy++) {                                      \
          int64_t iy = oy * g->sh - g->ph + i;                                        \
          if (iy < 0 || iy >= g->H) continue;                                         \
          const T *s = src + oy * g->Wo;                                              \
          T *d = dx + iy * g->W + (k - g->pw);                                        \
          for (int64_t ox = lo; ox < hi; ox++) d[ox * g->sw] += s[ox];                \
        }                                                                             \
      }                                                                               \
  }                                                                                   \
  /* Task gi: y[n0 + gi] = W col_gi + bias; the bias is written first and the  \
     GEMM accumulates onto it, so y is written once. */                           \
  static void forward_image_##T(const conv_job *j, int64_t gi) {                      \
    const geom *g = &j->g;                                                            \
    int64_t P = g->Ho * g->Wo, CK = g->C * g->kh * g->kw;                             \
    T *y = (T *)j->y + (j->n0 + gi) * g->O * P;                                       \
    if (j->bias)                                                                      \
      for (int64_t o = 0; o < g->O; o++) {                                            \
        T b = ((const T *)j->bias)[o * j->bs];                                        \
        for (int64_t p = 0; p < P; p++) y[o * P + p] = b;                             \
      }                                                                               \
    mm_gemm_typed(j->dt, g->O, P, CK, j->w, CK, 1, (const T *)j->col + gi * P, j->ld, 1,      \
         j->bias ? 1.0 : 0.0, y, P, 1);                                               \
  }                                                                                   \
  /* Task (gi, o): dy[n0 + gi, o] into buf row o, the layout of the GEMMs. */         \
  static void gather_##T(const conv_job *j, int64_t task) {                           \
    const geom *g = &j->g;                                                            \
    int64_t gi = task / g->O, o = task % g->O, P = g->Ho * g->Wo;                     \
    T *dst = (T *)j->buf + o * j->ld + gi * P;                                        \
    const T *src = (const T *)j->gy + (j->n0 + gi) * j->gs[0] + o * j->gs[1];         \
    for (int64_t oy = 0; oy < g->Ho; oy++)                                            \
      for (int64_t ox = 0; ox < g->Wo; ox++)                                          \
        dst[oy * g->Wo + ox] = src[oy * j->gs[2] + ox * j->gs[3]];                    \
  }                                                                                   \
  /* Task o: the bias gradient, dy summed over images and pixels in order. */         \
  static void bias_grad_##T(const conv_job *j, int64_t o) {                           \
    const geom *g = &j->g;                                                            \
    double acc = 0;                                                                   \
    for (int64_t n = 0; n < g->N; n++) {                                              \
      const T *src = (const T *)j->gy + n * j->gs[0] + o * j->gs[1];                  \
      for (int64_t oy = 0; oy < g->Ho; oy++)                                          \
        for (int64_t ox = 0; ox < g->Wo; ox++) acc += src[oy * j->gs[2] + ox * j->gs[3]]; \
    }                                                                                 \
    ((T *)j->db)[o] = (T)acc;                                                         \
  }
CONV_KERNELS(float)
CONV_KERNELS(double)

#define CONV_TASK(NAME)                                                                \
  static void NAME##_task(void *ctx, int64_t begin, int64_t end) {                    \
    const conv_job *j = ctx;                                                          \
    for (int64_t t = begin; t < end; t++) {                                           \
      if (j->dt == MM_FLOAT32) NAME##_float(j, t);                                    \
      else NAME##_double(j, t);                                                       \
    }                                                                                 \
  }
CONV_TASK(im2col)
CONV_TASK(col2im)
CONV_TASK(forward_image)
CONV_TASK(gather)
CONV_TASK(bias_grad)

/* Below this many flops a GEMM runs on one thread (gemm.c's threshold), so
 * several of them are better run side by side. */
#define SMALL_GEMM_FLOPS 6.0e6

/* Images per group: as many as keep col and buf within this many elements
 * (8 MiB of float32), at least one.  A function of the shapes only. */
#define GROUP_BUDGET ((int64_t)1 << 21)

static int64_t group_size(const geom *g) {
  int64_t per = (g->C * g->kh * g->kw + g->O) * g->Ho * g->Wo;
  int64_t n = per > 0 ? GROUP_BUDGET / per : g->N;
  if (n > g->N) n = g->N;
  return n < 1 ? 1 : n;
}

/* The scratch matrices of a job: col [C*kh*kw, G*P] and, if buf is not
 * NULL, buf [O, G*P]. */
static int alloc_scratch(conv_job *j, mm_tensor **col, mm_tensor **buf) {
  const geom *g = &j->g;
  int64_t cols = group_size(g) * g->Ho * g->Wo;
  int64_t sc[2] = {g->C * g->kh * g->kw, cols}, sb[2] = {g->O, cols};
  if (!(*col = mm_tensor_empty(j->dt, 2, sc))) return -1;
  if (buf && !(*buf = mm_tensor_empty(j->dt, 2, sb))) return -1;
  j->col = mm_data_ptr(*col);
  if (buf) j->buf = mm_data_ptr(*buf);
  return 0;
}

static void set_strides(int64_t *dst, const mm_tensor *t) {
  for (int d = 0; d < 4; d++) dst[d] = t->stride[d];
}

/* ---- conv2d ------------------------------------------------------------------------ */

/* The node's arguments: what the input and weight shapes do not tell. */
typedef struct { int64_t sh, sw, ph, pw; } conv_args;

/* Rebuilds the geometry a conv2d node recorded. */
static void conv_geom_of(const mm_node *n, geom *g) {
  const int64_t *xs = n->edges[0].shape, *ws = n->edges[1].shape;
  *g = (geom){.N = xs[0], .C = xs[1], .H = xs[2], .W = xs[3], .O = ws[0], .kh = ws[2],
              .kw = ws[3]};
  const conv_args *a = mm_node_args(n);
  g->sh = a->sh, g->sw = a->sw, g->ph = a->ph, g->pw = a->pw;
  g->Ho = (g->H + 2 * g->ph - g->kh) / g->sh + 1;
  g->Wo = (g->W + 2 * g->pw - g->kw) / g->sw + 1;
}

static int conv2d_backward(mm_node *n, mm_tensor *gy, mm_tensor **gin) {
  mm_tensor *x = n->saved[0], *w = n->saved[1];
  conv_job j = {.dt = gy->dtype};
  conv_geom_of(n, &j.g);
  const geom *g = &j.g;
  bool need_x = n->edges[0].needs_grad, need_w = n->edges[1].needs_grad;
  bool need_b = n->ninputs > 2 && n->edges[2].needs_grad;
  int64_t CK = g->C * g->kh * g->kw, P = g->Ho * g->Wo;
  mm_tensor *col = NULL, *buf = NULL, *xo = NULL, *wo = NULL;
  int rc = -1;
  j.gy = mm_data_ptr(gy);
  set_strides(j.gs, gy);
  if (need_b) {
    if (!(gin[2] = mm_tensor_empty(j.dt, 1, &g->O))) goto out;
    j.db = mm_data_ptr(gin[2]);
    mm_parallel_for(g->O, bias_grad_task, &j);
  }
  if (need_x || need_w) {
    if (alloc_scratch(&j, &col, &buf) < 0) goto out;
    if (need_x) {
      if (!(wo = raw_as(w, j.dt, true)) || !(gin[0] = mm_tensor_zeros(j.dt, 4, x->shape)))
        goto out;
      j.dx = mm_data_ptr(gin[0]);
    }
    if (need_w) {
      if (!(xo = raw_as(x, j.dt, false)) || !(gin[1] = mm_tensor_zeros(j.dt, 4, w->shape)))
        goto out;
      j.x = mm_data_ptr(xo);
      set_strides(j.xs, xo);
    }
    int64_t G = group_size(g);
    for (j.n0 = 0; j.n0 < g->N; j.n0 += G) {
      j.gn = g->N - j.n0 < G ? g->N - j.n0 : G;
      j.ld = j.gn * P;
      mm_parallel_for(j.gn * g->O, gather_task, &j);
      if (need_x) {   /* col = W^T dy, then back to image positions */
        mm_gemm_typed(j.dt, CK, j.ld, g->O, mm_data_ptr(wo), 1, CK, j.buf, j.ld, 1, 0.0, j.col, j.ld, 1);
        mm_parallel_for(j.gn * g->C, col2im_task, &j);
      }
      if (need_w) {   /* dW += dy col^T, the groups in order */
        mm_parallel_for(j.gn * g->C, im2col_task, &j);
        mm_gemm_typed(j.dt, g->O, CK, j.ld, j.buf, j.ld, 1, j.col, 1, j.ld, 1.0, mm_data_ptr(gin[1]),
             CK, 1);
      }
    }
  }
  rc = 0;
out:
  mm_tensor_release(col), mm_tensor_release(buf), mm_tensor_release(xo), mm_tensor_release(wo);
  return rc;
}

mm_tensor *mm_conv2d(mm_tensor *x, mm_tensor *w, mm_tensor *b, const int64_t stride[2],
                     const int64_t padding[2]) {
  char b1[160], b2[160];
  const char *op = "conv2d";
  if (check_4d(x, op, "input [N, C, H, W]") < 0 ||
      check_4d(w, op, "weight [O, C, kh, kw]") < 0 || check_float(x, op, "input") < 0 ||
      check_float(w, op, "weight") < 0 ||
      (b && check_float(b, op, "bias") < 0))
    return NULL;
  if (x->shape[1] != w->shape[1]) {
    mm_set_error("conv2d: the input has %lld channels (shape %s) but the weight expects %lld "
                 "(shape %s)", (long long)x->shape[1], mm_shape_str(4, x->shape, b1, sizeof b1),
                 (long long)w->shape[1], mm_shape_str(4, w->shape, b2, sizeof b2));
    return NULL;
  }
  if (b && (b->ndim != 1 || b->shape[0] != w->shape[0])) {
    mm_set_error("conv2d: expected a bias of shape (%lld) for weight shape %s, got %s",
                 (long long)w->shape[0], mm_shape_str(4, w->shape, b1, sizeof b1),
                 mm_shape_str(b->ndim, b->shape, b2, sizeof b2));
    return NULL;
  }
  conv_job j = {.dt = mm_promote(x->dtype, w->dtype)};
  if (b) j.dt = mm_promote(j.dt, b->dtype);
  if (geom_init(&j.g, x, w->shape[0], w->shape[2], w->shape[3], stride, padding, op) < 0)
    return NULL;
  const geom *g = &j.g;
  int64_t CK = g->C * g->kh * g->kw;
  int64_t yshape[4] = {g->N, g->O, g->Ho, g->Wo};
  mm_tensor *xo = raw_as(x, j.dt, false), *wo = NULL, *bo = NULL, *col = NULL, *y = NULL;
  if (!xo || !(wo = raw_as(w, j.dt, true)) || (b && !(bo = raw_as(b, j.dt, false))) ||
      !(y = mm_tensor_empty(j.dt, 4, yshape)) || alloc_scratch(&j, &col, NULL) < 0)
    goto fail;
  j.x = mm_data_ptr(xo);
  j.w = mm_data_ptr(wo);
  set_strides(j.xs, xo);
  j.y = mm_data_ptr(y);
  if (bo) j.bias = mm_data_ptr(bo), j.bs = bo->stride[0];
  int64_t G = group_size(g);
  for (j.n0 = 0; j.n0 < g->N; j.n0 += G) {
    j.gn = g->N - j.n0 < G ? g->N - j.n0 : G;
    j.ld = j.gn * g->Ho * g->Wo;
    mm_parallel_for(j.gn * g->C, im2col_task, &j);
    /* Small products spread over threads one image each; large ones thread
       inside the GEMM.  Either way each image gets the same computation. */
    double flops = 2.0 * (double)g->O * (double)(g->Ho * g->Wo) * (double)CK;
    if (j.gn > 1 && flops < SMALL_GEMM_FLOPS)
      mm_parallel_for(j.gn, forward_image_task, &j);
    else
      forward_image_task(&j, 0, j.gn);
  }
  mm_tensor_release(xo), mm_tensor_release(wo), mm_tensor_release(bo), mm_tensor_release(col);

  static const mm_op_def CONV2D = {"conv2d", "Conv2dBackward", conv2d_backward};
  mm_tensor *in[3] = {x, w, b}, *saved[2] = {x, w};
  conv_args a = {g->sh, g->sw, g->ph, g->pw};
  return mm_record(y, &CONV2D, b ? 3 : 2, in, 2, saved, &a, sizeof a);
fail:
  mm_tensor_release(xo), mm_tensor_release(wo), mm_tensor_release(bo);
  mm_tensor_release(col), mm_tensor_release(y);
  return NULL;
}

/* ---- pooling ------------------------------------------------------------------------- */

typedef struct {
  geom g;
  mm_dtype dt;
  const char *x;             /* input, strides xs */
  int64_t xs[4];
  char *y;                   /* contiguous [N, C, Ho, Wo] */
  int64_t *idx;              /* max: the winner's flat index in its H*W plane, or NULL */
  const char *gy;            /* output gradient, strides gs */
  int64_t gs[4];
  char *dx;                  /* contiguous [N, C, H, W] */
} pool_job;

/* The window of output (oy, ox) clipped to the input: rows [*y0, *y1),
 * columns [*x0, *x1). */
static void window(const geom *g, int64_t oy, int64_t ox, int64_t *y0, int64_t *y1,
                   int64_t *x0, int64_t *x1) {
  int64_t ys = oy * g->sh - g->ph, xs = ox * g->sw - g->pw;
  *y0 = ys < 0 ? 0 : ys;
  *y1 = ys + g->kh > g->H ? g->H : ys + g->kh;
  *x0 = xs < 0 ? 0 : xs;
  *x1 = xs + g->kw > g->W ? g->W : xs + g->kw;
}

/* Each task is one (image, channel) plane. */
#define POOL_KERNELS(T)                                                                \
  static void max_pool_##T(const pool_job *j, int64_t plane) {                        \
    const geom *g = &j->g;                                                            \
    int64_t n = plane / g->C, c = plane % g->C, P = g->Ho * g->Wo;                    \
    const T *x = (const T *)j->x + n * j->xs[0] + c * j->xs[1];                       \
    T *y = (T *)j->y + plane * P;                                                     \
    for (int64_t oy = 0; oy < g->Ho; oy++)                                            \
      for (int64_t ox = 0; ox < g->Wo; ox++) {                                        \
        int64_t y0, y1, x0, x1, arg = -1;                                             \
        window(g, oy, ox, &y0, &y1, &x0, &x1);                                        \
        T best = 0;                                                                   \
        for (int64_t iy = y0; iy < y1; iy++)                                          \
          for (int64_t ix = x0; ix < x1; ix++) {                                      \
            T v = x[iy * j->xs[2] + ix * j->xs[3]];                                   \
            /* strict > keeps the first maximum; a NaN wins and stays */              \
            if (arg < 0 || v > best || (v != v && best == best)) {                    \
              best = v;                                                               \
              arg = iy * g->W + ix;                                                   \
            }                                                                         \
          }                                                                           \
        y[oy * g->Wo + ox] = best;                                                    \
        if (j->idx) j->idx[plane * P + oy * g->Wo + ox] = arg;                        \
      }                                                                               \
  }                                                                                   \
  static void max_pool_back_##T(const pool_job *j, int64_t plane) {                   \
    const geom *g = &j->g;                                                            \
    int64_t n = plane / g->C, c = plane % g->C, P = g->Ho * g->Wo;                    \
    const T *gy = (const T *)j->gy + n * j->gs[0] + c * j->gs[1];                     \
    T *dx = (T *)j->dx + plane * g->H * g->W;                                         \
    const int64_t *idx = j->idx + plane * P;                                          \
    for (int64_t oy = 0; oy < g->Ho; oy++)                                            \
      for (int64_t ox = 0; ox < g->Wo; ox++)                                          \
        dx[idx[oy * g->Wo + ox]] += gy[oy * j->gs[2] + ox * j->gs[3]];                \
  }                                                                                   \
  static void avg_pool_##T(const pool_job *j, int64_t plane) {                        \
    const geom *g = &j->g;                                                            \
    int64_t n = plane / g->C, c = plane % g->C, P = g->Ho * g->Wo;                    \
    const T *x = (const T *)j->x + n * j->xs[0] + c * j->xs[1];                       \
    T *y = (T *)j->y + plane * P;                                                     \
    double area = (double)(g->kh * g->kw);                                            \
    for (int64_t oy = 0; oy < g->Ho; oy++)                                            \
      for (int64_t ox = 0; ox < g->Wo; ox++) {                                        \
        int64_t y0, y1, x0, x1;                                                       \
        window(g, oy, ox, &y0, &y1, &x0, &x1);                                        \
        double s = 0;                                                                 \
        for (int64_t iy = y0; iy < y1; iy++)                                          \
          for (int64_t ix = x0; ix < x1; ix++) s += x[iy * j->xs[2] + ix * j->xs[3]]; \
        y[oy * g->Wo + ox] = (T)(s / area);                                           \
      }                                                                               \
  }                                                                                   \
  static void avg_pool_back_##T(const pool_job *j, int64_t plane) {                   \
    const geom *g = &j->g;                                                            \
    int64_t n = plane / g->C, c = plane % g->C;                                       \
    const T *gy = (const T *)j->gy + n * j->gs[0] + c * j->gs[1];                     \
    T *dx = (T *)j->dx + plane * g->H * g->W;                                         \
    T area = (T)(g->kh * g->kw);                                                      \
    for (int64_t oy = 0; oy < g->Ho; oy++)                                            \
      for (int64_t ox = 0; ox < g->Wo; ox++) {                                        \
        int64_t y0, y1, x0, x1;                                                       \
        window(g, oy, ox, &y0, &y1, &x0, &x1);                                        \
        T v = gy[oy * j->gs[2] + ox * j->gs[3]] / area;                               \
        for (int64_t iy = y0; iy < y1; iy++)                                          \
          for (int64_t ix = x0; ix < x1; ix++) dx[iy * g->W + ix] += v;               \
      }                                                                               \
  }
POOL_KERNELS(float)
POOL_KERNELS(double)

#define POOL_TASK(NAME)                                                                \
  static void NAME##_task(void *ctx, int64_t begin, int64_t end) {                    \
    const pool_job *j = ctx;                                                          \
    for (int64_t t = begin; t < end; t++) {                                           \
      if (j->dt == MM_FLOAT32) NAME##_float(j, t);                                    \
      else NAME##_double(j, t);                                                       \
    }                                                                                 \
  }
POOL_TASK(max_pool)
POOL_TASK(max_pool_back)
POOL_TASK(avg_pool)
POOL_TASK(avg_pool_back)

typedef struct { int64_t kh, kw, sh, sw, ph, pw; } pool_args;

static void pool_geom_of(const mm_node *n, geom *g) {
  const int64_t *xs = n->edges[0].shape;
  const pool_args *a = mm_node_args(n);
  *g = (geom){.N = xs[0], .C = xs[1], .H = xs[2], .W = xs[3], .O = xs[1], .kh = a->kh,
              .kw = a->kw, .sh = a->sh, .sw = a->sw, .ph = a->ph, .pw = a->pw};
  g->Ho = (g->H + 2 * g->ph - g->kh) / g->sh + 1;
  g->Wo = (g->W + 2 * g->pw - g->kw) / g->sw + 1;
}

/* max: the gradient goes to each window's winner (saved as idx);
 * avg: each window spreads its gradient evenly over its kh*kw cells. */
static int pool_backward(mm_node *n, mm_tensor *gy, mm_tensor **gin) {
  pool_job j = {.dt = gy->dtype, .gy = mm_data_ptr(gy)};
  pool_geom_of(n, &j.g);
  set_strides(j.gs, gy);
  if (!(gin[0] = mm_tensor_zeros(j.dt, 4, n->edges[0].shape))) return -1;
  j.dx = mm_data_ptr(gin[0]);
  if (n->saved[0]) {   /* max pooling saved the winners' positions */
    j.idx = mm_data_ptr(n->saved[0]);
    mm_parallel_for(j.g.N * j.g.C, max_pool_back_task, &j);
  } else {
    mm_parallel_for(j.g.N * j.g.C, avg_pool_back_task, &j);
  }
  return 0;
}

static mm_tensor *pool2d(mm_tensor *x, const int64_t kernel[2], const int64_t stride[2],
                         const int64_t padding[2], bool is_max) {
  const char *op = is_max ? "max_pool2d" : "avg_pool2d";
  if (check_4d(x, op, "input [N, C, H, W]") < 0 || check_float(x, op, "input") < 0) return NULL;
  pool_job j = {.dt = x->dtype};
  if (geom_init(&j.g, x, x->shape[1], kernel[0], kernel[1], stride, padding, op) < 0)
    return NULL;
  const geom *g = &j.g;
  /* Wider padding would allow windows made only of padding. */
  if (2 * g->ph > g->kh || 2 * g->pw > g->kw) {
    mm_set_error("%s: padding (%lld, %lld) must be at most half the kernel (%lld, %lld)", op,
                 (long long)g->ph, (long long)g->pw, (long long)g->kh, (long long)g->kw);
    return NULL;
  }
  int64_t yshape[4] = {g->N, g->C, g->Ho, g->Wo};
  mm_tensor *y = mm_tensor_empty(j.dt, 4, yshape), *idx = NULL;
  if (!y) return NULL;
  bool record = mm_needs_grad(1, &x);
  if (is_max && record && !(idx = mm_tensor_empty(MM_INT64, 4, yshape))) {
    mm_tensor_release(y);
    return NULL;
  }
  j.x = mm_data_ptr(x);
  set_strides(j.xs, x);
  j.y = mm_data_ptr(y);
  j.idx = idx ? mm_data_ptr(idx) : NULL;
  mm_parallel_for(g->N * g->C, is_max ? max_pool_task : avg_pool_task, &j);
  static const mm_op_def MAX_POOL = {"max_pool2d", "MaxPool2dBackward", pool_backward};
  static const mm_op_def AVG_POOL = {"avg_pool2d", "AvgPool2dBackward", pool_backward};
  pool_args a = {g->kh, g->kw, g->sh, g->sw, g->ph, g->pw};
  y = mm_record(y, is_max ? &MAX_POOL : &AVG_POOL, 1, &x, 1, &idx, &a, sizeof a);
  mm_tensor_release(idx);
  return y;
}

mm_tensor *mm_max_pool2d(mm_tensor *x, const int64_t kernel[2], const int64_t stride[2],
                         const int64_t padding[2]) {
  return pool2d(x, kernel, stride, padding, true);
}

mm_tensor *mm_avg_pool2d(mm_tensor *x, const int64_t kernel[2], const int64_t stride[2],
                         const int64_t padding[2]) {
  return pool2d(x, kernel, stride, padding, false);
}
