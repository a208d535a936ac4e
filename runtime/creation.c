/* creation.c — arange, linspace, eye: tensors built from a rule. */
#include <math.h>

#include "microml.h"

mm_tensor *mm_arange(mm_dtype dt, double start, double end, double step) {
  if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step)) {
    mm_set_error("arange: expected finite start/end and a non-zero step, got %g, %g, %g", start,
                 end, step);
    return NULL;
  }
  double count = ceil((end - start) / step);
  if (count < 0) count = 0;
  if (count > (double)((int64_t)1 << 40)) {
    mm_set_error("arange: %g elements is too many", count);
    return NULL;
  }
  int64_t n = (int64_t)count;
  mm_tensor *t = mm_tensor_empty(dt, 1, &n);
  if (!t) return NULL;
  for (int64_t i = 0; i < n; i++) mm_set_flat(t, i, start + (double)i * step);
  return t;
}

mm_tensor *mm_linspace(mm_dtype dt, double start, double end, int64_t steps) {
  if (steps < 0) {
    mm_set_error("linspace: expected steps >= 0, got %lld", (long long)steps);
    return NULL;
  }
  mm_tensor *t = mm_tensor_empty(dt, 1, &steps);
  if (!t) return NULL;
  double h = steps > 1 ? (end - start) / (double)(steps - 1) : 0;
  /* Fill from both ends so the last value is exactly `end`. */
  for (int64_t i = 0; i < steps; i++)
    mm_set_flat(t, i, i < steps / 2 ? start + h * (double)i : end - h * (double)(steps - 1 - i));
  return t;
}

mm_tensor *mm_eye(mm_dtype dt, int64_t n, int64_t m) {
  int64_t shape[2] = {n, m};
  mm_tensor *t = mm_tensor_zeros(dt, 2, shape);
  if (!t) return NULL;
  for (int64_t i = 0; i < n && i < m; i++) mm_set_flat(t, i * m + i, 1);
  return t;
}
