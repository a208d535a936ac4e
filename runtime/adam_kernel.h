/* adam_kernel.h — the float32 Adam/AdamW element loop, written once and
 * compiled twice: by optim.c for any x86-64 (or other) CPU, and by
 * optim_avx2.c with AVX2 so the compiler turns it into 8-wide vector code.
 * Both builds run the same IEEE operations in the same order (no FMA
 * contraction under -std=c11, sqrt and division correctly rounded in every
 * width), so they agree bit for bit and the choice never changes a result.
 *
 * The arithmetic is PyTorch's single-tensor float32 AdamW:
 *   p *= decay;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
 *   p -= step_size * (m / (sqrt(v) * inv_bc2 + eps))
 * all in float; Adam's L2 term (g += wd*p) when l2 is set.  One departure:
 * torch divides sqrt(v) by sqrt(1-b2^t); here it is multiplied by the
 * reciprocal, computed once in double.  The loop is bound by the divider
 * (sqrt and division share it), and one division fewer per element took a
 * step of the benchmark MLP's 235k parameters from 96 to 71 us on one
 * thread.  The two differ by about an ulp of the update, which is ~1e-3 of
 * the parameter, so the stored parameter rarely differs at all. */
#ifndef MICROML_ADAM_KERNEL_H
#define MICROML_ADAM_KERNEL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
  float *p;
  const float *g;
  float *m, *v;
  float b1, b2, one_b1, one_b2;
  float wd;          /* L2 coefficient (Adam); used when l2 */
  float decay;       /* 1 - lr*wd for AdamW, 1 otherwise */
  float step_size;   /* lr / (1 - b1^t) */
  float inv_bc2;     /* 1 / sqrt(1 - b2^t), rounded once from double */
  float eps;
  bool l2;
} mm_adam_f32_args;

static inline void mm_adam_f32_body(const mm_adam_f32_args *a, int64_t begin, int64_t end) {
  float *restrict p = a->p, *restrict m = a->m, *restrict v = a->v;
  const float *restrict gr = a->g;
  const float b1 = a->b1, b2 = a->b2, one_b1 = a->one_b1, one_b2 = a->one_b2;
  const float decay = a->decay, step_size = a->step_size, inv_bc2 = a->inv_bc2, eps = a->eps;
  if (a->l2) {
    const float wd = a->wd;
    for (int64_t i = begin; i < end; i++) {
      float g = gr[i] + wd * p[i];
      float mi = b1 * m[i] + one_b1 * g, vi = b2 * v[i] + one_b2 * (g * g);
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - step_size * (mi / (sqrtf(vi) * inv_bc2 + eps));
    }
  } else {
    for (int64_t i = begin; i < end; i++) {
      float g = gr[i];
      float mi = b1 * m[i] + one_b1 * g, vi = b2 * v[i] + one_b2 * (g * g);
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - step_size * (mi / (sqrtf(vi) * inv_bc2 + eps));
    }
  }
}

/* The AVX2 build (optim_avx2.c); call only when mm_kernel_id() >= MM_KERNEL_AVX2. */
void mm_adam_f32_avx2(const mm_adam_f32_args *a, int64_t begin, int64_t end);

#endif
