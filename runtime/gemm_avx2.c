/* gemm_avx2.c — the AVX2/FMA float32 GEMM micro-kernel (6 x 16 tile).
 *
 * Compiled with -mavx2 -mfma; only called after cpu.c has seen AVX2+FMA.
 * SIMDe intrinsics, so the file also builds (emulated) where AVX2 is absent.
 *
 * Why 6 x 16: the tile lives in registers — 6 rows x 2 ymm = 12 accumulators,
 * plus 2 for the B row and 1 for the broadcast A element: 15 of the 16 ymm
 * registers.  Per k step that is 12 FMAs against 2 vector loads of B and 6
 * broadcasts of A, which two FMA pipes (6 cycles) and the load ports keep up
 * with.  Wider tiles need more than 16 registers and spill. */
#include "gemm.h"

#include <simde/x86/avx2.h>
#include <simde/x86/fma.h>

#define MR 6
#define NR 16

/* One body for both A layouts: with rs_a = 1, cs_a = MR (packed) the compiler
   folds the strides into constant offsets. */
static inline __attribute__((always_inline))
void tile_6x16(int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
               const float *b, float *c, int64_t rs_c, float alpha, float beta)
{
  simde__m256 c00 = simde_mm256_setzero_ps(), c01 = simde_mm256_setzero_ps();
  simde__m256 c10 = simde_mm256_setzero_ps(), c11 = simde_mm256_setzero_ps();
  simde__m256 c20 = simde_mm256_setzero_ps(), c21 = simde_mm256_setzero_ps();
  simde__m256 c30 = simde_mm256_setzero_ps(), c31 = simde_mm256_setzero_ps();
  simde__m256 c40 = simde_mm256_setzero_ps(), c41 = simde_mm256_setzero_ps();
  simde__m256 c50 = simde_mm256_setzero_ps(), c51 = simde_mm256_setzero_ps();

  for (int r = 0; r < MR; r++) {          /* C is needed at the end: fetch it now */
    __builtin_prefetch(c + r * rs_c, 1, 3);
    __builtin_prefetch(c + r * rs_c + NR - 1, 1, 3);
  }

#pragma GCC unroll 4
  for (int64_t p = 0; p < k; p++) {
    simde__m256 b0 = simde_mm256_loadu_ps(b), b1 = simde_mm256_loadu_ps(b + 8), av;
    av = simde_mm256_broadcast_ss(a);
    c00 = simde_mm256_fmadd_ps(av, b0, c00); c01 = simde_mm256_fmadd_ps(av, b1, c01);
    av = simde_mm256_broadcast_ss(a + rs_a);
    c10 = simde_mm256_fmadd_ps(av, b0, c10); c11 = simde_mm256_fmadd_ps(av, b1, c11);
    av = simde_mm256_broadcast_ss(a + 2 * rs_a);
    c20 = simde_mm256_fmadd_ps(av, b0, c20); c21 = simde_mm256_fmadd_ps(av, b1, c21);
    av = simde_mm256_broadcast_ss(a + 3 * rs_a);
    c30 = simde_mm256_fmadd_ps(av, b0, c30); c31 = simde_mm256_fmadd_ps(av, b1, c31);
    av = simde_mm256_broadcast_ss(a + 4 * rs_a);
    c40 = simde_mm256_fmadd_ps(av, b0, c40); c41 = simde_mm256_fmadd_ps(av, b1, c41);
    av = simde_mm256_broadcast_ss(a + 5 * rs_a);
    c50 = simde_mm256_fmadd_ps(av, b0, c50); c51 = simde_mm256_fmadd_ps(av, b1, c51);
    a += cs_a;
    b += NR;
  }

  /* Same operations, in the same order, as the driver's edge-tile merge
     (alpha*ab, then + c or + beta*c), so every element rounds alike
     whichever path wrote it. */
  simde__m256 va = simde_mm256_set1_ps(alpha), vb = simde_mm256_set1_ps(beta);
  simde__m256 acc[MR][2] = { { c00, c01 }, { c10, c11 }, { c20, c21 },
                             { c30, c31 }, { c40, c41 }, { c50, c51 } };
  for (int r = 0; r < MR; r++) {
    float *cr = c + r * rs_c;
    simde__m256 t0 = simde_mm256_mul_ps(va, acc[r][0]);
    simde__m256 t1 = simde_mm256_mul_ps(va, acc[r][1]);
    if (beta == 0.0f) {
    } else if (beta == 1.0f) {
      t0 = simde_mm256_add_ps(simde_mm256_loadu_ps(cr), t0);
      t1 = simde_mm256_add_ps(simde_mm256_loadu_ps(cr + 8), t1);
    } else {
      t0 = simde_mm256_add_ps(simde_mm256_mul_ps(vb, simde_mm256_loadu_ps(cr)), t0);
      t1 = simde_mm256_add_ps(simde_mm256_mul_ps(vb, simde_mm256_loadu_ps(cr + 8)), t1);
    }
    simde_mm256_storeu_ps(cr, t0);
    simde_mm256_storeu_ps(cr + 8, t1);
  }
}

/* ---- packing ------------------------------------------------------------------
 * Same layouts as the generic packers in gemm.c (see there), with the two
 * common strided cases done as 8 x 8 register transposes: row-major A (rows
 * contiguous along k) and transposed B (columns contiguous along k).  The
 * scalar versions of these spent 15% of an MLP-sized GEMM in packing. */

/* Transpose the 8 x 8 block r[0..7] in place: r[i][j] -> r[j][i]. */
static inline __attribute__((always_inline)) void transpose8(simde__m256 r[8])
{
 simde__m256 t[8], u[8];
 for (int i = 0; i < 8; i += 2) {
  t[i] = simde_mm256_unpacklo_ps(r[i], r[i + 1]);
  t[i + 1] = simde_mm256_unpackhi_ps(r[i], r[i + 1]);
 }
 for (int i = 0; i < 8; i += 4) {
  u[i] = simde_mm256_shuffle_ps(t[i], t[i + 2], 0x44);
  u[i + 1] = simde_mm256_shuffle_ps(t[i], t[i + 2], 0xee);
  u[i + 2] = simde_mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
  u[i + 3] = simde_mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
 }
 for (int i = 0; i < 4; i++) {
  r[i] = simde_mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
  r[i + 4] = simde_mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
 }
}

static void pack_a(int64_t mc, int64_t kc, const float *A, int64_t rs_a, int64_t cs_a,
                   float *dst)
{
 for (int64_t ir = 0; ir < mc; ir += MR, dst += MR * kc) {
  const float *src = A + ir * rs_a;
  int64_t mr = mc - ir < MR ? mc - ir : MR, p = 0;
  if (mr == MR && cs_a == 1) {
   for (; p + 8 <= kc; p += 8) {
    simde__m256 r[8];
    for (int i = 0; i < MR; i++) r[i] = simde_mm256_loadu_ps(src + i * rs_a + p);
    r[6] = r[7] = simde_mm256_setzero_ps();
    transpose8(r);   /* r[q] = column p+q: 6 values and 2 zeros */
    float *d = dst + p * MR;
    for (int q = 0; q < 7; q++) simde_mm256_storeu_ps(d + q * MR, r[q]);  /* overlapping */
    simde_mm_storeu_ps(d + 7 * MR, simde_mm256_castps256_ps128(r[7]));
    simde_mm_storel_pi((simde__m64 *)(d + 7 * MR + 4),
                       simde_mm256_extractf128_ps(r[7], 1));
   }
  } else if (mr == MR && rs_a == 1) {
   for (; p < kc; p++)
    for (int i = 0; i < MR; i++) dst[p * MR + i] = src[p * cs_a + i];
  }
  for (; p < kc; p++)
   for (int i = 0; i < MR; i++) dst[p * MR + i] = i < mr ? src[i * rs_a + p * cs_a] : 0.0f;
 }
}

static void pack_b(int64_t kc, int64_t nc, const float *B, int64_t rs_b, int64_t cs_b,
                   float *dst)
{
 int64_t n_full = nc / NR * NR;
 if (cs_b == 1) {
  for (int64_t p = 0; p < kc; p++) {
   const float *src = B + p * rs_b;
   float *d = dst + p * NR;
   for (int64_t jr = 0; jr < n_full; jr += NR, d += NR * kc) {
    simde_mm256_storeu_ps(d, simde_mm256_loadu_ps(src + jr));
    simde_mm256_storeu_ps(d + 8, simde_mm256_loadu_ps(src + jr + 8));
   }
  }
 } else if (rs_b == 1) {
  for (int64_t jr = 0; jr < n_full; jr += NR) {
   float *d = dst + jr * kc;
   int64_t p = 0;
   for (; p + 8 <= kc; p += 8)
    for (int h = 0; h < NR; h += 8) {
     simde__m256 r[8];
     for (int j = 0; j < 8; j++) r[j] = simde_mm256_loadu_ps(B + (jr + h + j) * cs_b + p);
     transpose8(r);
     for (int q = 0; q < 8; q++) simde_mm256_storeu_ps(d + (p + q) * NR + h, r[q]);
    }
   for (; p < kc; p++)
    for (int j = 0; j < NR; j++) d[p * NR + j] = B[(jr + j) * cs_b + p];
  }
 } else {
  for (int64_t jr = 0; jr < n_full; jr += NR)
   for (int64_t p = 0; p < kc; p++)
    for (int j = 0; j < NR; j++) dst[jr * kc + p * NR + j] = B[p * rs_b + (jr + j) * cs_b];
 }
 if (n_full < nc) {
  int64_t nr = nc - n_full;
  float *d = dst + n_full * kc;
  for (int64_t p = 0; p < kc; p++)
   for (int j = 0; j < NR; j++)
    d[p * NR + j] = j < nr ? B[p * rs_b + (n_full + j) * cs_b] : 0.0f;
 }
}

static void ukr_packed(int64_t k, const float *a, const float *b,
                       float *c, int64_t rs_c, float alpha, float beta)
{
  tile_6x16(k, a, 1, MR, b, c, rs_c, alpha, beta);
}

static void ukr_strided(int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
                        const float *b, float *c, int64_t rs_c, float alpha, float beta)
{
  tile_6x16(k, a, rs_a, cs_a, b, c, rs_c, alpha, beta);
}

const mm_sgemm_kernel mm_sgemm_kernel_avx2 = {
  .name = "avx2", .mr = MR, .nr = NR,
  /* Cache blocks: see the comment at the top of gemm.c. */
  .mc = 144, .kc = 256, .nc = 4080,
  .packed = ukr_packed, .strided = ukr_strided,
  .pack_a = pack_a, .pack_b = pack_b,
};
