/* index.c — ops driven by int64 index tensors: index_select, gather,
 * scatter_add, embedding and one_hot, with their backward rules.
 *
 * Every index is validated against base..base+size-1 in a pass of its own
 * before any element is read, so a bad index is an error naming it and the
 * valid range, never a stray read.
 *
 * Two kernel shapes cover everything:
 *   - whole rows (index_select, embedding): the input viewed as
 *     [outer, size, inner] is copied or accumulated row by row;
 *   - element-wise along one dim (gather, scatter_add): a walk over the
 *     index tensor's positions, with a "positional" tensor addressed by the
 *     position itself and a "selected" tensor addressed by the position with
 *     its dim coordinate replaced by the index.
 * Accumulating kernels run each destination element's additions in index
 * order on one thread, so results never depend on the thread count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"
#include "parallel.h"

/* ---- checks ---------------------------------------------------------------------- */

int mm_index_check_dtype(const mm_tensor *idx, const char *op) {
  if (idx->dtype != MM_INT64) {
    mm_set_error("%s: expected int64 indices, got %s (convert with :long())", op,
                 mm_dtype_name(idx->dtype));
    return -1;
  }
  return 0;
}

/* Every index in base..base+size-1; `what` names the indexed dimension. */
static int check_range(const char *op, const int64_t *ix, int64_t n, int64_t size, int64_t base,
                       const char *what) {
  for (int64_t i = 0; i < n; i++) {
    int64_t v = ix[i];
    if (v < base || v - base >= size) {
      if (size == 0)
        mm_set_error("%s: index %lld is out of range for %s (no index is valid)", op,
                     (long long)v, what);
      else
        mm_set_error("%s: index %lld is out of range for %s (expected %lld..%lld)", op,
                     (long long)v, what, (long long)base, (long long)(base + size - 1));
      return -1;
    }
  }
  return 0;
}

/* Every index op's node: the dim indexed (-1 where there is none) and the
 * value that names the first element. */
typedef struct { int dim; int64_t base; } index_args;

/* The index tensor as a contiguous array, checked; NULL on error. */
mm_tensor *mm_index_checked(mm_tensor *idx, int64_t size, int64_t base, const char *op,
                                  const char *what) {
  mm_tensor *c = mm_raw_contiguous(idx);
  if (c && check_range(op, mm_data_ptr(c), mm_numel(c), size, base, what) < 0) {
    mm_tensor_release(c);
    return NULL;
  }
  return c;
}

static int64_t prod(const int64_t *shape, int from, int to) {
  int64_t p = 1;
  for (int d = from; d < to; d++) p *= shape[d];
  return p;
}

/* ---- row kernels: [outer, size, inner] ------------------------------------------ */

/* Below this many elements a kernel runs on the calling thread. */
#define PARALLEL_MIN_ELEMS (1 << 15)



/* dst[o, k, :] = src[o, ix[k], :] for output rows r = o*K + k in [r0, r1). */
void mm_index_rows_gather(void *vc, int64_t r0, int64_t r1) {
  const mm_index_rows *c = vc;
  size_t row = (size_t)c->inner * c->es;
  for (int64_t r = r0; r < r1; r++) {
    int64_t o = r / c->k, j = r % c->k;
    memcpy(c->dst + (size_t)r * row, c->src + (size_t)(o * c->size + c->ix[j] - c->base) * row, row);
  }
}

static void gather_rows(mm_index_rows *c, int64_t outer) {
  int64_t rows = outer * c->k;
  if (rows * c->inner < PARALLEL_MIN_ELEMS) mm_index_rows_gather(c, 0, rows);
  else mm_parallel_for(rows, mm_index_rows_gather, c);
}

/* dst[o, ix[k], :] += src[o, k, :] for destination rows t = o*S + s in
 * [t0, t1).  Each task owns its destination rows and scans the indices in
 * order, so sums do not depend on how the rows are split across threads. */
#define INDEX_ADD_TASK(SUF, T)                                                      \
  static void index_add_task_##SUF(const mm_index_rows *c, int64_t t0, int64_t t1) {     \
    const int64_t S = c->size, I = c->inner, K = c->k;                              \
    for (int64_t o = t0 / S; o * S < t1; o++) {                                     \
      int64_t lo = o * S < t0 ? t0 - o * S : 0, hi = t1 - o * S < S ? t1 - o * S : S; \
      T *d = (T *)c->dst + o * S * I;                                               \
      const T *s = (const T *)c->src + o * K * I;                                   \
      for (int64_t j = 0; j < K; j++) {                                             \
        int64_t r = c->ix[j] - c->base;                                             \
        if (r < lo || r >= hi) continue;                                            \
        T *dr = d + r * I;                                                          \
        const T *sr = s + j * I;                                                    \
        for (int64_t i = 0; i < I; i++) dr[i] += sr[i];                             \
      }                                                                             \
    }                                                                               \
  }
INDEX_ADD_TASK(f32, float)
INDEX_ADD_TASK(f64, double)

static void index_add_task(void *vc, int64_t t0, int64_t t1) {
  const mm_index_rows *c = vc;
  if (c->dt == MM_FLOAT32) index_add_task_f32(c, t0, t1);
  else index_add_task_f64(c, t0, t1);
}

static void index_add_rows(mm_index_rows *c, int64_t outer) {
  int64_t rows = outer * c->size;
  if (rows == 0) return;
  if (outer * c->k * c->inner < PARALLEL_MIN_ELEMS) index_add_task(c, 0, rows);
  else mm_parallel_for(rows, index_add_task, c);
}

/* g (contiguous [outer, K, inner]) added into a zero gradient of the input's
 * (outer, size, inner) shape at the saved indices. */
static mm_tensor *rows_backward(mm_tensor *g, const mm_edge *e, int dim, mm_tensor *idx,
                                int64_t base) {
  mm_tensor *gc = mm_raw_contiguous(g), *ic = mm_raw_contiguous(idx);
  mm_tensor *gx = gc && ic ? mm_tensor_zeros(g->dtype, e->ndim, e->shape) : NULL;
  if (gx) {
    mm_index_rows c = {mm_data_ptr(gx), mm_data_ptr(gc), e->shape[dim], prod(e->shape, dim + 1, e->ndim),
                  mm_numel(ic), mm_data_ptr(ic), base, mm_dtype_size(g->dtype), g->dtype};
    index_add_rows(&c, prod(e->shape, 0, dim));
  }
  mm_tensor_release(gc);
  mm_tensor_release(ic);
  return gx;
}

/* ---- index_select ------------------------------------------------------------------ */

static int index_select_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const index_args *a = mm_node_args(n);
  gin[0] = rows_backward(g, &n->edges[0], a->dim, n->saved[0], a->base);
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_index_select(mm_tensor *x, int dim, mm_tensor *idx, int64_t base) {
  char b[160], what[200];
  if (x->ndim == 0) {
    mm_set_error("index_select: expected a tensor with at least 1 dimension, got a "
                 "0-dimensional tensor");
    return NULL;
  }
  if ((dim = mm_wrap_dim(dim, x->ndim, "index_select")) < 0) return NULL;
  if (mm_index_check_dtype(idx, "index_select") < 0) return NULL;
  if (idx->ndim > 1) {
    mm_set_error("index_select: expected a 1-D index tensor, got shape %s",
                 mm_shape_str(idx->ndim, idx->shape, b, sizeof b));
    return NULL;
  }
  snprintf(what, sizeof what, "dimension %d of size %lld", dim + 1, (long long)x->shape[dim]);
  mm_tensor *ic = mm_index_checked(idx, x->shape[dim], base, "index_select", what);
  mm_tensor *xc = ic ? mm_raw_contiguous(x) : NULL;
  int64_t shape[MM_MAX_DIMS];
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[dim] = mm_numel(idx);
  mm_tensor *out = xc ? mm_tensor_empty(x->dtype, x->ndim, shape) : NULL;
  if (out) {
    mm_index_rows c = {mm_data_ptr(out), mm_data_ptr(xc), x->shape[dim], prod(x->shape, dim + 1, x->ndim),
                  shape[dim], mm_data_ptr(ic), base, mm_dtype_size(x->dtype), x->dtype};
    gather_rows(&c, prod(x->shape, 0, dim));
  }
  mm_tensor_release(ic);
  mm_tensor_release(xc);
  static const mm_op_def INDEX_SELECT = {"index_select", "IndexSelectBackward",
                                         index_select_backward};
  index_args a = {dim, base};
  return mm_record(out, &INDEX_SELECT, 1, &x, 1, &idx, &a, sizeof a);
}

/* ---- embedding ---------------------------------------------------------------------- */

static int embedding_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  gin[0] = rows_backward(g, &n->edges[0], 0, n->saved[0], ((const index_args *)mm_node_args(n))->base);
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_embedding(mm_tensor *weight, mm_tensor *idx, int64_t base) {
  char b[160], what[220];
  if (weight->ndim != 2) {
    mm_set_error("embedding: expected a 2-D weight [num_embeddings, dim], got shape %s",
                 mm_shape_str(weight->ndim, weight->shape, b, sizeof b));
    return NULL;
  }
  if (mm_index_check_dtype(idx, "embedding") < 0) return NULL;
  if (idx->ndim >= MM_MAX_DIMS) {
    mm_set_error("embedding: expected indices with at most %d dimensions, got %d",
                 MM_MAX_DIMS - 1, idx->ndim);
    return NULL;
  }
  int64_t V = weight->shape[0], D = weight->shape[1];
  snprintf(what, sizeof what, "a weight of %lld rows (shape %s)", (long long)V,
           mm_shape_str(2, weight->shape, b, sizeof b));
  mm_tensor *ic = mm_index_checked(idx, V, base, "embedding", what);
  mm_tensor *wc = ic ? mm_raw_contiguous(weight) : NULL;
  int64_t shape[MM_MAX_DIMS];
  memcpy(shape, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
  shape[idx->ndim] = D;
  mm_tensor *out = wc ? mm_tensor_empty(weight->dtype, idx->ndim + 1, shape) : NULL;
  if (out) {
    mm_index_rows c = {mm_data_ptr(out), mm_data_ptr(wc), V, D, mm_numel(ic), mm_data_ptr(ic), base,
                  mm_dtype_size(weight->dtype), weight->dtype};
    gather_rows(&c, 1);
  }
  mm_tensor_release(ic);
  mm_tensor_release(wc);
  static const mm_op_def EMBEDDING = {"embedding", "EmbeddingBackward", embedding_backward};
  index_args a = {0, base};
  return mm_record(out, &EMBEDDING, 1, &weight, 1, &idx, &a, sizeof a);
}

/* ---- element walks along one dim: gather / scatter_add -------------------------------- */

typedef struct {
  int ndim, dim;
  const int64_t *shape;         /* the index tensor's shape: the positions walked */
  const int64_t *ix;            /* contiguous indices, one per position */
  int64_t base;
  char *pos;                    /* addressed by the position */
  const int64_t *pos_st;        /* strides in elements */
  char *sel;                    /* addressed by the position with dim -> index */
  const int64_t *sel_st;
} walk;

/* Visits every position in row-major order with the element offsets of
 * pos and sel; ACTION uses `po` and `so`. */
#define WALK(w, ACTION)                                                              \
  do {                                                                               \
    int64_t n_ = prod((w)->shape, 0, (w)->ndim), at_[MM_MAX_DIMS] = {0};             \
    int64_t po = 0, base_so_ = 0;                                                    \
    for (int64_t p_ = 0; p_ < n_; p_++) {                                            \
      int64_t so = base_so_ + ((w)->ix[p_] - (w)->base) * (w)->sel_st[(w)->dim];     \
      ACTION;                                                                        \
      for (int d_ = (w)->ndim - 1; d_ >= 0; d_--) {                                  \
        int64_t ss_ = d_ == (w)->dim ? 0 : (w)->sel_st[d_];                          \
        po += (w)->pos_st[d_];                                                       \
        base_so_ += ss_;                                                             \
        if (++at_[d_] < (w)->shape[d_]) break;                                       \
        po -= (w)->pos_st[d_] * (w)->shape[d_];                                      \
        base_so_ -= ss_ * (w)->shape[d_];                                            \
        at_[d_] = 0;                                                                 \
      }                                                                              \
    }                                                                                \
  } while (0)

/* pos[i] = sel[i with dim -> ix[i]]: a copy, so only the element size matters. */
static void walk_gather(const walk *w, size_t es) {
  if (es == 4) WALK(w, ((uint32_t *)w->pos)[po] = ((const uint32_t *)w->sel)[so]);
  else WALK(w, ((uint64_t *)w->pos)[po] = ((const uint64_t *)w->sel)[so]);
}

/* sel[i with dim -> ix[i]] += pos[i], in position order (deterministic). */
static void walk_scatter_add(const walk *w, mm_dtype dt) {
  if (dt == MM_FLOAT32) WALK(w, ((float *)w->sel)[so] += ((const float *)w->pos)[po]);
  else if (dt == MM_FLOAT64) WALK(w, ((double *)w->sel)[so] += ((const double *)w->pos)[po]);
  else WALK(w, ((int64_t *)w->sel)[so] += ((const int64_t *)w->pos)[po]);
}

/* Checks shared by gather and scatter_add: x (the selected tensor) is at
 * least 1-D, idx is int64 with x's ndim and fits x outside dim. */
static int check_along_dim(const char *op, const mm_tensor *x, int *dim, const mm_tensor *idx) {
  char b1[160], b2[160];
  if (x->ndim == 0) {
    mm_set_error("%s: expected a tensor with at least 1 dimension, got a 0-dimensional tensor", op);
    return -1;
  }
  if ((*dim = mm_wrap_dim(*dim, x->ndim, op)) < 0) return -1;
  if (mm_index_check_dtype(idx, op) < 0) return -1;
  bool fits = idx->ndim == x->ndim;
  for (int d = 0; fits && d < x->ndim; d++) fits = d == *dim || idx->shape[d] <= x->shape[d];
  if (!fits) {
    mm_set_error("%s: expected an index with the input's %d dimensions and no larger than its "
                 "shape %s outside dimension %d, got index shape %s", op, x->ndim,
                 mm_shape_str(x->ndim, x->shape, b1, sizeof b1), *dim + 1,
                 mm_shape_str(idx->ndim, idx->shape, b2, sizeof b2));
    return -1;
  }
  return 0;
}

/* The gradient of gather: g added into zeros of x's shape at the indices. */
static int gather_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const mm_edge *e = &n->edges[0];
  mm_tensor *idx = n->saved[0], *ic = mm_raw_contiguous(idx);
  mm_tensor *gx = ic ? mm_tensor_zeros(g->dtype, e->ndim, e->shape) : NULL;
  if (gx) {
    const index_args *a = mm_node_args(n);
    walk w = {idx->ndim, a->dim, idx->shape, mm_data_ptr(ic), a->base,
              mm_data_ptr(g), g->stride, mm_data_ptr(gx), gx->stride};
    walk_scatter_add(&w, g->dtype);
  }
  mm_tensor_release(ic);
  gin[0] = gx;
  return gx ? 0 : -1;
}

mm_tensor *mm_gather(mm_tensor *x, int dim, mm_tensor *idx, int64_t base) {
  char what[200];
  if (check_along_dim("gather", x, &dim, idx) < 0) return NULL;
  snprintf(what, sizeof what, "dimension %d of size %lld", dim + 1, (long long)x->shape[dim]);
  mm_tensor *ic = mm_index_checked(idx, x->shape[dim], base, "gather", what);
  mm_tensor *out = ic ? mm_tensor_empty(x->dtype, idx->ndim, idx->shape) : NULL;
  if (out) {
    walk w = {idx->ndim, dim, idx->shape, mm_data_ptr(ic), base, mm_data_ptr(out), out->stride,
              mm_data_ptr(x), x->stride};
    walk_gather(&w, mm_dtype_size(x->dtype));
  }
  mm_tensor_release(ic);
  static const mm_op_def GATHER = {"gather", "GatherBackward", gather_backward};
  index_args a = {dim, base};
  return mm_record(out, &GATHER, 1, &x, 1, &idx, &a, sizeof a);
}

/* self's gradient passes through; src's is g gathered at the indices, in
 * the index-shaped corner of src (the rest of src was never read). */
static int scatter_add_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  if (n->edges[0].needs_grad) {
    mm_tensor_retain(g);
    gin[0] = g;
  }
  if (n->edges[1].needs_grad) {
    const mm_edge *e = &n->edges[1];
    mm_tensor *idx = n->saved[0], *ic = mm_raw_contiguous(idx);
    mm_tensor *gs = ic ? mm_tensor_zeros(g->dtype, e->ndim, e->shape) : NULL;
    if (gs) {
      const index_args *a = mm_node_args(n);
      walk w = {idx->ndim, a->dim, idx->shape, mm_data_ptr(ic), a->base,
                mm_data_ptr(gs), gs->stride, mm_data_ptr(g), g->stride};
      walk_gather(&w, mm_dtype_size(g->dtype));
    }
    mm_tensor_release(ic);
    if (!(gin[1] = gs)) return -1;
  }
  return 0;
}

mm_tensor *mm_scatter_add(mm_tensor *self, int dim, mm_tensor *idx, mm_tensor *src,
                          int64_t base) {
  char b1[160], b2[160], what[200];
  if (check_along_dim("scatter_add", self, &dim, idx) < 0) return NULL;
  if (src->dtype != self->dtype) {
    mm_set_error("scatter_add: expected src to have self's dtype %s, got %s",
                 mm_dtype_name(self->dtype), mm_dtype_name(src->dtype));
    return NULL;
  }
  bool fits = src->ndim == idx->ndim;
  for (int d = 0; fits && d < idx->ndim; d++) fits = idx->shape[d] <= src->shape[d];
  if (!fits) {
    mm_set_error("scatter_add: expected src to have the index's %d dimensions and be at least "
                 "as large as its shape %s, got src shape %s", idx->ndim,
                 mm_shape_str(idx->ndim, idx->shape, b1, sizeof b1),
                 mm_shape_str(src->ndim, src->shape, b2, sizeof b2));
    return NULL;
  }
  snprintf(what, sizeof what, "dimension %d of size %lld", dim + 1, (long long)self->shape[dim]);
  mm_tensor *ic = mm_index_checked(idx, self->shape[dim], base, "scatter_add", what);
  mm_tensor *out = ic ? mm_tensor_empty(self->dtype, self->ndim, self->shape) : NULL;
  if (out && mm_raw_copy_into(out, self, "scatter_add") < 0) { mm_tensor_release(out); out = NULL; }
  if (out) {
    walk w = {idx->ndim, dim, idx->shape, mm_data_ptr(ic), base, mm_data_ptr(src), src->stride,
              mm_data_ptr(out), out->stride};
    walk_scatter_add(&w, self->dtype);
  }
  mm_tensor_release(ic);
  static const mm_op_def SCATTER_ADD = {"scatter_add", "ScatterAddBackward", scatter_add_backward};
  mm_tensor *in[2] = {self, src};
  index_args a = {dim, base};
  return mm_record(out, &SCATTER_ADD, 2, in, 1, &idx, &a, sizeof a);
}

/* ---- one_hot ---------------------------------------------------------------------------- */

mm_tensor *mm_one_hot(mm_tensor *idx, int64_t num_classes, int64_t base) {
  char what[120];
  if (mm_index_check_dtype(idx, "one_hot") < 0) return NULL;
  if (idx->ndim >= MM_MAX_DIMS) {
    mm_set_error("one_hot: expected indices with at most %d dimensions, got %d", MM_MAX_DIMS - 1,
                 idx->ndim);
    return NULL;
  }
  mm_tensor *ic = mm_raw_contiguous(idx);
  if (!ic) return NULL;
  const int64_t *ix = mm_data_ptr(ic);
  int64_t n = mm_numel(ic);
  if (num_classes < 0) {
    if (n == 0) {
      mm_set_error("one_hot: cannot infer the number of classes from an empty index tensor; "
                   "pass num_classes");
      mm_tensor_release(ic);
      return NULL;
    }
    int64_t mx = ix[0];
    for (int64_t i = 1; i < n; i++) mx = ix[i] > mx ? ix[i] : mx;
    if (mx >= base && mx - base >= ((int64_t)1 << 40)) {   /* mx - base may overflow below base */
      mm_set_error("one_hot: the largest index %lld gives too many classes", (long long)mx);
      mm_tensor_release(ic);
      return NULL;
    }
    num_classes = mx >= base ? mx - base + 1 : 0;
  }
  snprintf(what, sizeof what, "%lld classes", (long long)num_classes);
  int64_t shape[MM_MAX_DIMS];
  memcpy(shape, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
  shape[idx->ndim] = num_classes;
  mm_tensor *out = check_range("one_hot", ix, n, num_classes, base, what) < 0
                       ? NULL : mm_tensor_zeros(MM_INT64, idx->ndim + 1, shape);
  if (out) {
    int64_t *o = mm_data_ptr(out);
    for (int64_t i = 0; i < n; i++) o[i * num_classes + ix[i] - base] = 1;
  }
  mm_tensor_release(ic);
  return out;
}
