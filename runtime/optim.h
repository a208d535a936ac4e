/* optim.h — fused optimizer updates: one pass over a parameter tensor per
 * step, reading the gradient and the state buffers and writing the
 * parameter and the state in place.  Included by microml.h.
 *
 * The bookkeeping (parameter groups, lazily allocated state, schedulers)
 * lives in lua/microml/optim.lua; these kernels only do the arithmetic, so
 * a step costs one memory pass per tensor instead of a chain of temporaries.
 *
 * Contract shared by the step functions:
 *   - param: float32 or float64, any layout (a non-contiguous parameter is
 *     updated through a contiguous copy that is written back);
 *   - grad: same dtype and shape as param, any layout;
 *   - state buffers: same dtype and shape as param, contiguous (the
 *     optimizer allocates them once with zeros_like);
 *   - nothing is recorded by autograd; the storage versions of param and of
 *     every state buffer are bumped, so a graph that saved the old values
 *     refuses to backward through them;
 *   - the update of each element depends only on that element, so the
 *     result does not depend on the thread count.
 * They return 0, or -1 with mm_error() naming what was wrong. */
#ifndef MICROML_OPTIM_H
#define MICROML_OPTIM_H

#include "tensor.h"

/* SGD with momentum, as torch.optim.SGD:
 *   g = grad + weight_decay * p
 *   buf = first_step ? g : momentum * buf + (1 - dampening) * g
 *   d = nesterov ? g + momentum * buf : buf        (d = g when momentum == 0)
 *   p -= lr * d
 * momentum_buf may be NULL only when momentum == 0. */
typedef struct mm_sgd_opts {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  bool first_step;   /* the buffer is initialised from g, not blended */
} mm_sgd_opts;
int mm_sgd_step(mm_tensor *param, mm_tensor *grad, mm_tensor *momentum_buf,
                const mm_sgd_opts *o);

/* Adam (Kingma & Ba) and AdamW (Loshchilov & Hutter), as torch.optim:
 *   Adam:  g = grad + weight_decay * p          (L2 penalty through the gradient)
 *   AdamW: p *= 1 - lr * weight_decay           (decoupled decay, before the update)
 *   m = beta1 * m + (1 - beta1) * g
 *   v = beta2 * v + (1 - beta2) * g^2
 *   vmax = max(vmax, v)                          (amsgrad only; the denominator uses vmax)
 *   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
 * step counts from 1.  max_sq is NULL unless amsgrad. */
typedef struct mm_adam_opts {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
  bool decoupled;    /* true: AdamW; false: Adam with L2 */
  bool amsgrad;
} mm_adam_opts;
int mm_adam_step(mm_tensor *param, mm_tensor *grad, mm_tensor *exp_avg, mm_tensor *exp_avg_sq,
                 mm_tensor *max_sq, const mm_adam_opts *o);

/* One Adam step of n distinct parameters, each with its own step count
 * (o->step is ignored).  Same result as mm_adam_step on each in turn, bit
 * for bit; the float32 ones run as one parallel loop.  Every item is
 * checked before any is updated. */
typedef struct mm_adam_item {
  mm_tensor *param, *grad, *exp_avg, *exp_avg_sq, *max_sq;
  int64_t step;
} mm_adam_item;
int mm_adam_step_multi(int64_t n, const mm_adam_item *items, const mm_adam_opts *o);

/* sum |x|^p over t's elements, accumulated in double in a fixed order (so
 * it does not depend on the thread count); p == INFINITY gives max |x|.
 * Used by clip_grad_norm.  Returns 0 and *out, or -1 for a non-float
 * tensor or p <= 0. */
int mm_norm_accumulate(mm_tensor *t, double p, double *out);

#endif
