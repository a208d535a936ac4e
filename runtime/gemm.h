/* gemm.h — dense matrix multiply for the runtime (internal).
 *
 * Owns: mm_sgemm (the fast float32 GEMM every matmul, linear layer and
 * their backward passes go through), mm_dgemm (float64, simple), the naive
 * reference versions kept for tests and the benchmark, the packing buffers,
 * and the interface between the driver (gemm.c) and the per-ISA micro-kernels
 * (gemm_avx2.c, ...).
 *
 * Element (i,j) of a matrix X lives at X[i*rs_x + j*cs_x]: strides are in
 * elements, any positive value; a transposed operand is just swapped strides,
 * and a stride may be 0 for a dimension of size 1.  C[M,N] = alpha*A[M,K]*B[K,N]
 * + beta*C.  beta == 0 overwrites C without reading it (NaN garbage in C does
 * not leak), alpha == 0 reads neither A nor B.  M, N or K may be 0 (K == 0
 * means C = beta*C).  Results do not depend on the thread count. */
#ifndef MICROML_GEMM_H
#define MICROML_GEMM_H

#include <stdint.h>

#include "microml.h"

void mm_sgemm(int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t rs_a, int64_t cs_a,
              const float *B, int64_t rs_b, int64_t cs_b,
              float beta, float *C, int64_t rs_c, int64_t cs_c);
void mm_dgemm(int64_t M, int64_t N, int64_t K, double alpha,
              const double *A, int64_t rs_a, int64_t cs_a,
              const double *B, int64_t rs_b, int64_t cs_b,
              double beta, double *C, int64_t rs_c, int64_t cs_c);

/* Triple loops, one dot product per element accumulated in the element
   type: the reference for tests and the benchmark's speedup column. */
void mm_sgemm_naive(int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t rs_a, int64_t cs_a,
                    const float *B, int64_t rs_b, int64_t cs_b,
                    float beta, float *C, int64_t rs_c, int64_t cs_c);
void mm_dgemm_naive(int64_t M, int64_t N, int64_t K, double alpha,
                    const double *A, int64_t rs_a, int64_t cs_a,
                    const double *B, int64_t rs_b, int64_t cs_b,
                    double beta, double *C, int64_t rs_c, int64_t cs_c);

/* Free the per-thread packing buffers (they are reallocated on demand).
   Call only while no GEMM is running, e.g. before a leak check. */
void mm_gemm_release_buffers(void);

/* ---- driver <-> micro-kernel interface -------------------------------------
 * A micro-kernel computes one mr x nr tile
 *     C = alpha * (A_panel * B_panel) + beta * C      (beta == 0: C not read)
 * over k steps.  The B panel is packed: k rows of nr contiguous floats.  C has
 * unit column stride and row stride rs_c.
 *   packed:  the A panel is packed too: k columns of mr contiguous floats.
 *   strided: A is read in place, element (r,p) at a[r*rs_a + p*cs_a]; used by
 *            the small-shape path, where packing A costs more than it saves.
 * Both must give bitwise the same tile for the same inputs.  Block sizes
 * mc, kc, nc are the driver's cache blocking for this kernel (mc a multiple
 * of mr, nc of nr). */
typedef struct mm_sgemm_kernel {
  const char *name;
  int mr, nr;
  int mc, kc, nc;
  void (*packed)(int64_t k, const float *a, const float *b,
                 float *c, int64_t rs_c, float alpha, float beta);
  void (*strided)(int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
                  const float *b, float *c, int64_t rs_c, float alpha, float beta);
  /* Packers for this kernel's mr / nr, producing exactly the layouts of
     the generic ones in gemm.c (NULL: use those).  pack_a: rows [0,mc) x
     cols [0,kc) of A into mr-tall panels; pack_b: rows [0,kc) x cols [0,nc)
     of B into nr-wide panels; both zero-padded. */
  void (*pack_a)(int64_t mc, int64_t kc, const float *A, int64_t rs_a, int64_t cs_a,
                 float *dst);
  void (*pack_b)(int64_t kc, int64_t nc, const float *B, int64_t rs_b, int64_t cs_b,
                 float *dst);
  /* Narrow-N path (NULL: none): the whole of C[m x n] = alpha*A*B + beta*C
     for m <= cols_mr, n <= cols_nr, k of any length, where A's columns are
     contiguous (element (i,p) at a[i + p*cs_a]) and B and C have any
     strides; nothing is packed.  Used when N is much narrower than a tile. */
  void (*cols)(int64_t m, int64_t n, int64_t k, const float *a, int64_t cs_a,
               const float *b, int64_t rs_b, int64_t cs_b, float *c, int64_t rs_c,
               int64_t cs_c, float alpha, float beta);
  int cols_mr, cols_nr;
  /* The other narrow-N case (NULL: none): the same C[m x n] for m <=
     dots_mr, n <= dots_nr, but A's rows are contiguous (a[i*rs_a + p]) and
     so are B's columns (b[j*cs_b + p]: B^T row-major, in place or packed);
     each element is a dot product along k. */
  void (*dots)(int64_t m, int64_t n, int64_t k, const float *a, int64_t rs_a,
               const float *b, int64_t cs_b, float *c, int64_t rs_c, int64_t cs_c,
               float alpha, float beta);
  int dots_mr, dots_nr;
  /* B^T packer for dots (NULL: the generic one): dst[j*k + p] =
     B[p*rs_b + j*cs_b] for p < k, j < n. */
  void (*pack_bt)(int64_t k, int64_t n, const float *B, int64_t rs_b, int64_t cs_b,
                  float *dst);
} mm_sgemm_kernel;

/* Limits every kernel respects: the driver keeps an mr x nr tile and, when
   out of memory, an mr x kc panel of A on the stack. */
#define MM_SGEMM_MAX_TILE (16 * 32)
#define MM_SGEMM_MAX_MR 16
#define MM_SGEMM_MAX_KC 512

extern const mm_sgemm_kernel mm_sgemm_kernel_avx2;     /* gemm_avx2.c */
extern const mm_sgemm_kernel mm_sgemm_kernel_avx512;   /* gemm_avx512.c */

/* Pieces of the AVX2 kernel the AVX-512 one reuses (gemm_avx2.c): its
   16-wide B packer, its dot-product tiles and their B^T packer. */
void mm_sgemm_avx2_pack_b16(int64_t kc, int64_t nc, const float *B, int64_t rs_b, int64_t cs_b,
                            float *dst);
void mm_sgemm_avx2_dots(int64_t m, int64_t n, int64_t k, const float *a, int64_t rs_a,
                        const float *b, int64_t cs_b, float *c, int64_t rs_c, int64_t cs_c,
                        float alpha, float beta);
void mm_sgemm_avx2_pack_bt(int64_t k, int64_t n, const float *B, int64_t rs_b, int64_t cs_b,
                           float *dst);

/* The kernel mm_sgemm uses now (it follows mm_set_kernel); for tests and
   the benchmark. */
const mm_sgemm_kernel *mm_sgemm_current_kernel(void);

/* Tuning and test hook: 0 (default) picks the path by shape, 1 forces the
   small path, 2 the packed path, 3 the narrow-N path where the operands
   allow it (else as 0).  Not for production use. */
extern int mm_sgemm_force_path;

/* Test hook: the path the calling thread's last mm_sgemm took. */
enum { MM_SGEMM_PATH_SMALL = 1, MM_SGEMM_PATH_PACKED = 2, MM_SGEMM_PATH_COLS = 3,
       MM_SGEMM_PATH_DOTS = 4, MM_SGEMM_PATH_PACKED_PRIVATE_B = 5 /* threads pack own B */ };
extern _Thread_local int mm_sgemm_last_path;

/* C = A B + beta C in either float dtype (alpha = 1): the one entry point the
   ops use, so float32 and float64 share their calling code. */
void mm_gemm_typed(mm_dtype dt, int64_t M, int64_t N, int64_t K, const void *A, int64_t rs_a,
                   int64_t cs_a, const void *B, int64_t rs_b, int64_t cs_b, double beta, void *C,
                   int64_t rs_c, int64_t cs_c);

#endif
