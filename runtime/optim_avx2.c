/* optim_avx2.c — the float32 Adam/AdamW loop in 8-wide AVX2 vectors (SIMDe
 * intrinsics, so it builds anywhere; the Makefile compiles *_avx2.c with
 * -mavx2 -mfma and optim.c calls in only when the CPU has AVX2).
 *
 * Written with intrinsics rather than left to the auto-vectoriser: sqrtf's
 * errno semantics stop GCC from vectorising the scalar loop.  Each lane does
 * exactly the scalar loop's operations in its order (mm_adam_f32_body in
 * adam_kernel.h; no FMA, correctly rounded sqrt, multiply and division), so the two
 * paths agree bit for bit; the tail runs through the scalar body. */
#include <simde/x86/avx2.h>

#include "adam_kernel.h"

void mm_adam_f32_avx2(const mm_adam_f32_args *a, int64_t begin, int64_t end) {
  float *p = a->p, *m = a->m, *v = a->v;
  const float *gr = a->g;
  const simde__m256 b1 = simde_mm256_set1_ps(a->b1), b2 = simde_mm256_set1_ps(a->b2);
  const simde__m256 one_b1 = simde_mm256_set1_ps(a->one_b1), one_b2 = simde_mm256_set1_ps(a->one_b2);
  const simde__m256 wd = simde_mm256_set1_ps(a->wd), decay = simde_mm256_set1_ps(a->decay);
  const simde__m256 step = simde_mm256_set1_ps(a->step_size), inv_bc2 = simde_mm256_set1_ps(a->inv_bc2);
  const simde__m256 eps = simde_mm256_set1_ps(a->eps);
  const bool l2 = a->l2;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    simde__m256 pi = simde_mm256_loadu_ps(p + i), g = simde_mm256_loadu_ps(gr + i);
    if (l2) g = simde_mm256_add_ps(g, simde_mm256_mul_ps(wd, pi));
    simde__m256 mi = simde_mm256_add_ps(simde_mm256_mul_ps(b1, simde_mm256_loadu_ps(m + i)),
                                        simde_mm256_mul_ps(one_b1, g));
    simde__m256 vi = simde_mm256_add_ps(simde_mm256_mul_ps(b2, simde_mm256_loadu_ps(v + i)),
                                        simde_mm256_mul_ps(one_b2, simde_mm256_mul_ps(g, g)));
    simde_mm256_storeu_ps(m + i, mi);
    simde_mm256_storeu_ps(v + i, vi);
    simde__m256 denom = simde_mm256_add_ps(simde_mm256_mul_ps(simde_mm256_sqrt_ps(vi), inv_bc2), eps);
    simde__m256 upd = simde_mm256_mul_ps(step, simde_mm256_div_ps(mi, denom));
    simde_mm256_storeu_ps(p + i, simde_mm256_sub_ps(simde_mm256_mul_ps(pi, decay), upd));
  }
  if (i < end) mm_adam_f32_body(a, i, end);
}
