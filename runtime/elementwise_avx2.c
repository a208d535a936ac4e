/* elementwise_avx2.c — the ReLU forward and backward loops in 8-wide AVX2
 * vectors (SIMDe intrinsics; the Makefile compiles *_avx2.c with -mavx2
 * -mfma).  ReLU runs on every hidden activation of an MLP, twice per step,
 * and the scalar loop costs ~2.5 cycles an element; these take a fraction
 * of one.  Lane by lane they make the scalar loop's selection (see
 * RELU_FW in elementwise.c): a mask of x > 0 (ordered) or x unordered (NaN)
 * keeps x, anything else becomes +0; backward keeps g where x > 0 and is +0
 * elsewhere.  A bitwise AND with the mask is an exact select, so the bits
 * match the scalar loop, NaN and zero signs included. */
#include <simde/x86/avx2.h>

#include "elementwise_avx2.h"

void mm_relu_f32_avx2(int64_t n, const float *x, float *y) {
  const simde__m256 zero = simde_mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    simde__m256 v = simde_mm256_loadu_ps(x + i);
    simde__m256 keep = simde_mm256_or_ps(simde_mm256_cmp_ps(v, zero, SIMDE_CMP_GT_OQ),
                                         simde_mm256_cmp_ps(v, v, SIMDE_CMP_UNORD_Q));
    simde_mm256_storeu_ps(y + i, simde_mm256_and_ps(keep, v));
  }
  for (; i < n; i++) y[i] = x[i] > 0 || x[i] != x[i] ? x[i] : 0.0f;
}

void mm_relu_bw_f32_avx2(int64_t n, const float *g, const float *x, float *o) {
  const simde__m256 zero = simde_mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    simde__m256 keep = simde_mm256_cmp_ps(simde_mm256_loadu_ps(x + i), zero, SIMDE_CMP_GT_OQ);
    simde_mm256_storeu_ps(o + i, simde_mm256_and_ps(keep, simde_mm256_loadu_ps(g + i)));
  }
  for (; i < n; i++) o[i] = x[i] > 0 ? g[i] : 0.0f;
}
