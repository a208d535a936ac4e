/* nnops.h — numerically delicate NN ops fused into one kernel each, with
 * their own backward: softmax, log_softmax, the losses, layer_norm, dropout.
 *
 * Conventions: dims are 0-based (negative from the end); class labels are
 * int64 and start at `base` (the Lua bindings pass 1, C callers 0), and so
 * does ignore_index.  float32 and float64 inputs; float32 rows accumulate
 * in double.  Results do not depend on the thread count: rows are split
 * between threads, never the elements of one sum.
 *
 * A softmax row that is entirely -inf (every class masked out) has no
 * defined distribution; softmax gives zeros there, log_softmax gives -inf,
 * and both pass a zero gradient back, where the textbook formula would give
 * NaN and poison every parameter it reaches. */
#ifndef MICROML_NNOPS_H
#define MICROML_NNOPS_H
#include "tensor.h"

mm_tensor *mm_softmax(mm_tensor *x, int dim);
mm_tensor *mm_log_softmax(mm_tensor *x, int dim);

typedef enum { MM_REDUCTION_MEAN = 0, MM_REDUCTION_SUM = 1, MM_REDUCTION_NONE = 2 } mm_reduction;

typedef struct mm_loss_opts {
  mm_reduction reduction;   /* mean: over the rows that are not ignored */
  double label_smoothing;   /* cross_entropy only; in [0, 1) */
  bool has_ignore_index;
  int64_t ignore_index;     /* a label value (from base) whose rows count for nothing */
} mm_loss_opts;             /* NULL means {MEAN, 0, false, 0} */

/* logits [N, C] (any strides), labels int64 [N] with values base..base+C-1.
   Fused log-softmax + NLL: the backward is (softmax - target) * weight in one
   pass over the saved logits, with target the (smoothed) one-hot row. */
mm_tensor *mm_cross_entropy(mm_tensor *logits, mm_tensor *labels, const mm_loss_opts *opts,
                            int64_t base);
/* logp [N, C] (log-probabilities), labels as above: -logp[i, label_i]. */
mm_tensor *mm_nll_loss(mm_tensor *logp, mm_tensor *labels, const mm_loss_opts *opts,
                       int64_t base);
/* (a - b)^2, a and b broadcast together. */
mm_tensor *mm_mse_loss(mm_tensor *a, mm_tensor *b, mm_reduction reduction);
/* max(x, 0) - x y + log1p(exp(-|x|)): stable for any |x|; x and y broadcast. */
mm_tensor *mm_binary_cross_entropy_with_logits(mm_tensor *x, mm_tensor *y,
                                               mm_reduction reduction);
/* Normalises over the trailing dims given by normalized_shape (biased
   variance, as PyTorch), then y = xhat * weight + bias; weight and bias may
   be NULL and otherwise have shape normalized_shape and x's dtype. */
mm_tensor *mm_layer_norm(mm_tensor *x, int nnorm, const int64_t *normalized_shape,
                         mm_tensor *weight, mm_tensor *bias, double eps);
/* Inverted dropout: keeps each element with probability 1 - p and scales it
   by 1 / (1 - p), drawing from the seeded generator (mm_manual_seed) in
   row-major order.  training == false or p == 0 returns x itself (a new
   reference); p == 1 gives zeros and draws nothing. */
mm_tensor *mm_dropout(mm_tensor *x, double p, bool training);

#endif
