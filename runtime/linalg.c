/* linalg.c — matmul (NumPy semantics, batched with broadcast batch dims) and
 * the fused linear layer, each with its backward next to its forward.
 *
 * Owns: bmm, the one batched-product routine both directions of matmul use;
 * the rules for when an operand can be handed to the GEMM in place (a unit
 * stride in one of its two matrix dims; transposes are swapped strides) and
 * when batch dims can be folded into one big GEMM instead of a loop of small
 * ones; the bias column sums of linear's backward.
 *
 * Nothing here records intermediate ops: operands are cast or copied with
 * raw (unrecorded) copies, and each public op records one node on its real
 * inputs.  Gradients of broadcast batch dims are summed inside bmm by letting
 * the GEMM accumulate (beta = 1) in a fixed order, so nothing of the
 * broadcast size is materialised and the result is independent of threads. */
#include <string.h>

#include "autograd.h"
#include "internal.h"
#include "gemm.h"
#include "iter.h"
#include "parallel.h"

/* ---- small helpers ------------------------------------------------------------ */


/* A contiguous copy in dtype dt.  Not recorded: the op that needs it records
 * itself on the original tensor. */
static mm_tensor *raw_copy(mm_tensor *t, mm_dtype dt) {
  return t->dtype == dt ? mm_raw_clone(t) : mm_raw_cast(t, dt);
}

static void contiguous_strides(int nd, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int d = nd - 1; d >= 0; d--) {
    stride[d] = s;
    s *= shape[d] > 0 ? shape[d] : 1;
  }
}

/* A contiguous tensor seen with another shape of the same size (no copy). */
static mm_tensor *reshaped(mm_tensor *t, int nd, const int64_t *shape) {
  int64_t st[MM_MAX_DIMS];
  contiguous_strides(nd, shape, st);
  return mm_tensor_view_of(t, nd, shape, st, t->offset);
}

static int64_t prod(int n, const int64_t *v) {
  int64_t p = 1;
  for (int i = 0; i < n; i++) p *= v[i];
  return p;
}

/* The GEMM reads a matrix in place when one dim has unit stride: packing
 * then streams along it.  With two large strides every element would be a
 * separate cache line, so such operands are copied first. */
static bool unit_stride_in_one_dim(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return rows <= 1 || cols <= 1 || rs == 1 || cs == 1;
}

static bool gemmable(const mm_tensor *t) {
  int n = t->ndim;
  return unit_stride_in_one_dim(t->shape[n - 2], t->shape[n - 1], t->stride[n - 2],
                                t->stride[n - 1]);
}

/* Whether dims shape[0..n) followed by an inner dim of size `inner` and
 * stride *s form one evenly strided run, i.e. can be read as a single dim of
 * size prod(shape) * inner.  On success *s is that dim's stride (it changes
 * only when inner is 1, whose stride is meaningless).  Size-1 dims never
 * break a run. */
static bool collapse(int n, const int64_t *shape, const int64_t *stride, int64_t inner,
                     int64_t *s) {
  int64_t st = *s, size = inner;
  for (int d = n - 1; d >= 0; d--) {
    if (shape[d] == 1) continue;
    if (size == 1) {
      st = stride[d];
      size = shape[d];
      continue;
    }
    if (stride[d] != st * size) return false;
    size *= shape[d];
  }
  *s = st;
  return true;
}

/* A tensor [..., cols] read as a matrix [rows, cols] with rows = the product
 * of the leading dims: what linear's GEMMs need. */
typedef struct {
  char *data;
  int64_t rows, cols, rs, cs;
} matrix;

/* Fills *m for t in dtype dt and returns the tensor it points into (a new
 * reference: t itself, or a contiguous copy when the leading dims do not
 * collapse or no dim has unit stride). */
static mm_tensor *as_rows(mm_tensor *t, mm_dtype dt, matrix *m) {
  mm_tensor *c = mm_raw_cast(t, dt);
  if (!c) return NULL;
  int nd = c->ndim;
  m->cols = c->shape[nd - 1];
  m->cs = c->stride[nd - 1];
  m->rows = prod(nd - 1, c->shape);
  m->rs = m->cols;
  if (!collapse(nd - 1, c->shape, c->stride, 1, &m->rs) ||
      !unit_stride_in_one_dim(m->rows, m->cols, m->rs, m->cs)) {
    mm_tensor *cc = raw_copy(c, dt);
    mm_tensor_release(c);
    if (!(c = cc)) return NULL;
    m->rs = m->cols;
    m->cs = 1;
  }
  m->data = mm_data_ptr(c);
  return c;
}

static bool check_float(const mm_tensor *a, const mm_tensor *b, const char *op) {
  if (mm_dtype_is_float(a->dtype) && (!b || mm_dtype_is_float(b->dtype))) return true;
  mm_set_error("%s: expected float32 or float64 tensors, got %s%s%s (convert with :float() or "
               ":double())", op, mm_dtype_name(a->dtype), b ? " and " : "",
               b ? mm_dtype_name(b->dtype) : "");
  return false;
}

/* ---- bmm: the batched product ---------------------------------------------------- */

typedef struct {
  mm_dtype dt;
  size_t esz;
  int nb;                                   /* batch dims of the iteration */
  int64_t fb[MM_MAX_DIMS];                  /* broadcast batch shape */
  int64_t sa[MM_MAX_DIMS], sb[MM_MAX_DIMS], sc[MM_MAX_DIMS]; /* batch strides, 0 = shared */
  int64_t M, N, K;
  const char *A, *B;
  char *C;
  int64_t rs_a, cs_a, rs_b, cs_b;
} bmm_job;

/* Element offsets of batch t (row-major over fb); *first says whether this
 * is the first batch that writes its C matrix (all summed-over indices 0). */
static void batch_offsets(const bmm_job *j, int64_t t, int64_t *oa, int64_t *ob, int64_t *oc,
                          bool *first) {
  *oa = *ob = *oc = 0;
  *first = true;
  for (int d = j->nb - 1; d >= 0; d--) {
    int64_t i = t % j->fb[d];
    t /= j->fb[d];
    *oa += i * j->sa[d];
    *ob += i * j->sb[d];
    *oc += i * j->sc[d];
    if (j->sc[d] == 0 && i != 0) *first = false;
  }
}

static void bmm_one(const bmm_job *j, int64_t t) {
  int64_t oa, ob, oc;
  bool first;
  batch_offsets(j, t, &oa, &ob, &oc, &first);
  mm_gemm_typed(j->dt, j->M, j->N, j->K, j->A + oa * (int64_t)j->esz, j->rs_a, j->cs_a,
       j->B + ob * (int64_t)j->esz, j->rs_b, j->cs_b, first ? 0.0 : 1.0,
       j->C + oc * (int64_t)j->esz, j->N, 1);
}

static void bmm_task(void *ctx, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; t++) bmm_one(ctx, t);
}

/* Below this many flops per matrix the GEMM stays on one thread, so a batch
 * of them is better spread over threads one matrix each (the GEMM's own
 * threading threshold). */
#define BMM_SMALL_FLOPS 6.0e6

/* C[obatch..., M, N] = A[..., M, K] B[..., K, N] over the broadcast batch
 * shape of A and B (the caller checked it exists).  obatch NULL: the full
 * broadcast batch shape.  Otherwise obatch must broadcast to it, and every
 * batch dim that is 1 in obatch but larger in the product is summed over:
 * that is how backward returns the gradient of a broadcast operand.  Not
 * recorded; A and B have the same float dtype. */
static mm_tensor *bmm(mm_tensor *a, mm_tensor *b, int onb, const int64_t *obatch) {
  bmm_job j = {.dt = a->dtype, .esz = mm_dtype_size(a->dtype)};
  int anb = a->ndim - 2, bnb = b->ndim - 2;
  j.M = a->shape[anb];
  j.K = a->shape[anb + 1];
  j.N = b->shape[bnb + 1];
  if (mm_broadcast_shapes(anb, a->shape, bnb, b->shape, &j.nb, j.fb) < 0) return NULL;
  if (!obatch) {
    onb = j.nb;
    obatch = j.fb;
  }
  int64_t oshape[MM_MAX_DIMS];
  memcpy(oshape, obatch, sizeof(int64_t) * (size_t)onb);
  oshape[onb] = j.M;
  oshape[onb + 1] = j.N;
  int64_t total = prod(j.nb, j.fb), ototal = prod(onb, obatch);
  if (total == 0 || j.M == 0 || j.N == 0) return mm_tensor_zeros(j.dt, onb + 2, oshape);

  mm_tensor *out = mm_tensor_empty(j.dt, onb + 2, oshape);
  mm_tensor *ca = out ? (gemmable(a) ? (mm_tensor_retain(a), a) : raw_copy(a, j.dt)) : NULL;
  mm_tensor *cb = ca ? (gemmable(b) ? (mm_tensor_retain(b), b) : raw_copy(b, j.dt)) : NULL;
  if (!cb) {
    mm_tensor_release(out), mm_tensor_release(ca);
    return NULL;
  }
  for (int d = 0; d < j.nb; d++) {
    int da = d - (j.nb - anb), db = d - (j.nb - bnb), dc = d - (j.nb - onb);
    j.sa[d] = da >= 0 && ca->shape[da] != 1 ? ca->stride[da] : 0;
    j.sb[d] = db >= 0 && cb->shape[db] != 1 ? cb->stride[db] : 0;
    j.sc[d] = dc >= 0 && obatch[dc] != 1 ? out->stride[dc] : 0;
  }
  j.A = mm_data_ptr(ca);
  j.B = mm_data_ptr(cb);
  j.C = mm_data_ptr(out);
  j.rs_a = ca->stride[anb];
  j.cs_a = ca->stride[anb + 1];
  j.rs_b = cb->stride[bnb];
  j.cs_b = cb->stride[bnb + 1];

  bool b_shared = true;
  for (int d = 0; d < j.nb; d++)
    if (j.fb[d] != 1 && j.sb[d] != 0) b_shared = false;
  int64_t rows_a = j.rs_a, rows_c = j.N, ks_a = j.cs_a, ks_b = j.rs_b;
  if (total > 1 && ototal == total && b_shared &&
      collapse(j.nb, j.fb, j.sa, j.M, &rows_a) && collapse(j.nb, j.fb, j.sc, j.M, &rows_c) &&
      rows_c == j.N && unit_stride_in_one_dim(total * j.M, j.K, rows_a, j.cs_a)) {
    /* One B for every batch and A's batches stacked evenly, e.g. [B,T,K] x [K,N]:
       a single tall GEMM, which blocks and threads far better than a loop. */
    mm_gemm_typed(j.dt, total * j.M, j.N, j.K, j.A, rows_a, j.cs_a, j.B, j.rs_b, j.cs_b, 0.0, j.C, j.N,
         1);
  } else if (total > 1 && ototal == 1 && collapse(j.nb, j.fb, j.sa, j.K, &ks_a) &&
             collapse(j.nb, j.fb, j.sb, j.K, &ks_b) &&
             unit_stride_in_one_dim(j.M, total * j.K, j.rs_a, ks_a) &&
             unit_stride_in_one_dim(total * j.K, j.N, ks_b, j.cs_b)) {
    /* Summing every batch into one matrix, e.g. the weight gradient of
       [B,T,K] x [K,N]: the sum over batches is one long contraction. */
    mm_gemm_typed(j.dt, j.M, j.N, total * j.K, j.A, j.rs_a, ks_a, j.B, ks_b, j.cs_b, 0.0, j.C, j.N, 1);
  } else if (ototal == total && total > 1 &&
             2.0 * (double)j.M * (double)j.N * (double)j.K < BMM_SMALL_FLOPS) {
    /* Independent small products: one per task.  Each GEMM runs the same
       single-threaded code whichever thread takes it. */
    mm_parallel_for(total, bmm_task, &j);
  } else {
    /* Large products thread inside the GEMM; summed-over batches must run
       in order so that the accumulation order is fixed. */
    for (int64_t t = 0; t < total; t++) bmm_one(&j, t);
  }
  mm_tensor_release(ca);
  mm_tensor_release(cb);
  return out;
}

/* A 2-D (or more) view of a matmul operand in dtype dt: a 1-D left operand
 * [K] is a row [1, K], a 1-D right operand a column [K, 1]. */
static mm_tensor *matmul_operand(mm_tensor *t, mm_dtype dt, bool left) {
  mm_tensor *c = mm_raw_cast(t, dt);
  if (!c || c->ndim >= 2) return c;
  int64_t shape[2], stride[2];
  shape[left ? 0 : 1] = 1;
  stride[left ? 0 : 1] = 0;
  shape[left ? 1 : 0] = c->shape[0];
  stride[left ? 1 : 0] = c->stride[0];
  mm_tensor *v = mm_tensor_view_of(c, 2, shape, stride, c->offset);
  mm_tensor_release(c);
  return v;
}

/* The same tensor with its last two dims swapped (a view). */
static mm_tensor *swap_last(mm_tensor *t) {
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  int n = t->ndim;
  memcpy(shape, t->shape, sizeof shape);
  memcpy(stride, t->stride, sizeof stride);
  shape[n - 2] = t->shape[n - 1], shape[n - 1] = t->shape[n - 2];
  stride[n - 2] = t->stride[n - 1], stride[n - 1] = t->stride[n - 2];
  return mm_tensor_view_of(t, n, shape, stride, t->offset);
}

/* ---- matmul ---------------------------------------------------------------------- */

/* C = A B:  dA = dC B^T,  dB = A^T dC, each summed down to its operand's own
 * batch shape inside bmm; a 1-D operand's inserted dim is dropped again. */
static int matmul_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *a = n->saved[0], *b = n->saved[1];
  mm_dtype dt = g->dtype;
  int rc = -1;
  mm_tensor *a2 = matmul_operand(a, dt, true), *b2 = matmul_operand(b, dt, false);
  mm_tensor *g2 = NULL, *t = NULL, *r = NULL;
  if (!a2 || !b2) goto out;
  /* g with the 1-D operands' dims put back: [batch..., M, N]. */
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  int nd = 0, k = 0;
  int nlead = g->ndim - (a->ndim >= 2) - (b->ndim >= 2);
  for (; k < nlead; k++, nd++) shape[nd] = g->shape[k], stride[nd] = g->stride[k];
  if (a->ndim >= 2) shape[nd] = g->shape[k], stride[nd++] = g->stride[k++];
  else shape[nd] = 1, stride[nd++] = 0;
  if (b->ndim >= 2) shape[nd] = g->shape[k], stride[nd++] = g->stride[k++];
  else shape[nd] = 1, stride[nd++] = 0;
  if (!(g2 = mm_tensor_view_of(g, nd, shape, stride, g->offset))) goto out;

  if (n->edges[0].needs_grad) {
    if (!(t = swap_last(b2)) || !(r = bmm(g2, t, a2->ndim - 2, a2->shape))) goto out;
    gin[0] = a->ndim == 1 ? reshaped(r, 1, a->shape) : (mm_tensor_retain(r), r);
    mm_tensor_release(t), mm_tensor_release(r);
    t = r = NULL;
    if (!gin[0]) goto out;
  }
  if (n->edges[1].needs_grad) {
    if (!(t = swap_last(a2)) || !(r = bmm(t, g2, b2->ndim - 2, b2->shape))) goto out;
    gin[1] = b->ndim == 1 ? reshaped(r, 1, b->shape) : (mm_tensor_retain(r), r);
    if (!gin[1]) goto out;
  }
  rc = 0;
out:
  mm_tensor_release(a2), mm_tensor_release(b2), mm_tensor_release(g2);
  mm_tensor_release(t), mm_tensor_release(r);
  return rc;
}

mm_tensor *mm_matmul(mm_tensor *a, mm_tensor *b) {
  char b1[160], b2[160];
  if (a->ndim == 0 || b->ndim == 0) {
    mm_set_error("matmul: both arguments need at least 1 dimension, got shapes %s and %s",
                 mm_shape_str(a->ndim, a->shape, b1, sizeof b1),
                 mm_shape_str(b->ndim, b->shape, b2, sizeof b2));
    return NULL;
  }
  if (!check_float(a, b, "matmul")) return NULL;
  int64_t ka = a->shape[a->ndim - 1], kb = b->shape[b->ndim >= 2 ? b->ndim - 2 : 0];
  if (ka != kb) {
    mm_set_error("matmul: shapes %s and %s do not fit: the first's last dim (%lld) must equal "
                 "the second's %s dim (%lld)",
                 mm_shape_str(a->ndim, a->shape, b1, sizeof b1),
                 mm_shape_str(b->ndim, b->shape, b2, sizeof b2), (long long)ka,
                 b->ndim >= 2 ? "second-to-last" : "only", (long long)kb);
    return NULL;
  }
  int anb = a->ndim > 2 ? a->ndim - 2 : 0, bnb = b->ndim > 2 ? b->ndim - 2 : 0;
  int nb = anb > bnb ? anb : bnb;
  for (int d = 0; d < nb; d++) {
    int da = d - (nb - anb), db = d - (nb - bnb);
    int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      mm_set_error("matmul: the batch dims of shapes %s and %s cannot broadcast (%lld vs %lld)",
                   mm_shape_str(a->ndim, a->shape, b1, sizeof b1),
                   mm_shape_str(b->ndim, b->shape, b2, sizeof b2), (long long)sa,
                   (long long)sb);
      return NULL;
    }
  }
  mm_dtype dt = mm_promote(a->dtype, b->dtype);
  mm_tensor *ma = matmul_operand(a, dt, true), *mb = ma ? matmul_operand(b, dt, false) : NULL;
  mm_tensor *c = mb ? bmm(ma, mb, 0, NULL) : NULL, *out = NULL;
  mm_tensor_release(ma), mm_tensor_release(mb);
  if (!c) return NULL;
  /* Drop the dims that 1-D operands gained. */
  int64_t shape[MM_MAX_DIMS];
  int nd = c->ndim - 2;
  memcpy(shape, c->shape, sizeof(int64_t) * (size_t)nd);
  if (a->ndim >= 2) shape[nd++] = c->shape[c->ndim - 2];
  if (b->ndim >= 2) shape[nd++] = c->shape[c->ndim - 1];
  out = nd == c->ndim ? (mm_tensor_retain(c), c) : reshaped(c, nd, shape);
  mm_tensor_release(c);
  if (!out) return NULL;

  static const mm_op_def MATMUL = {"matmul", "MatmulBackward", matmul_backward};
  mm_tensor *in[2] = {a, b};
  return mm_record(out, &MATMUL, 2, in, 2, in, NULL, 0);
}

/* ---- linear ---------------------------------------------------------------------- */

/* out[j] = sum over rows of g[:, j] for j in [c0, c1), summed in row order
 * (in double for float32), so a column's sum does not depend on which
 * columns share its task: the result is the same on any thread count. */
#define COLUMN_SUMS(T)                                                                \
  static void column_sums_##T(const matrix *g, T *out, int64_t c0, int64_t c1) {      \
    enum { BLOCK = 256 };                                                             \
    double acc[BLOCK];                                                                \
    for (int64_t j0 = c0; j0 < c1; j0 += BLOCK) {                                     \
      int64_t nj = c1 - j0 < BLOCK ? c1 - j0 : BLOCK;                                 \
      for (int64_t j = 0; j < nj; j++) acc[j] = 0;                                    \
      for (int64_t i = 0; i < g->rows; i++) {                                         \
        const T *row = (const T *)g->data + i * g->rs + j0 * g->cs;                   \
        if (g->cs == 1)                                                               \
          for (int64_t j = 0; j < nj; j++) acc[j] += row[j];                          \
        else                                                                          \
          for (int64_t j = 0; j < nj; j++) acc[j] += row[j * g->cs];                  \
      }                                                                               \
      for (int64_t j = 0; j < nj; j++) out[j0 + j] = (T)acc[j];                       \
    }                                                                                 \
  }
COLUMN_SUMS(float)
COLUMN_SUMS(double)

/* Every row of y [rows, n] (contiguous) set to the bias b [n]. */
#define FILL_ROWS(T)                                                                  \
  static void fill_rows_##T(T *y, int64_t rows, int64_t n, const T *b, int64_t bs) {  \
    /* a contiguous bias row copies as a block (the strided loop ran at one \
       element a cycle, ~2% of an MLP's training step) */                   \
    for (int64_t i = 0; i < rows; i++)                                                \
      if (bs == 1) memcpy(y + i * n, b, sizeof(T) * (size_t)n);                      \
      else for (int64_t j = 0; j < n; j++) y[i * n + j] = b[j * bs];                  \
  }
FILL_ROWS(float)
FILL_ROWS(double)

/* The three products of linear's backward as pool tasks.  With two
 * threads each GEMM used to run on both threads one after the other, and
 * the bias sums on the calling thread alone while the other core waited.
 * Now:
 *   - the bias sums are split by columns (a column's sum is one task's, in
 *     row order, so the split changes nothing);
 *   - dx and dw, when both are wanted and not large, run side by side, one
 *     GEMM per task (an MLP's hidden layer: 128x256x128 each), which saves
 *     the GEMMs' fork/joins and packing hand-offs.  Together with the column
 *     split and the ReLU and cross-entropy splits this took about 3% off the
 *     784-256-128-10 training epoch on 2 threads (medians of alternating
 *     runs on a noisy shared machine).  A GEMM called from inside a running
 *     loop runs on its task's thread, and mm_sgemm's result does not depend
 *     on the thread count, so neither does this.
 *   - A lone GEMM (no dx wanted: the first layer) keeps both threads,
 *     unless it is too small for mm_sgemm to thread anyway.
 * Tasks: [0, ngemm) GEMMs, then the bias column blocks. */
#define LINEAR_BIAS_COLS 64           /* columns per bias-sum task */
#define LINEAR_PAIR_MAX (1 << 25)     /* flops of dx + dw under which they run side by side */
#define LINEAR_SMALL (1 << 20)        /* flops under which mm_sgemm runs on one thread */

typedef struct {
  int64_t M, N, K;
  const void *A;
  int64_t rs_a, cs_a;
  const void *B;
  int64_t rs_b, cs_b;
  void *C;
  int64_t ldc;
} gemm_call;

typedef struct {
  mm_dtype dt;
  int ngemm;
  gemm_call gemm[2];
  const matrix *g;       /* bias sums of g's columns into db, or db NULL */
  void *db;
} linear_bw_job;

static void run_gemm(mm_dtype dt, const gemm_call *c) {
  mm_gemm_typed(dt, c->M, c->N, c->K, c->A, c->rs_a, c->cs_a, c->B, c->rs_b, c->cs_b, 0.0,
                c->C, c->ldc, 1);
}

static void linear_bw_task(void *ctx, int64_t t0, int64_t t1) {
  const linear_bw_job *j = ctx;
  for (int64_t t = t0; t < t1; t++) {
    if (t < j->ngemm) {
      run_gemm(j->dt, &j->gemm[t]);
      continue;
    }
    int64_t c0 = (t - j->ngemm) * LINEAR_BIAS_COLS, c1 = c0 + LINEAR_BIAS_COLS;
    if (c1 > j->g->cols) c1 = j->g->cols;
    if (j->dt == MM_FLOAT32) column_sums_float(j->g, j->db, c0, c1);
    else column_sums_double(j->g, j->db, c0, c1);
  }
}

/* y = x w^T + b:  dx = dy w,  dw = dy^T x (the leading dims of x and dy
 * flattened into rows),  db = column sums of dy. */
static int linear_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *x = n->saved[0], *w = n->saved[1];
  mm_dtype dt = g->dtype;
  matrix G, X;
  int rc = -1;
  mm_tensor *go = as_rows(g, dt, &G), *xo = NULL, *wo = NULL;
  if (!go) return -1;
  int64_t out_f = w->shape[0], in_f = w->shape[1];
  linear_bw_job job = {.dt = dt, .ngemm = 0, .g = &G, .db = NULL};
  double flops = 0;
  if (n->edges[0].needs_grad) {
    if (!(wo = mm_raw_cast(w, dt))) goto out;
    if (!gemmable(wo)) {
      mm_tensor *c = raw_copy(wo, dt);
      mm_tensor_release(wo);
      if (!(wo = c)) goto out;
    }
    if (!(gin[0] = mm_tensor_empty(dt, x->ndim, x->shape))) goto out;
    job.gemm[job.ngemm++] = (gemm_call){G.rows, in_f, out_f, G.data, G.rs, G.cs,
                                        mm_data_ptr(wo), wo->stride[0], wo->stride[1],
                                        mm_data_ptr(gin[0]), in_f};
    flops += 2.0 * (double)G.rows * (double)in_f * (double)out_f;
  }
  if (n->edges[1].needs_grad) {
    if (!(xo = as_rows(x, dt, &X))) goto out;
    if (!(gin[1] = mm_tensor_empty(dt, 2, w->shape))) goto out;
    job.gemm[job.ngemm++] = (gemm_call){out_f, in_f, G.rows, G.data, G.cs, G.rs, X.data, X.rs,
                                        X.cs, mm_data_ptr(gin[1]), in_f};
    flops += 2.0 * (double)G.rows * (double)in_f * (double)out_f;
  }
  int64_t nbias = 0;
  if (n->ninputs > 2 && n->edges[2].needs_grad) {
    if (!(gin[2] = mm_tensor_empty(dt, 1, &out_f))) goto out;
    job.db = mm_data_ptr(gin[2]);
    nbias = (out_f + LINEAR_BIAS_COLS - 1) / LINEAR_BIAS_COLS;
  }
  if ((job.ngemm == 2 && flops < LINEAR_PAIR_MAX) || flops < LINEAR_SMALL) {
    /* One loop for everything; with one thread the tasks run in order. */
    int64_t ntasks = job.ngemm + nbias;
    if (ntasks > 0) mm_parallel_for_chunks(ntasks, ntasks, linear_bw_task, &job);
  } else {
    for (int i = 0; i < job.ngemm; i++) run_gemm(dt, &job.gemm[i]);
    job.ngemm = 0;
    if (nbias > 0) mm_parallel_for_chunks(nbias, nbias, linear_bw_task, &job);
  }
  rc = 0;
out:
  mm_tensor_release(go), mm_tensor_release(xo), mm_tensor_release(wo);
  return rc;
}

mm_tensor *mm_linear(mm_tensor *x, mm_tensor *w, mm_tensor *b) {
  char b1[160], b2[160];
  if (w->ndim != 2) {
    mm_set_error("linear: expected a 2-D weight [out, in], got shape %s",
                 mm_shape_str(w->ndim, w->shape, b1, sizeof b1));
    return NULL;
  }
  if (x->ndim == 0) {
    mm_set_error("linear: expected an input [..., in] with at least 1 dimension, got a scalar");
    return NULL;
  }
  if (!check_float(x, w, "linear") || (b && !check_float(b, NULL, "linear (bias)")))
    return NULL;
  int64_t out_f = w->shape[0], in_f = w->shape[1];
  if (x->shape[x->ndim - 1] != in_f) {
    mm_set_error("linear: input shape %s does not fit weight shape %s (the input's last dim "
                 "must be the weight's in-features, %lld)",
                 mm_shape_str(x->ndim, x->shape, b1, sizeof b1),
                 mm_shape_str(2, w->shape, b2, sizeof b2), (long long)in_f);
    return NULL;
  }
  if (b && (b->ndim != 1 || b->shape[0] != out_f)) {
    mm_set_error("linear: expected a bias of shape (%lld) for weight shape %s, got %s",
                 (long long)out_f, mm_shape_str(2, w->shape, b1, sizeof b1),
                 mm_shape_str(b->ndim, b->shape, b2, sizeof b2));
    return NULL;
  }
  mm_dtype dt = mm_promote(x->dtype, w->dtype);
  if (b) dt = mm_promote(dt, b->dtype);

  matrix X;
  mm_tensor *xo = as_rows(x, dt, &X), *wo = NULL, *bo = NULL, *y = NULL;
  if (!xo || !(wo = mm_raw_cast(w, dt)) || (b && !(bo = mm_raw_cast(b, dt)))) goto fail;
  if (!gemmable(wo)) {
    mm_tensor *c = raw_copy(wo, dt);
    mm_tensor_release(wo);
    if (!(wo = c)) goto fail;
  }
  int64_t shape[MM_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[x->ndim - 1] = out_f;
  if (!(y = mm_tensor_empty(dt, x->ndim, shape))) goto fail;
  /* The bias goes in first and the GEMM accumulates onto it (beta = 1): no
     second pass over y. */
  if (bo) {
    if (dt == MM_FLOAT32)
      fill_rows_float(mm_data_ptr(y), X.rows, out_f, mm_data_ptr(bo), bo->stride[0]);
    else
      fill_rows_double(mm_data_ptr(y), X.rows, out_f, mm_data_ptr(bo), bo->stride[0]);
  }
  mm_gemm_typed(dt, X.rows, out_f, in_f, X.data, X.rs, X.cs, mm_data_ptr(wo), wo->stride[1],
       wo->stride[0], bo ? 1.0 : 0.0, mm_data_ptr(y), out_f, 1);
  mm_tensor_release(xo), mm_tensor_release(wo), mm_tensor_release(bo);

  static const mm_op_def LINEAR = {"linear", "LinearBackward", linear_backward};
  mm_tensor *in[3] = {x, w, b};
  return mm_record(y, &LINEAR, b ? 3 : 2, in, 2, in, NULL, 0);
fail:
  mm_tensor_release(xo), mm_tensor_release(wo), mm_tensor_release(bo), mm_tensor_release(y);
  return NULL;
}
