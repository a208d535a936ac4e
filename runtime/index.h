/* index.h — indexing by int64 index tensors (index.c): index_select,
 * gather, scatter_add, embedding, one_hot; and the DataLoader's batch
 * prefetch (prefetch.c), an index_select run by idle pool workers.
 *
 * Conventions, as in the rest of the C API: dims are 0-based (negative
 * counts from the end), every returned tensor is a new reference, and a
 * failure returns NULL with a message in mm_error().  index_select, gather
 * and scatter_add also take int64 data (without gradients).
 *
 * Index tensors are int64.  Functions that read them take `base`, the value
 * that names the first element: C callers pass 0, the Lua bindings pass 1.
 * Every index is checked against base..base+size-1 before any element is
 * read, so a bad index is an error naming it, never an out-of-bounds read.
 */
#ifndef MICROML_INDEX_H
#define MICROML_INDEX_H
#include "tensor.h"

/* Entries of x at positions idx (0-dim or 1-D int64) along dim:
   out has x's shape with size(dim) replaced by numel(idx). */
mm_tensor *mm_index_select(mm_tensor *x, int dim, mm_tensor *idx, int64_t base);

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

/* ---- batch prefetch (prefetch.c) ------------------------------------------ */
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
#endif
