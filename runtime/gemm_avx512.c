/* gemm_avx512.c — the AVX-512 float32 GEMM micro-kernel (16 x 16 tile).
 *
 * Compiled with -mavx512f -mavx512vl -mavx512dq (and AVX2/FMA); only called
 * after cpu.c has seen AVX-512 F/VL/DQ with the OS saving the zmm state.
 * SIMDe intrinsics, so the file also builds (emulated) elsewhere.
 *
 * Why a 512-bit kernel on Zen 4, whose two FMA pipes are 256 bits wide (a
 * zmm FMA occupies both halves, so the peak is the same as with ymm): the 32
 * zmm registers and the embedded broadcast.  The tile is 16 rows x one zmm:
 * 16 accumulators, and per k step one load of B and 16 FMAs that each take
 * their A element as a {1to16} broadcast memory operand — 17 instructions
 * for 16 FMA-cycles, where the 6 x 16 AVX2 kernel needs 20 instructions (2
 * loads, 6 broadcasts, 12 FMAs) for 6 FMA-cycles and, measured, topped out
 * near 87% of peak.  16 x 16 also divides the shapes we run (128, 256, 784,
 * 1024 rows or columns), so edge tiles are rare; 12 x 32 or 14 x 32 would cut
 * the loads further but leave partial row panels at M = 128.
 *
 * The B packers and the dot-product narrow-N path are the AVX2 kernel's
 * (the 16-wide B layout is the same; the dot tiles are bound by loads of A,
 * not registers).  The column-tile narrow-N path is its own: 32 registers
 * take all of N = 10 in one pass (see cols_tile).
 *
 * Measured (bench/gemm_bench, 1 thread, medians of 15 alternating with
 * OpenBLAS): 1024^3 101-107 GFLOP/s (AVX2 kernel ~102, OpenBLAS 91-97),
 * the 128-row MLP shapes 105-110 (AVX2 90-92), 128x10x128 X^T dY 92-101
 * (AVX2 68, from the lead's table in the issue). */
#include "gemm.h"

#include <simde/x86/avx512.h>

#include "simd_transpose.h"

#define MR 16
#define NR 16

/* One body for both A layouts: with rs_a = 1, cs_a = MR (packed) the compiler
   folds the strides into constant offsets. */
static inline __attribute__((always_inline))
void tile_16x16(int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
                const float *b, float *c, int64_t rs_c, float alpha, float beta)
{
  simde__m512 z = simde_mm512_setzero_ps();
  simde__m512 c0 = z, c1 = z, c2 = z, c3 = z, c4 = z, c5 = z, c6 = z, c7 = z;
  simde__m512 c8 = z, c9 = z, c10 = z, c11 = z, c12 = z, c13 = z, c14 = z, c15 = z;

  if (k > 32)   /* C is needed at the end: fetch it now (see gemm_avx2.c) */
    for (int r = 0; r < MR; r++) {
      __builtin_prefetch(c + r * rs_c, 1, 3);
      __builtin_prefetch(c + r * rs_c + NR - 1, 1, 3);
    }

#define FMA_ROW(R, CR) CR = simde_mm512_fmadd_ps(simde_mm512_set1_ps(a[R * rs_a]), b0, CR);
#pragma GCC unroll 4
  for (int64_t p = 0; p < k; p++) {
    simde__m512 b0 = simde_mm512_loadu_ps(b);
    FMA_ROW(0, c0) FMA_ROW(1, c1) FMA_ROW(2, c2) FMA_ROW(3, c3)
    FMA_ROW(4, c4) FMA_ROW(5, c5) FMA_ROW(6, c6) FMA_ROW(7, c7)
    FMA_ROW(8, c8) FMA_ROW(9, c9) FMA_ROW(10, c10) FMA_ROW(11, c11)
    FMA_ROW(12, c12) FMA_ROW(13, c13) FMA_ROW(14, c14) FMA_ROW(15, c15)
    a += cs_a;
    b += NR;
  }
#undef FMA_ROW

  /* Same operations, in the same order, as the driver's edge-tile merge
     (alpha*ab, then + c or + beta*c), so every element rounds alike
     whichever path wrote it. */
  simde__m512 va = simde_mm512_set1_ps(alpha), vb = simde_mm512_set1_ps(beta);
  simde__m512 acc[MR] = { c0, c1, c2, c3, c4, c5, c6, c7,
                          c8, c9, c10, c11, c12, c13, c14, c15 };
  for (int r = 0; r < MR; r++) {
    float *cr = c + r * rs_c;
    simde__m512 t = acc[r];
    if (alpha != 1.0f) t = simde_mm512_mul_ps(va, t);   /* 1 * x is x exactly */
    if (beta == 0.0f) {
    } else if (beta == 1.0f) {
      t = simde_mm512_add_ps(simde_mm512_loadu_ps(cr), t);
    } else {
      t = simde_mm512_add_ps(simde_mm512_mul_ps(vb, simde_mm512_loadu_ps(cr)), t);
    }
    simde_mm512_storeu_ps(cr, t);
  }
}

/* ---- packing A ------------------------------------------------------------------
 * The generic layout (see gemm.c): MR-tall panels, kc columns of MR values.
 * Row-major A (rows contiguous along k, the X of X W) is transposed in 8 x 8
 * register blocks, 16 rows as two of them. */
static void pack_a(int64_t mc, int64_t kc, const float *A, int64_t rs_a, int64_t cs_a,
                   float *dst)
{
  for (int64_t ir = 0; ir < mc; ir += MR, dst += MR * kc) {
    const float *src = A + ir * rs_a;
    int64_t mr = mc - ir < MR ? mc - ir : MR, p = 0;
    if (mr == MR && cs_a == 1) {
      for (; p + 8 <= kc; p += 8)
        for (int h = 0; h < MR; h += 8) {
          simde__m256 r[8];
          for (int i = 0; i < 8; i++) r[i] = simde_mm256_loadu_ps(src + (h + i) * rs_a + p);
          transpose8(r);   /* r[q] = rows h..h+7 of column p+q */
          for (int q = 0; q < 8; q++) simde_mm256_storeu_ps(dst + (p + q) * MR + h, r[q]);
        }
    } else if (mr == MR && rs_a == 1) {   /* column-major A: columns are copies */
      for (; p < kc; p++)
        simde_mm512_storeu_ps(dst + p * MR, simde_mm512_loadu_ps(src + p * cs_a));
    }
    for (; p < kc; p++)
      for (int i = 0; i < MR; i++) dst[p * MR + i] = i < mr ? src[i * rs_a + p * cs_a] : 0.0f;
  }
}

/* ---- narrow N: column tiles ---------------------------------------------------
 * C (m <= 32 rows, n <= 12 columns) = alpha * A B + beta C for an A whose
 * columns are contiguous (a[i + p*cs_a]: the X^T of a backward X^T dY),
 * read in place (see the AVX2 cols_tile).  With 32 registers all of N = 10
 * fits one pass: per k step, 2 zmm loads of A and n FMAs per load, each
 * taking its B element as a broadcast operand — 2n FMAs for n + 2 loads,
 * where the 16 x 5 AVX2 tile needs two passes over A and 7 loads per 10 ymm
 * FMAs.  Rows past m are masked off (never read, come out 0). */
/* Lanes of a[0..15] selected by mask, the others 0; masked-off lanes are
   not read (they may lie past the end of A).  This SIMDe has no masked
   load, so the emulated build copies the lanes one by one. */
static inline __attribute__((always_inline)) simde__m512 maskz_load(simde__mmask16 mask,
                                                                    const float *a)
{
#if defined(SIMDE_X86_AVX512F_NATIVE)
  return _mm512_maskz_loadu_ps(mask, a);
#else
  float t[16] __attribute__((aligned(64)));
  for (int i = 0; i < 16; i++) t[i] = (mask >> i) & 1 ? a[i] : 0.0f;
  return simde_mm512_load_ps(t);
#endif
}

static inline __attribute__((always_inline))
void cols_tile(int NB, int full, int64_t m, int64_t k, const float *a, int64_t cs_a,
               const float *b, int64_t rs_b, int64_t cs_b, float *c, int64_t rs_c,
               int64_t cs_c, float alpha, float beta)
{
  /* Named accumulators, not an array: GCC keeps an array on the stack. */
  simde__m512 z = simde_mm512_setzero_ps();
  simde__m512 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
  simde__m512 c40 = z, c41 = z, c50 = z, c51 = z, c60 = z, c61 = z, c70 = z, c71 = z;
  simde__m512 c80 = z, c81 = z, c90 = z, c91 = z, ca0 = z, ca1 = z, cb0 = z, cb1 = z;
  simde__mmask16 m0 = (simde__mmask16)0xffff, m1 = m0;
  if (!full) {
    m0 = m >= 16 ? (simde__mmask16)0xffff : (simde__mmask16)((1u << m) - 1);
    m1 = m <= 16 ? 0 : (simde__mmask16)((1u << (m - 16)) - 1);
  }
#define COL_STEP(J, A0, A1)                                                 \
  if (NB > J) {                                                             \
    simde__m512 bv = simde_mm512_set1_ps(b[J * cs_b]);                      \
    A0 = simde_mm512_fmadd_ps(a0, bv, A0);                                  \
    A1 = simde_mm512_fmadd_ps(a1, bv, A1);                                  \
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < k; p++) {
    simde__m512 a0 = full ? simde_mm512_loadu_ps(a) : maskz_load(m0, a);
    simde__m512 a1 = full ? simde_mm512_loadu_ps(a + 16) : maskz_load(m1, a + 16);
    COL_STEP(0, c00, c01) COL_STEP(1, c10, c11) COL_STEP(2, c20, c21)
    COL_STEP(3, c30, c31) COL_STEP(4, c40, c41) COL_STEP(5, c50, c51)
    COL_STEP(6, c60, c61) COL_STEP(7, c70, c71) COL_STEP(8, c80, c81)
    COL_STEP(9, c90, c91) COL_STEP(10, ca0, ca1) COL_STEP(11, cb0, cb1)
    a += cs_a;
    b += rs_b;
  }
#undef COL_STEP
  /* alpha first, then the merge in the driver's order (see merge_tile). */
  float t[12][32] __attribute__((aligned(64)));
  simde__m512 va = simde_mm512_set1_ps(alpha);
  simde__m512 acc[12][2] = { { c00, c01 }, { c10, c11 }, { c20, c21 }, { c30, c31 },
                             { c40, c41 }, { c50, c51 }, { c60, c61 }, { c70, c71 },
                             { c80, c81 }, { c90, c91 }, { ca0, ca1 }, { cb0, cb1 } };
  for (int j = 0; j < NB; j++) {
    simde_mm512_store_ps(t[j], simde_mm512_mul_ps(va, acc[j][0]));
    simde_mm512_store_ps(t[j] + 16, simde_mm512_mul_ps(va, acc[j][1]));
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
    if (m == 32) cols_tile(NB, 1, 32, k, a, cs_a, b, rs_b, cs_b, c, rs_c, cs_c, alpha, beta); \
    else cols_tile(NB, 0, m, k, a, cs_a, b, rs_b, cs_b, c, rs_c, cs_c, alpha, beta);       \
    break;
  switch (n) {
  COLS_CASE(1) COLS_CASE(2) COLS_CASE(3) COLS_CASE(4) COLS_CASE(5) COLS_CASE(6)
  COLS_CASE(7) COLS_CASE(8) COLS_CASE(9) COLS_CASE(10) COLS_CASE(11) COLS_CASE(12)
  default: break;
  }
#undef COLS_CASE
}

static void ukr_packed(int64_t k, const float *a, const float *b,
                       float *c, int64_t rs_c, float alpha, float beta)
{
  tile_16x16(k, a, 1, MR, b, c, rs_c, alpha, beta);
}

static void ukr_strided(int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
                        const float *b, float *c, int64_t rs_c, float alpha, float beta)
{
  tile_16x16(k, a, rs_a, cs_a, b, c, rs_c, alpha, beta);
}

const mm_sgemm_kernel mm_sgemm_kernel_avx512 = {
  .name = "avx512", .mr = MR, .nr = NR,
  /* Cache blocks: see the comment at the top of gemm.c. */
  .mc = 144, .kc = 512, .nc = 4080,
  .packed = ukr_packed, .strided = ukr_strided,
  .pack_a = pack_a, .pack_b = mm_sgemm_avx2_pack_b16,
  .cols = ukr_cols, .cols_mr = 32, .cols_nr = 12,
  .dots = mm_sgemm_avx2_dots, .dots_mr = 2, .dots_nr = 6, .pack_bt = mm_sgemm_avx2_pack_bt,
};
