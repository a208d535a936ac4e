/* combine.h — combinators (cat, stack, split, chunk, pad), clamp and
 * leaky_relu (combine.c), and indexing by index tensors (index.c):
 * index_select, gather, scatter_add, embedding, one_hot.
 *
 * Conventions, as in the rest of the C API: dims are 0-based (negative
 * counts from the end), every returned tensor is a new reference, and a
 * failure returns NULL with a message in mm_error().  Float ops take
 * float32 or float64; cat/stack/split/pad/index_select/gather/scatter_add
 * also take int64 (without gradients).
 *
 * Index tensors are int64.  Functions that read them take `base`, the value
 * that names the first element: C callers pass 0, the Lua bindings pass 1.
 * Every index is checked against base..base+size-1 before any element is
 * read, so a bad index is an error naming it, never an out-of-bounds read.
 */
#ifndef MICROML_COMBINE_H
#define MICROML_COMBINE_H
#include "microml.h"

/* ---- combinators (combine.c) --------------------------------------------- */
/* Joins n tensors along an existing dim; all shapes agree except at dim.
   The result has the promoted dtype.  A 1-D tensor of shape (0) is skipped,
   as PyTorch does, so an empty accumulator can start a loop. */
mm_tensor *mm_cat(int n, mm_tensor *const *ts, int dim);
/* Joins n tensors of one shape along a new dim (0..ndim, or negative). */
mm_tensor *mm_stack(int n, mm_tensor *const *ts, int dim);

/* Narrow views of t along dim (they share t's storage and carry gradients).
   Each returns a malloc'd array of *count new references: release each,
   then free() the array.  NULL on error.
   split: pieces of split_size, the last one shorter if needed.
   split_sizes: n pieces of the given sizes, which must sum to the dim size.
   chunk: ceil(size / chunks)-sized pieces, so possibly fewer than chunks
   (as torch.chunk); an empty dim gives chunks empty pieces. */
mm_tensor **mm_split(mm_tensor *t, int64_t split_size, int dim, int64_t *count);
mm_tensor **mm_split_sizes(mm_tensor *t, int64_t n, const int64_t *sizes, int dim);
mm_tensor **mm_chunk(mm_tensor *t, int64_t chunks, int dim, int64_t *count);

/* Constant padding in torch.nn.functional.pad's order: pads holds npads
   (even, at most 2*ndim) amounts as (before, after) pairs, starting from the
   LAST dim and moving backwards.  Negative amounts crop. */
mm_tensor *mm_pad(mm_tensor *x, int npads, const int64_t *pads, double value);

/* ---- pointwise (combine.c) -------------------------------------------------- */
/* min(max(x, lo), hi); a NULL bound is absent (at least one is required).
   NaN inputs stay NaN.  Gradient 1 where lo <= x <= hi, else 0.  An int64
   tensor with a non-integral bound is promoted to float32. */
mm_tensor *mm_clamp(mm_tensor *x, const double *lo, const double *hi);
/* x for x > 0, slope * x otherwise. */
mm_tensor *mm_leaky_relu(mm_tensor *x, double slope);

/* ---- indexing (index.c) ------------------------------------------------------ */
/* Entries of x at positions idx (0-dim or 1-D int64) along dim:
   out has x's shape with size(dim) replaced by numel(idx). */
mm_tensor *mm_index_select(mm_tensor *x, int dim, mm_tensor *idx, int64_t base);

/* index_select(x_k, 0, idx) for n tensors of equal row counts, copied by
 * idle pool workers in the background (mm_parallel_background) while the
 * caller goes on.  mm_index_select_finish collects the results (new
 * references in out[0..n-1]) and frees g; mm_bg_gather_free abandons it.
 * A source written in place before finish is copied again at finish, so
 * the result is always the rows as they are then.  Sources that record a
 * graph (requires_grad) are gathered at once by mm_index_select. */
#define MM_BG_GATHER_MAX 8
typedef struct mm_bg_gather mm_bg_gather;
mm_bg_gather *mm_index_select_start(int n, mm_tensor *const *xs, mm_tensor *idx, int64_t base);
void mm_index_select_finish(mm_bg_gather *g, mm_tensor **out);
void mm_bg_gather_free(mm_bg_gather *g);
int mm_bg_gather_count(const mm_bg_gather *g);   /* n */
/* out[i] = x[i with i_dim replaced by idx[i]]; idx has x's ndim, and
   idx.size(d) <= x.size(d) for d != dim.  out has idx's shape. */
mm_tensor *mm_gather(mm_tensor *x, int dim, mm_tensor *idx, int64_t base);
/* Out of place: a copy of self with src[i] added at self[i with i_dim
   replaced by idx[i]], for every position i of idx.  self, idx and src have
   one ndim; idx.size(d) <= src.size(d), and <= self.size(d) for d != dim.
   src must have self's dtype.  Repeated indices accumulate. */
mm_tensor *mm_scatter_add(mm_tensor *self, int dim, mm_tensor *idx, mm_tensor *src,
                          int64_t base);
/* Rows of weight [V, D] picked by idx (int64, any shape): [..., D].  The
   backward adds each output row's gradient into its weight row, one pass. */
mm_tensor *mm_embedding(mm_tensor *weight, mm_tensor *idx, int64_t base);
/* int64 tensor of idx's shape + [num_classes], 1 at each index and 0
   elsewhere.  num_classes < 0 infers it from the largest index. */
mm_tensor *mm_one_hot(mm_tensor *idx, int64_t num_classes, int64_t base);

#endif
