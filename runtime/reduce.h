/* reduce.h — reductions over all elements or over one dimension, and the
 * row layout they share with the fused NN ops (nnops.c).
 *
 * Conventions for every reduction here:
 *   - dim is 0-based (negative counts from the end) or MM_ALL_DIMS for a
 *     reduction over every element.  A 0-dim input accepts dim 0 / -1 and
 *     reduces its one element.
 *   - keepdim keeps the reduced dimension with size 1 (with MM_ALL_DIMS:
 *     every dimension becomes 1); otherwise it is removed.
 *   - float32 sums accumulate in double, in fixed blocks combined in a fixed
 *     order, so results do not depend on the thread count.
 *   - Index outputs are int64 and start at `base` (the Lua bindings pass 1,
 *     C callers 0).  Ties pick the first occurrence; NaN counts as the
 *     largest and the smallest value (it propagates).
 *   - Empty reductions: sum 0, prod 1, mean/var/std NaN, logsumexp -inf,
 *     norm 0; max/min/argmax/argmin refuse with an error.
 *   - sum, prod, max, min, argmax, argmin also take int64 (exact integer
 *     arithmetic); the others need float32/float64.
 */
#ifndef MICROML_REDUCE_H
#define MICROML_REDUCE_H
#include "microml.h"

mm_tensor *mm_sum(mm_tensor *t, int dim, bool keepdim);
mm_tensor *mm_mean(mm_tensor *t, int dim, bool keepdim);
/* unbiased: divide by n - 1 (Bessel) instead of n. */
mm_tensor *mm_var(mm_tensor *t, int dim, bool unbiased, bool keepdim);
mm_tensor *mm_std(mm_tensor *t, int dim, bool unbiased, bool keepdim);
/* Gradient exact with zeros in the input (no division by x). */
mm_tensor *mm_prod(mm_tensor *t, int dim, bool keepdim);
/* Values; when indices is not NULL it receives the positions (int64, from
   base; over MM_ALL_DIMS the flat row-major position).  The gradient flows to
   the selected element only. */
mm_tensor *mm_max(mm_tensor *t, int dim, bool keepdim, int64_t base, mm_tensor **indices);
mm_tensor *mm_min(mm_tensor *t, int dim, bool keepdim, int64_t base, mm_tensor **indices);
mm_tensor *mm_argmax(mm_tensor *t, int dim, bool keepdim, int64_t base);
mm_tensor *mm_argmin(mm_tensor *t, int dim, bool keepdim, int64_t base);
/* log(sum(exp(x))) computed as m + log(sum(exp(x - m))), m the maximum; a
   slice that is entirely -inf gives -inf and a zero gradient. */
mm_tensor *mm_logsumexp(mm_tensor *t, int dim, bool keepdim);
/* p-norm: p = 2 (Euclidean), 1, INFINITY (max |x|) or any other p > 0.
   The gradient at a zero norm is 0; for p = INFINITY it is split evenly
   between the elements that attain the maximum. */
mm_tensor *mm_norm(mm_tensor *t, double p, int dim, bool keepdim);

/* ---- row layout (for op implementations) -------------------------------
 * A tensor seen as rows along one dimension: `nrows` rows of `n` elements,
 * row r of operand k starting at mm_rows_at(...)[k] with `rstride[k]`
 * elements between neighbours.  Rows come in row-major order of the other
 * dimensions, so a contiguous output of those dimensions is indexed by r.
 * Operands share one shape, except that any operand may have size 1 in a
 * dimension (it then repeats: stride 0).  The outer dimensions are merged
 * where every operand allows it, so a contiguous tensor reduced over its
 * last dimension is one flat loop of rows. */
#define MM_ROWS_MAX_OPS 4
typedef struct mm_rows {
  int nops;
  int ndim;                                    /* outer dims after merging */
  int64_t shape[MM_MAX_DIMS];
  int64_t stride[MM_ROWS_MAX_OPS][MM_MAX_DIMS]; /* in elements */
  int64_t n;                                   /* row length */
  int64_t rstride[MM_ROWS_MAX_OPS];            /* in elements */
  int64_t nrows;
  char *base[MM_ROWS_MAX_OPS];
  size_t esize[MM_ROWS_MAX_OPS];
} mm_rows;

/* dim must already be wrapped (0 <= dim < ndim), or anything for ndim 0. */
void mm_rows_init(mm_rows *r, int nops, mm_tensor *const *ops, int dim);
/* Start of row `row` for every operand. */
void mm_rows_at(const mm_rows *r, int64_t row, char **ptr);
/* fn(ctx, r, row_begin, row_end) over all rows, split across threads by
   rows when the work (rows x row length) is large.  Each row is handled
   whole by one thread, so results never depend on the thread count. */
typedef void (*mm_rows_fn)(void *ctx, const mm_rows *r, int64_t row_begin, int64_t row_end);
void mm_rows_run(const mm_rows *r, mm_rows_fn fn, void *ctx);

#endif
