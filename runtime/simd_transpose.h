/* simd_transpose.h — the 8 x 8 float register transpose that the AVX2 and
 * AVX-512 packers share.  Header-only and inline, so each kernel file
 * compiles it with its own ISA flags; include it after the SIMDe header. */
#ifndef MICROML_SIMD_TRANSPOSE_H
#define MICROML_SIMD_TRANSPOSE_H

/* Transpose the 8 x 8 block r[0..7] in place: r[i][j] -> r[j][i]. */
static inline __attribute__((always_inline)) void transpose8(simde__m256 r[8]) {
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

#endif
