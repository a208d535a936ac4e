/* shape.h — ops that join, split or pad tensors (shape.c): cat, stack,
 * split, chunk, pad.
 *
 * Conventions, as in the rest of the C API: dims are 0-based (negative
 * counts from the end), every returned tensor is a new reference, and a
 * failure returns NULL with a message in mm_error().  All of these take
 * float32, float64 and int64 (gradients for the float ones). */
#ifndef MICROML_SHAPE_H
#define MICROML_SHAPE_H
#include "tensor.h"

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

#endif
