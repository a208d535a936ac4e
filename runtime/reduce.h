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
#include "tensor.h"

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

#endif
