/* elementwise_avx2.h — elementwise kernels compiled for AVX2 in their own
 * translation unit (elementwise_avx2.c); elementwise.c calls them only when
 * mm_kernel_id() >= MM_KERNEL_AVX2.  Each computes exactly what the portable
 * loop computes, element by element, so the choice never changes a bit. */
#ifndef MICROML_ELEMENTWISE_AVX2_H
#define MICROML_ELEMENTWISE_AVX2_H

#include <stdint.h>

/* y[i] = {0, 1}[x[i] > 0] * x[i]  (ReLU; NaN stays NaN, x <= 0 gives a signed zero) */
void mm_relu_f32_avx2(int64_t n, const float *x, float *y);
/* o[i] = g[i] * {0, 1}[x[i] > 0]  (ReLU's backward) */
void mm_relu_bw_f32_avx2(int64_t n, const float *g, const float *x, float *o);

#endif
