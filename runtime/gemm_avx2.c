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

#include "simd_transpose.h"

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

  if (k > 32)   /* C is needed at the end: fetch it now (for short k, the 12 */
    for (int r = 0; r < MR; r++) {   /* instructions cost more than they hide) */
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
    simde__m256 t0 = acc[r][0], t1 = acc[r][1];
    if (alpha != 1.0f) {   /* 1 * x is x exactly: skipping it changes no bit */
      t0 = simde_mm256_mul_ps(va, t0);
      t1 = simde_mm256_mul_ps(va, t1);
    }
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

/* ---- narrow N: column tiles -------------------------------------------------
 * C (m <= 16 rows, n <= 6 columns) = alpha * A B + beta C for an A whose
 * columns are contiguous (element (i,p) at a[i + p*cs_a]: the transposed X
 * of a backward X^T dY), read in place.  The roles of the 6 x 16 kernel
 * swapped: 16 rows of A are two vector loads, each of the n columns of B is
 * one broadcast, 2n FMAs per k step; C comes out as columns and is written
 * through a small buffer.  For N = 10 this fills every lane (two passes of
 * 5 columns), where row tiles 16 wide would waste 6 of 16 and the swapped
 * problem C^T = B^T A^T would first have to pack all of A. */
static inline __attribute__((always_inline))
void cols_tile(int NB, int full, int64_t m, int64_t k, const float *a, int64_t cs_a,
               const float *b, int64_t rs_b, int64_t cs_b, float *c, int64_t rs_c,
               int64_t cs_c, float alpha, float beta)
{
  /* Named accumulators, not an array: GCC kept an acc[6][2] array on the
     stack and stored it back on every k step (half the time of the loop). */
  simde__m256 z = simde_mm256_setzero_ps();
  simde__m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z;
  simde__m256 c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
  simde__m256i m0 = simde_mm256_setzero_si256(), m1 = m0;
  if (!full) {   /* rows past m are masked off: never read, come out 0 */
    simde__m256i lane = simde_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    m0 = simde_mm256_cmpgt_epi32(simde_mm256_set1_epi32((int)m), lane);
    m1 = simde_mm256_cmpgt_epi32(simde_mm256_set1_epi32((int)m - 8), lane);
  }
#define COL_STEP(J, A0, A1)                                                 \
  if (NB > J) {                                                             \
    simde__m256 bv = simde_mm256_broadcast_ss(b + J * cs_b);                \
    A0 = simde_mm256_fmadd_ps(a0, bv, A0);                                  \
    A1 = simde_mm256_fmadd_ps(a1, bv, A1);                                  \
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < k; p++) {
    simde__m256 a0 = full ? simde_mm256_loadu_ps(a) : simde_mm256_maskload_ps(a, m0);
    simde__m256 a1 = full ? simde_mm256_loadu_ps(a + 8) : simde_mm256_maskload_ps(a + 8, m1);
    COL_STEP(0, c00, c01) COL_STEP(1, c10, c11) COL_STEP(2, c20, c21)
    COL_STEP(3, c30, c31) COL_STEP(4, c40, c41) COL_STEP(5, c50, c51)
    a += cs_a;
    b += rs_b;
  }
#undef COL_STEP
  /* alpha first, then the merge in the driver's order (see merge_tile). */
  float t[6][16] __attribute__((aligned(32)));
  simde__m256 va = simde_mm256_set1_ps(alpha);
  simde__m256 acc[6][2] = { { c00, c01 }, { c10, c11 }, { c20, c21 },
                            { c30, c31 }, { c40, c41 }, { c50, c51 } };
  for (int j = 0; j < NB; j++) {
    simde_mm256_store_ps(t[j], simde_mm256_mul_ps(va, acc[j][0]));
    simde_mm256_store_ps(t[j] + 8, simde_mm256_mul_ps(va, acc[j][1]));
  }
  for (int64_t r = 0; r < m; r++) {
    float *cr = c + r * rs_c;
    for (int j = 0; j < NB; j++) {
      float *cp = cr + j * cs_c, v = t[j][r];
      *cp = beta == 0 ? v : beta == 1 ? *cp + v : beta * *cp + v;
    }
  }
}

static void ukr_cols(int64_t m, int64_t n, int64_t k, const float *a, int64_t cs_a,
                     const float *b, int64_t rs_b, int64_t cs_b, float *c, int64_t rs_c,
                     int64_t cs_c, float alpha, float beta)
{
#define COLS_CASE(NB)                                                                      \
  case NB:                                                                                 \
    if (m == 16) cols_tile(NB, 1, 16, k, a, cs_a, b, rs_b, cs_b, c, rs_c, cs_c, alpha, beta); \
    else cols_tile(NB, 0, m, k, a, cs_a, b, rs_b, cs_b, c, rs_c, cs_c, alpha, beta);       \
    break;
  switch (n) {
  COLS_CASE(1) COLS_CASE(2) COLS_CASE(3) COLS_CASE(4) COLS_CASE(5) COLS_CASE(6)
  default: break;
  }
#undef COLS_CASE
}

/* ---- narrow N: dot products -------------------------------------------------
 * C (m <= 2 rows, n <= 6 columns) for a row-major A (the forward X W of a
 * logits layer) and B^T row-major: each C element is a dot product along k,
 * 8 products per lane, so every FMA lane is used whatever N is.  2 x n
 * accumulators; per 8 steps of k, 2 loads of A and n of B for 2n FMAs.  The
 * lanes are summed at the end with horizontal adds (in a fixed order: the
 * result does not depend on the thread count). */

/* Keep a loaded vector in a register: left alone, GCC folds the load of
   B into each of the R FMAs that use it, R loads where one will do, and
   the loop becomes load-bound (measured: 2 x 5 tile, 12 loads per 10 FMAs). */
#if defined(__AVX__) && !defined(SIMDE_NO_NATIVE)
#define REG_BARRIER(v) __asm__("" : "+x"(v))
#else
#define REG_BARRIER(v) ((void)0)
#endif

/* Sum of the 8 lanes of each of v[0..3], as one 4-lane vector. */
static inline __attribute__((always_inline)) simde__m128 hsum4(simde__m256 v0, simde__m256 v1,
                                                              simde__m256 v2, simde__m256 v3)
{
  simde__m256 h = simde_mm256_hadd_ps(simde_mm256_hadd_ps(v0, v1), simde_mm256_hadd_ps(v2, v3));
  return simde_mm_add_ps(simde_mm256_castps256_ps128(h), simde_mm256_extractf128_ps(h, 1));
}

/* alpha * v, merged into n <= 4 consecutive elements of C (stride cs_c) in
   the driver's order (see merge_tile); one vector op when they are
   contiguous and all 4 are wanted. */
static inline __attribute__((always_inline))
void merge4(simde__m128 v, int n, float *c, int64_t cs_c, float alpha, float beta)
{
  v = simde_mm_mul_ps(simde_mm_set1_ps(alpha), v);
  if (n == 4 && cs_c == 1) {
    if (beta == 1.0f) v = simde_mm_add_ps(simde_mm_loadu_ps(c), v);
    else if (beta != 0.0f)
      v = simde_mm_add_ps(simde_mm_mul_ps(simde_mm_set1_ps(beta), simde_mm_loadu_ps(c)), v);
    simde_mm_storeu_ps(c, v);
    return;
  }
  float t[4] __attribute__((aligned(16)));
  simde_mm_store_ps(t, v);
  for (int j = 0; j < n; j++) {
    float *cp = c + j * cs_c;
    *cp = beta == 0 ? t[j] : beta == 1 ? *cp + t[j] : beta * *cp + t[j];
  }
}

static inline __attribute__((always_inline))
void dots_tile(int R, int NB, int64_t k, const float *a, int64_t rs_a, const float *b,
               int64_t cs_b, float *c, int64_t rs_c, int64_t cs_c, float alpha, float beta)
{
  /* Named accumulators (row r, column j: srj), not an array, so that they
     stay in registers (see cols_tile). */
  simde__m256 z = simde_mm256_setzero_ps();
  simde__m256 s00 = z, s01 = z, s02 = z, s03 = z, s04 = z, s05 = z;
  simde__m256 s10 = z, s11 = z, s12 = z, s13 = z, s14 = z, s15 = z;
#define DOT_STEP(J, S0, S1, LOAD)                                           \
  if (NB > J) {                                                             \
    simde__m256 bv = LOAD(b + J * cs_b + p);                                \
    REG_BARRIER(bv);                                                        \
    S0 = simde_mm256_fmadd_ps(a0, bv, S0);                                  \
    if (R > 1) S1 = simde_mm256_fmadd_ps(a1, bv, S1);                       \
  }
#define DOT_ALL(LOAD)                                                       \
  DOT_STEP(0, s00, s10, LOAD) DOT_STEP(1, s01, s11, LOAD)                   \
  DOT_STEP(2, s02, s12, LOAD) DOT_STEP(3, s03, s13, LOAD)                   \
  DOT_STEP(4, s04, s14, LOAD) DOT_STEP(5, s05, s15, LOAD)
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    simde__m256 a0 = simde_mm256_loadu_ps(a + p);
    simde__m256 a1 = R > 1 ? simde_mm256_loadu_ps(a + rs_a + p) : z;
#define LOADU(q) simde_mm256_loadu_ps(q)
    DOT_ALL(LOADU)
#undef LOADU
  }
  if (p < k) {   /* the last k % 8 steps, the other lanes masked off (read as 0) */
    simde__m256i mask = simde_mm256_cmpgt_epi32(simde_mm256_set1_epi32((int)(k - p)),
                                                 simde_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    simde__m256 a0 = simde_mm256_maskload_ps(a + p, mask);
    simde__m256 a1 = R > 1 ? simde_mm256_maskload_ps(a + rs_a + p, mask) : z;
#define LOADM(q) simde_mm256_maskload_ps(q, mask)
    DOT_ALL(LOADM)
#undef LOADM
  }
#undef DOT_ALL
#undef DOT_STEP
  merge4(hsum4(s00, s01, s02, s03), NB < 4 ? NB : 4, c, cs_c, alpha, beta);
  if (R > 1) merge4(hsum4(s10, s11, s12, s13), NB < 4 ? NB : 4, c + rs_c, cs_c, alpha, beta);
  if (NB > 4) {   /* columns 4 and 5 of both rows in one reduction */
    simde__m128 v = simde_mm_mul_ps(simde_mm_set1_ps(alpha), hsum4(s04, s14, s05, s15));
    float t[4] __attribute__((aligned(16)));
    simde_mm_store_ps(t, v);
    for (int r = 0; r < R; r++)
      for (int j = 4; j < NB; j++) {
        float *cp = c + r * rs_c + j * cs_c, x = t[r + 2 * (j - 4)];
        *cp = beta == 0 ? x : beta == 1 ? *cp + x : beta * *cp + x;
      }
  }
}

static void ukr_dots(int64_t m, int64_t n, int64_t k, const float *a, int64_t rs_a,
                     const float *b, int64_t cs_b, float *c, int64_t rs_c, int64_t cs_c,
                     float alpha, float beta)
{
#define DOTS_CASE(NB)                                                                       \
  case NB:                                                                                  \
    if (m == 2) dots_tile(2, NB, k, a, rs_a, b, cs_b, c, rs_c, cs_c, alpha, beta);          \
    else dots_tile(1, NB, k, a, rs_a, b, cs_b, c, rs_c, cs_c, alpha, beta);                 \
    break;
  switch (n) {
  DOTS_CASE(1) DOTS_CASE(2) DOTS_CASE(3) DOTS_CASE(4) DOTS_CASE(5) DOTS_CASE(6)
  default: break;
  }
#undef DOTS_CASE
}

/* B^T for the dot-product tiles, 8 x 8 blocks transposed in registers when
   B's rows are contiguous (the row-major W of X W); the scalar copy spent
   a tenth of a 128x10x128 product. */
static void pack_bt(int64_t k, int64_t n, const float *B, int64_t rs_b, int64_t cs_b, float *dst)
{
 int64_t j0 = 0;
 if (cs_b == 1)
  for (; j0 + 8 <= n; j0 += 8) {
   int64_t p = 0;
   for (; p + 8 <= k; p += 8) {
    simde__m256 r[8];
    for (int q = 0; q < 8; q++) r[q] = simde_mm256_loadu_ps(B + (p + q) * rs_b + j0);
    transpose8(r);   /* r[q] = column j0+q, rows p..p+7 */
    for (int q = 0; q < 8; q++) simde_mm256_storeu_ps(dst + (j0 + q) * k + p, r[q]);
   }
   for (; p < k; p++)
    for (int q = 0; q < 8; q++) dst[(j0 + q) * k + p] = B[p * rs_b + j0 + q];
  }
 for (int64_t p = 0; p < k; p++)
  for (int64_t j = j0; j < n; j++) dst[j * k + p] = B[p * rs_b + j * cs_b];
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

/* Shared with the AVX-512 kernel (same B panel width, same dot-product tiles). */
void mm_sgemm_avx2_pack_b16(int64_t kc, int64_t nc, const float *B, int64_t rs_b, int64_t cs_b,
                            float *dst)
{
  pack_b(kc, nc, B, rs_b, cs_b, dst);
}

void mm_sgemm_avx2_dots(int64_t m, int64_t n, int64_t k, const float *a, int64_t rs_a,
                        const float *b, int64_t cs_b, float *c, int64_t rs_c, int64_t cs_c,
                        float alpha, float beta)
{
  ukr_dots(m, n, k, a, rs_a, b, cs_b, c, rs_c, cs_c, alpha, beta);
}

void mm_sgemm_avx2_pack_bt(int64_t k, int64_t n, const float *B, int64_t rs_b, int64_t cs_b,
                           float *dst)
{
  pack_bt(k, n, B, rs_b, cs_b, dst);
}

const mm_sgemm_kernel mm_sgemm_kernel_avx2 = {
  .name = "avx2", .mr = MR, .nr = NR,
  /* Cache blocks: see the comment at the top of gemm.c. */
  .mc = 144, .kc = 256, .nc = 4080,
  .packed = ukr_packed, .strided = ukr_strided,
  .pack_a = pack_a, .pack_b = pack_b,
  .cols = ukr_cols, .cols_mr = 16, .cols_nr = 6,
  .dots = ukr_dots, .dots_mr = 2, .dots_nr = 6, .pack_bt = pack_bt,
};
