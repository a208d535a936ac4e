/* iter.h — the strided, broadcasting loop every elementwise kernel runs on.
 *
 * Operands (operand 0 is the output) are laid over one iteration shape,
 * each with byte strides (0 where it broadcasts).  Adjacent dimensions that
 * are contiguous for every operand are merged, so a contiguous or
 * scalar-broadcast op becomes one long inner loop; the kernel sees the inner
 * length and the operands' inner byte strides and picks its fast path. */
#ifndef MICROML_ITER_H
#define MICROML_ITER_H

#include "microml.h"

#define MM_ITER_MAX_OPS 4

typedef void (*mm_loop_fn)(int64_t n, char **ptr, const int64_t *stride, const void *ctx);

typedef struct mm_iter {
  int nops;
  int ndim;                                  /* >= 1 after setup */
  int64_t shape[MM_MAX_DIMS];
  int64_t stride[MM_ITER_MAX_OPS][MM_MAX_DIMS]; /* bytes */
  char *base[MM_ITER_MAX_OPS];
} mm_iter;

/* Lays operands ops[0..nops) over (ndim, shape).  Every operand must
   broadcast to the shape (checked by the caller). */
void mm_iter_init(mm_iter *it, int nops, mm_tensor *const *ops, int ndim, const int64_t *shape);
/* Runs fn over every inner row; splits rows across threads when large and
   when the output (operand 0) has no zero stride. */
void mm_iter_run(const mm_iter *it, mm_loop_fn fn, const void *ctx);

/* Result dtype of a binary op between two tensors (float64 > float32 > int64). */
static inline mm_dtype mm_promote(mm_dtype a, mm_dtype b) {
  if (a == MM_FLOAT64 || b == MM_FLOAT64) return MM_FLOAT64;
  if (a == MM_FLOAT32 || b == MM_FLOAT32) return MM_FLOAT32;
  return MM_INT64;
}

#endif
