/* gemm.c — the float32 GEMM driver, float64 GEMM, and the naive references.
 *
 * mm_sgemm is a BLIS-style GEMM (see flame/blis docs/KernelsHowTo.md):
 *
 *   for jc in N step NC            B block (KC x NC) shared by all threads, in L3
 *     for pc in K step KC          pack B block into NR-wide panels   (parallel)
 *       for ic in M step MC        pack A block into MR-tall panels    (parallel:
 *         for jr in NC step NR       each thread takes a range of MR row panels,
 *           for ir in MC step MR     or of NR column panels when M is small)
 *             micro-kernel: C[MR x NR] (+)= A panel * B panel
 *
 * Packing reads A and B through arbitrary (rs, cs) strides, so transposed and
 * strided operands cost nothing extra; panels are zero-padded to MR / NR, so
 * the micro-kernel only ever sees full tiles, and edge tiles of C go through
 * a small buffer and are merged with the same arithmetic the kernel uses.
 *
 * Block sizes (AVX2 kernel, 6 x 16; this machine: Zen 4, L1d 32 KiB 8-way,
 * L2 1 MiB 8-way per core, L3 32 MiB shared; measured with bench/gemm_bench):
 *   KC = 256: a B micro-panel (KC x 16 floats = 16 KiB) stays in half of L1d
 *             while the A micro-panel (6 x KC = 6 KiB) streams past it.
 *   MC = 144: the packed A block (144 x 256 floats = 144 KiB) sits in L2 with
 *             plenty of room for the B panels and C tiles that pass through.
 *             Bigger MC (up to ~480) measured no faster and makes the 2-thread
 *             split of M coarser.
 *   NC = 4080: the packed B block (256 x 4080 floats = 4 MiB) lives in L3;
 *             for the sizes we run, N fits in one block, so B is packed once
 *             per KC step and A blocks are reused across all of N.
 *
 * AVX-512 kernel (16 x 16, gemm_avx512.c; chosen over AVX2 where the CPU has
 * it): same MC and NC, but KC = 512 (the MM_SGEMM_MAX_KC limit).  At 1024^3,
 * one thread, medians of 9: KC 256 -> 102-103 GFLOP/s, 384 -> 103-105, 512
 * -> 106-107 (MC 96/144/192 within 1%); at 2048^3, 2 threads, 194 -> 212.
 * Half as many KC steps halve the passes over C, and the 32 KiB B micro-panel
 * still streams well from L1/L2 with the embedded-broadcast loads of A.
 *
 * Small shapes (2*M*N*K below SMALL_FLOPS = 6e6) take a single-threaded path
 * that does not pack A (the kernel reads it in place through its strides)
 * and packs only B.  Measured at one thread, it beats the packed path by
 * 2-5% up to 200^3 (e.g. 64^3: 97.6 vs 92.5 GFLOP/s; 128^3: 103 vs 101), and
 * by 30% for 128x10x128 (it may also swap to C^T = B^T A^T when N is
 * narrower than a tile, see mm_sgemm).  Two threads start to pay off
 * between 128^3 (4.2e6 flops: 2T 89-95 vs 1T small 103) and 128x128x256
 * (8.4e6: 2T 144 vs 92), so the packed path always threads (PARALLEL_FLOPS).
 *
 * Narrow N (N <= NARROW_N = 12, e.g. the logits layer's N = 10), or narrow
 * M by computing C^T: row tiles 16 wide would leave 6 of 16 lanes idle, and
 * the swap to C^T = B^T A^T used before had to pack all of the wide operand
 * (a quarter of the time went to packing, a sixth to merging C^T's column
 * tiles).  Two dedicated kernels read A and B in place instead:
 *   cols: A's columns contiguous (X^T dY): 16 rows of A x up to 6 columns
 *         of B, two passes of 5 for N = 10, every lane used;
 *   dots: A's rows contiguous (X W): each C element a dot product along k,
 *         B^T read in place or packed (N x K: small next to A).
 * Measured at 128x10x128, one thread, bench/gemm_bench medians on a shared
 * machine: X^T dY 45 -> 66-91 GFLOP/s (OpenBLAS 76-90), X W 48-50 -> 53-79
 * (OpenBLAS 67-71); the spread is the machine's, from run to run.
 *
 * Threads: the compute loop is cut into 2-4 chunks per thread (at most an
 * MC block each) that threads claim as they come free (mm_parallel_for_
 * chunks), so a worker that wakes late or shares its core with another
 * process delays only its last chunk; with one chunk per thread the caller
 * waited for the slow worker's whole half.  The private-B path (mid sizes)
 * does the same with column chunks; a thread packs each A block once for
 * all the chunks it runs (apack_tag).
 *
 * Determinism: C's MR x NR tile grid is fixed by the shape alone and every
 * tile is computed the same way whichever thread does it, and K is never
 * split across threads, so results do not depend on the thread count.  The
 * narrow paths choose their kernel by shape only, and thread over rows.
 *
 * Relies on -ffp-contract=off (implied by -std=c11 in GCC): the edge merge
 * must round exactly like the kernels' explicit mul-then-add. */
#include "gemm.h"

#include "cpu.h"
#include "parallel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SMALL_FLOPS    (6.0e6)   /* 2*M*N*K below this: small path, one thread */
#define PARALLEL_FLOPS (6.0e6)   /* from this on: threads */
#define PRIVATE_B_BYTES (1 << 20) /* packed B block below this: per-thread B */

/* ---- naive references ------------------------------------------------------ */

#define NAIVE_BODY(T)                                                              \
  for (int64_t i = 0; i < M; i++)                                                  \
    for (int64_t j = 0; j < N; j++) {                                              \
      T s = 0;                                                                     \
      if (alpha != 0)                                                              \
        for (int64_t p = 0; p < K; p++) s += A[i * rs_a + p * cs_a] * B[p * rs_b + j * cs_b]; \
      T v = alpha * s, *c = &C[i * rs_c + j * cs_c];                               \
      *c = beta == 0 ? v : beta == 1 ? *c + v : beta * *c + v;                     \
    }

void mm_sgemm_naive(int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t rs_a, int64_t cs_a,
                    const float *B, int64_t rs_b, int64_t cs_b,
                    float beta, float *C, int64_t rs_c, int64_t cs_c)
{
  NAIVE_BODY(float)
}

void mm_dgemm_naive(int64_t M, int64_t N, int64_t K, double alpha,
                    const double *A, int64_t rs_a, int64_t cs_a,
                    const double *B, int64_t rs_b, int64_t cs_b,
                    double beta, double *C, int64_t rs_c, int64_t cs_c)
{
  NAIVE_BODY(double)
}

/* ---- per-thread packing buffers ---------------------------------------------
 * Each thread (the caller and every pool worker) owns two growable 64-byte
 * aligned buffers, found through thread-local pointers.  The nodes are also
 * on a global list so mm_gemm_release_buffers can free them all, including
 * those of workers that have exited; bumping buf_gen invalidates the
 * thread-local pointers. */
enum { BUF_A = 0, BUF_B = 1, BUF_BP = 2 };

/* Private-B column chunks per thread (privb_chunks): 4 measured 0.390 s per
 * 2-thread training epoch against 0.400 for 1 (medians of 6 alternating runs
 * on the shared machine; 2 and 8 in between). */
#define PRIVB_CHUNKS_PER_THREAD 4

_Thread_local int mm_sgemm_last_path;
typedef struct buf_node {
  void *p;
  size_t cap;
  struct buf_node *next;
} buf_node;
static pthread_mutex_t buf_mu = PTHREAD_MUTEX_INITIALIZER;
static buf_node *buf_list;
static atomic_uint buf_gen = 1;
static _Thread_local struct {
  buf_node *slot[3];
  unsigned gen;
} tls_buf;

/* NULL on out-of-memory. */
static float *thread_buffer(int which, size_t nfloats)
{
  unsigned g = atomic_load_explicit(&buf_gen, memory_order_acquire);
  if (tls_buf.gen != g) {
    tls_buf.slot[0] = tls_buf.slot[1] = tls_buf.slot[2] = NULL;
    tls_buf.gen = g;
  }
  buf_node *n = tls_buf.slot[which];
  if (!n) {
    n = calloc(1, sizeof *n);
    if (!n) return NULL;
    pthread_mutex_lock(&buf_mu);
    n->next = buf_list;
    buf_list = n;
    pthread_mutex_unlock(&buf_mu);
    tls_buf.slot[which] = n;
  }
  size_t bytes = (nfloats * sizeof(float) + 63) & ~(size_t)63;
  if (n->cap < bytes) {
    free(n->p);
    n->p = aligned_alloc(64, bytes);
    n->cap = n->p ? bytes : 0;
  }
  return n->p;
}

void mm_gemm_release_buffers(void)
{
  pthread_mutex_lock(&buf_mu);
  for (buf_node *n = buf_list, *next; n; n = next) {
    next = n->next;
    free(n->p);
    free(n);
  }
  buf_list = NULL;
  atomic_fetch_add_explicit(&buf_gen, 1, memory_order_release);
  pthread_mutex_unlock(&buf_mu);
}

/* ---- portable micro-kernel --------------------------------------------------
 * Plain C that GCC vectorises at -O2 for the baseline ISA (SSE2 on x86-64):
 * 4 x 8 accumulators are 8 xmm registers.  Same operation order as the SIMD
 * kernels: products accumulated in k order, then alpha*acc, then + (beta*)c. */
#define PMR 4
#define PNR 8

static inline __attribute__((always_inline))
void portable_tile(int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
                   const float *b, float *c, int64_t rs_c, float alpha, float beta)
{
  float acc[PMR][PNR] = { { 0 } };
  for (int64_t p = 0; p < k; p++) {
    for (int r = 0; r < PMR; r++) {
      float ar = a[r * rs_a];
      for (int j = 0; j < PNR; j++) acc[r][j] += ar * b[j];
    }
    a += cs_a;
    b += PNR;
  }
  for (int r = 0; r < PMR; r++) {
    float *cr = c + r * rs_c;
    for (int j = 0; j < PNR; j++) {
      float t = alpha * acc[r][j];
      cr[j] = beta == 0 ? t : beta == 1 ? cr[j] + t : beta * cr[j] + t;
    }
  }
}

static void portable_packed(int64_t k, const float *a, const float *b,
                            float *c, int64_t rs_c, float alpha, float beta)
{
  portable_tile(k, a, 1, PMR, b, c, rs_c, alpha, beta);
}

static void portable_strided(int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
                             const float *b, float *c, int64_t rs_c, float alpha, float beta)
{
  portable_tile(k, a, rs_a, cs_a, b, c, rs_c, alpha, beta);
}

/* Narrow N (see mm_sgemm_kernel.cols): up to 8 rows x 4 columns, the 8
   rows of a column of A contiguous, so GCC vectorises along them. */
#define PCOLS_MR 8
#define PCOLS_NR 4

static void portable_cols(int64_t m, int64_t n, int64_t k, const float *a, int64_t cs_a,
                          const float *b, int64_t rs_b, int64_t cs_b, float *c, int64_t rs_c,
                          int64_t cs_c, float alpha, float beta)
{
  float acc[PCOLS_NR][PCOLS_MR] = { { 0 } }, av[PCOLS_MR] = { 0 };
  for (int64_t p = 0; p < k; p++, a += cs_a, b += rs_b) {
    for (int r = 0; r < PCOLS_MR; r++) av[r] = r < m ? a[r] : 0.0f;
    for (int j = 0; j < PCOLS_NR; j++) {
      float bj = j < n ? b[j * cs_b] : 0.0f;
      for (int r = 0; r < PCOLS_MR; r++) acc[j][r] += av[r] * bj;
    }
  }
  for (int64_t r = 0; r < m; r++)
    for (int64_t j = 0; j < n; j++) {
      float *cp = c + r * rs_c + j * cs_c, v = alpha * acc[j][r];
      *cp = beta == 0 ? v : beta == 1 ? *cp + v : beta * *cp + v;
    }
}

/* Narrow N, row-major A and B^T: plain dot products, up to 2 x 4. */
static void portable_dots(int64_t m, int64_t n, int64_t k, const float *a, int64_t rs_a,
                          const float *b, int64_t cs_b, float *c, int64_t rs_c, int64_t cs_c,
                          float alpha, float beta)
{
  for (int64_t r = 0; r < m; r++)
    for (int64_t j = 0; j < n; j++) {
      const float *ar = a + r * rs_a, *bj = b + j * cs_b;
      float s = 0;
      for (int64_t p = 0; p < k; p++) s += ar[p] * bj[p];
      float *cp = c + r * rs_c + j * cs_c, v = alpha * s;
      *cp = beta == 0 ? v : beta == 1 ? *cp + v : beta * *cp + v;
    }
}

static const mm_sgemm_kernel kernel_portable = {
  .name = "portable", .mr = PMR, .nr = PNR,
  .mc = 144, .kc = 256, .nc = 4080,
  .packed = portable_packed, .strided = portable_strided,
  .cols = portable_cols, .cols_mr = PCOLS_MR, .cols_nr = PCOLS_NR,
  .dots = portable_dots, .dots_mr = 2, .dots_nr = 4,
};

static const mm_sgemm_kernel *current_kernel(void)
{
  switch (mm_kernel_id()) {
  case MM_KERNEL_AVX2: return &mm_sgemm_kernel_avx2;
  case MM_KERNEL_AVX512: return &mm_sgemm_kernel_avx512;
  default: return &kernel_portable;
  }
}

/* ---- packing ------------------------------------------------------------------
 * The panel widths are compile-time constants in the specialisations below
 * (MR/NR of the kernels we have), so the inner copies are unrolled. */

/* A rows [0, mc) x cols [0, kc) (already offset) -> panels of MR rows, each
   kc columns of MR contiguous values, zero rows below mc. */
static inline __attribute__((always_inline))
void pack_a_w(int MR, int64_t mc, int64_t kc, const float *A, int64_t rs_a, int64_t cs_a,
              float *dst)
{
  for (int64_t ir = 0; ir < mc; ir += MR, dst += MR * kc) {
    const float *src = A + ir * rs_a;
    int64_t mr = mc - ir < MR ? mc - ir : MR;
    if (mr == MR) {
      if (rs_a == 1) {
        for (int64_t p = 0; p < kc; p++)
          for (int r = 0; r < MR; r++) dst[p * MR + r] = src[p * cs_a + r];
      } else {
        for (int64_t p = 0; p < kc; p++)
          for (int r = 0; r < MR; r++) dst[p * MR + r] = src[r * rs_a + p * cs_a];
      }
    } else {
      for (int64_t p = 0; p < kc; p++)
        for (int r = 0; r < MR; r++) dst[p * MR + r] = r < mr ? src[r * rs_a + p * cs_a] : 0.0f;
    }
  }
}

static void pack_a_generic(int MR, int64_t mc, int64_t kc, const float *A, int64_t rs_a, int64_t cs_a,
                   float *dst)
{
  switch (MR) {
  case 6: pack_a_w(6, mc, kc, A, rs_a, cs_a, dst); break;
  case 16: pack_a_w(16, mc, kc, A, rs_a, cs_a, dst); break;
  case 4: pack_a_w(4, mc, kc, A, rs_a, cs_a, dst); break;
  default: pack_a_w(MR, mc, kc, A, rs_a, cs_a, dst); break;
  }
}

/* B rows [0, kc) x cols [0, nc) (already offset) -> panels of NR columns,
   each kc rows of NR contiguous values, zero columns right of nc.
   Row-major B is read row by row across all panels: going panel by panel
   would walk kc rows at a stride of a whole row (often 4 KiB apart: same
   cache set, no prefetch) and cost several times the copy itself. */
static inline __attribute__((always_inline))
void pack_b_w(int NR, int64_t kc, int64_t nc, const float *B, int64_t rs_b, int64_t cs_b,
              float *dst)
{
  int64_t n_full = nc / NR * NR;
  if (cs_b == 1) {
    for (int64_t p = 0; p < kc; p++) {
      const float *src = B + p * rs_b;
      float *d = dst + p * NR;
      for (int64_t jr = 0; jr < n_full; jr += NR, d += NR * kc)
        for (int j = 0; j < NR; j++) d[j] = src[jr + j];
    }
  } else if (rs_b == 1) {                     /* transposed B: read down columns */
    for (int64_t jr = 0; jr < n_full; jr += NR)
      for (int j = 0; j < NR; j++) {
        const float *src = B + (jr + j) * cs_b;
        float *d = dst + jr * kc + j;
        for (int64_t p = 0; p < kc; p++) d[p * NR] = src[p];
      }
  } else {
    for (int64_t jr = 0; jr < n_full; jr += NR)
      for (int64_t p = 0; p < kc; p++)
        for (int j = 0; j < NR; j++) dst[jr * kc + p * NR + j] = B[p * rs_b + (jr + j) * cs_b];
  }
  if (n_full < nc) {                          /* last, zero-padded panel */
    int64_t nr = nc - n_full;
    float *d = dst + n_full * kc;
    for (int64_t p = 0; p < kc; p++)
      for (int j = 0; j < NR; j++)
        d[p * NR + j] = j < nr ? B[p * rs_b + (n_full + j) * cs_b] : 0.0f;
  }
}

static void pack_b_generic(int NR, int64_t kc, int64_t nc, const float *B, int64_t rs_b, int64_t cs_b,
                   float *dst)
{
  switch (NR) {
  case 16: pack_b_w(16, kc, nc, B, rs_b, cs_b, dst); break;
  case 8: pack_b_w(8, kc, nc, B, rs_b, cs_b, dst); break;
  default: pack_b_w(NR, kc, nc, B, rs_b, cs_b, dst); break;
  }
}

static void pack_a(const mm_sgemm_kernel *kr, int64_t mc, int64_t kc, const float *A,
                   int64_t rs_a, int64_t cs_a, float *dst)
{
  if (kr->pack_a) kr->pack_a(mc, kc, A, rs_a, cs_a, dst);
  else pack_a_generic(kr->mr, mc, kc, A, rs_a, cs_a, dst);
}

static void pack_b(const mm_sgemm_kernel *kr, int64_t kc, int64_t nc, const float *B,
                   int64_t rs_b, int64_t cs_b, float *dst)
{
  if (kr->pack_b) kr->pack_b(kc, nc, B, rs_b, cs_b, dst);
  else pack_b_generic(kr->nr, kc, nc, B, rs_b, cs_b, dst);
}

/* ---- C tiles ---------------------------------------------------------------- */

/* The kernel's result for a partial or strided tile (alpha applied, beta 0)
   is in t (row stride ldt); merge its mr x nr corner into C. */
static void merge_tile(const float *t, int64_t ldt, int64_t mr, int64_t nr, float beta,
                       float *c, int64_t rs_c, int64_t cs_c)
{
  for (int64_t r = 0; r < mr; r++)
    for (int64_t j = 0; j < nr; j++) {
      float *cp = c + r * rs_c + j * cs_c, v = t[r * ldt + j];
      *cp = beta == 0 ? v : beta == 1 ? *cp + v : beta * *cp + v;
    }
}

/* C = beta * C, never reading C when beta == 0. */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t rs_c, int64_t cs_c)
{
  if (beta == 1) return;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      float *c = C + i * rs_c + j * cs_c;
      *c = beta == 0 ? 0.0f : beta * *c;
    }
}

/* The step for blocking n by at most max: equal blocks (rounded up to a
   multiple of mult) rather than full blocks and a thin remainder, which
   would run the kernel on a short k loop or pack a sliver. */
static int64_t balanced_step(int64_t n, int64_t max, int64_t mult)
{
  int64_t nblk = (n + max - 1) / max;
  int64_t step = (n + nblk - 1) / nblk;
  step = (step + mult - 1) / mult * mult;
  return step < max ? step : max;
}

/* ---- the packed (big) path -------------------------------------------------- */

typedef struct {
  const mm_sgemm_kernel *kr;
  int64_t M, N, K;
  float alpha, beta;                   /* beta: the one for the current KC step */
  const float *A, *B;
  int64_t rs_a, cs_a, rs_b, cs_b, rs_c, cs_c;
  float *C;
  int64_t jc, nc, pc, kc;              /* the current B block */
  int64_t kc_step, nc_step;            /* K and N blocking for this shape */
  float *bpack;
  int split_n;                         /* tasks are column panels, not row panels */
  uint64_t id;                         /* unique per call: names its packed A blocks */
} sgemm_job;

/* The A block this thread packed last: a thread that runs several column
 * chunks of one GEMM (private-B path) packs each A block once, not once per
 * chunk, so the chunks can be small enough to balance the threads.  (At
 * 784x256x128, the first layer's weight gradient, re-packing all of A per
 * chunk cost more than the balancing won.) */
static _Thread_local struct {
  uint64_t job;
  int64_t pc, lo, hi;       /* the K step, rows [lo, hi) */
  const float *buf;
} apack_tag;
#define APACK_ALL_BYTES (1 << 20)   /* rows of A a thread keeps packed: half its L2 */
static atomic_uint_least64_t sgemm_ids;

static void pack_b_task(void *vctx, int64_t q0, int64_t q1)
{
  sgemm_job *g = vctx;
  int NR = g->kr->nr;
  int64_t j0 = q0 * NR, j1 = q1 * NR < g->nc ? q1 * NR : g->nc;
  pack_b(g->kr, g->kc, j1 - j0, g->B + g->pc * g->rs_b + (g->jc + j0) * g->cs_b,
         g->rs_b, g->cs_b, g->bpack + j0 * g->kc);
}

/* Rows [i0, i1) of C against columns [j0, j1) of the current B block.
   Without an A buffer (out of memory) the kernel reads A in place instead:
   slower, same result. */
static void block_rows_cols_b(const sgemm_job *g, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                              const float *bpack);
static void block_rows_cols(const sgemm_job *g, int64_t i0, int64_t i1, int64_t j0, int64_t j1)
{
  block_rows_cols_b(g, i0, i1, j0, j1, g->bpack);
}

/* The same with B panels packed at bpack (panel jr at bpack + jr*kc). */
static void block_rows_cols_b(const sgemm_job *g, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                              const float *bpack)
{
  const mm_sgemm_kernel *kr = g->kr;
  const int MR = kr->mr, NR = kr->nr;
  const int64_t kc = g->kc, mc_max = balanced_step(i1 - i0, kr->mc, MR);
  /* All of rows [i0, i1) packed side by side when they fit APACK_ALL_BYTES,
     so that the next column chunk this thread runs finds every block
     packed; else one MC block at a time. */
  const int64_t m_pad = (i1 - i0 + MR - 1) / MR * MR;
  const int whole = (double)m_pad * g->kc_step * sizeof(float) <= APACK_ALL_BYTES;
  float *abuf = thread_buffer(BUF_A, (size_t)(whole ? m_pad : kr->mc) * g->kc_step);
  const int cached = whole && abuf && apack_tag.job == g->id && apack_tag.pc == g->pc &&
                     apack_tag.lo == i0 && apack_tag.hi == i1 && apack_tag.buf == abuf;
  float tile[MM_SGEMM_MAX_TILE] __attribute__((aligned(64)));

  for (int64_t ic = i0; ic < i1; ic += mc_max) {
    int64_t mc = i1 - ic < mc_max ? i1 - ic : mc_max;
    const float *a_blk = g->A + ic * g->rs_a + g->pc * g->cs_a;
    float *apack = abuf && whole ? abuf + (ic - i0) * kc : abuf;
    if (apack && !cached) pack_a(kr, mc, kc, a_blk, g->rs_a, g->cs_a, apack);
    for (int64_t jr = j0; jr < j1; jr += NR) {
      int64_t nr = j1 - jr < NR ? j1 - jr : NR;
      const float *bp = bpack + jr * kc;
      for (int64_t ir = 0; ir < mc; ir += MR) {
        int64_t mr = mc - ir < MR ? mc - ir : MR;
        float *c = g->C + (ic + ir) * g->rs_c + (g->jc + jr) * g->cs_c;
        int direct = mr == MR && nr == NR && g->cs_c == 1;
        float *dst = direct ? c : tile;
        int64_t ldd = direct ? g->rs_c : NR;
        float beta = direct ? g->beta : 0.0f;
        if (apack) {
          kr->packed(kc, apack + ir * kc, bp, dst, ldd, g->alpha, beta);
        } else if (mr == MR) {
          kr->strided(kc, a_blk + ir * g->rs_a, g->rs_a, g->cs_a, bp, dst, ldd, g->alpha, beta);
        } else {
          float aedge[MM_SGEMM_MAX_MR * MM_SGEMM_MAX_KC] __attribute__((aligned(64)));
          pack_a(kr, mr, kc, a_blk + ir * g->rs_a, g->rs_a, g->cs_a, aedge);
          kr->packed(kc, aedge, bp, dst, ldd, g->alpha, beta);
        }
        if (!direct) merge_tile(tile, NR, mr, nr, g->beta, c, g->rs_c, g->cs_c);
      }
    }
  }
  if (whole && abuf) {
    apack_tag.job = g->id, apack_tag.pc = g->pc, apack_tag.lo = i0, apack_tag.hi = i1;
    apack_tag.buf = abuf;
  } else {
    apack_tag.job = 0;   /* the buffer holds only the last block */
  }
}

/* Column panels [t0, t1) of the current B block against all of A, this
   thread packing its own B columns into its private buffer: no barrier
   between packing and computing, and no B panel packed by one core and read
   by the other (see sgemm_packed). */
static void private_b_task(void *vctx, int64_t t0, int64_t t1)
{
  sgemm_job *g = vctx;
  int NR = g->kr->nr;
  int64_t j0 = t0 * NR, j1 = t1 * NR < g->nc ? t1 * NR : g->nc;
  float *bp = thread_buffer(BUF_BP, (size_t)g->kc_step * (t1 - t0) * NR);
  if (!bp) {   /* out of memory: the kernel path that needs no B buffer */
    for (int64_t j = j0; j < j1; j++)
      mm_sgemm_naive(g->M, 1, g->kc, g->alpha, g->A + g->pc * g->cs_a, g->rs_a, g->cs_a,
                     g->B + g->pc * g->rs_b + (g->jc + j) * g->cs_b, g->rs_b, g->cs_b, g->beta,
                     g->C + (g->jc + j) * g->cs_c, g->rs_c, g->cs_c);
    return;
  }
  pack_b(g->kr, g->kc, j1 - j0, g->B + g->pc * g->rs_b + (g->jc + j0) * g->cs_b, g->rs_b,
         g->cs_b, bp);
  block_rows_cols_b(g, 0, g->M, j0, j1, bp - j0 * g->kc);
}

static void compute_task(void *vctx, int64_t t0, int64_t t1)
{
  sgemm_job *g = vctx;
  if (g->split_n) {
    int64_t NR = g->kr->nr, j1 = t1 * NR < g->nc ? t1 * NR : g->nc;
    block_rows_cols(g, 0, g->M, t0 * NR, j1);
  } else {
    int64_t MR = g->kr->mr, i1 = t1 * MR < g->M ? t1 * MR : g->M;
    block_rows_cols(g, t0 * MR, i1, 0, g->nc);
  }
}

/* Column chunks of the private-B path, claimed as threads come free.  With
 * one chunk per thread the caller waited for the other thread's whole half
 * whenever that thread started late or ran slower (a shared core): 9 us per
 * GEMM of the benchmark MLP's step, measured in the pool's wait.  Smaller
 * chunks cost no extra packing (each B panel is packed by its chunk, each A
 * block once per thread, see apack_tag). */
static int64_t privb_chunks(int64_t n_panels, int nt)
{
  int64_t c = (int64_t)nt * PRIVB_CHUNKS_PER_THREAD;
  return c < n_panels ? c : n_panels;
}

/* Returns -1 if a packing buffer could not be allocated. */
static int sgemm_packed(sgemm_job *g, int threads)
{
  const mm_sgemm_kernel *kr = g->kr;
  g->kc_step = balanced_step(g->K, kr->kc, 8);
  g->nc_step = balanced_step(g->N, kr->nc, kr->nr);
  g->bpack = thread_buffer(BUF_B, (size_t)g->kc_step * g->nc_step);
  if (!g->bpack) return -1;
  int nt = threads ? mm_get_num_threads() : 1;
  float beta0 = g->beta;

  for (g->jc = 0; g->jc < g->N; g->jc += g->nc_step) {
    g->nc = g->N - g->jc < g->nc_step ? g->N - g->jc : g->nc_step;
    int64_t n_panels = (g->nc + kr->nr - 1) / kr->nr;
    int64_t m_panels = (g->M + kr->mr - 1) / kr->mr;
    g->split_n = m_panels < 4 * nt && n_panels > m_panels;
    /* Chunks of at most an MC block each, and 2 to 4 per thread: threads
       claim them as they come free, so a thread slowed down by another
       process on its core (a shared machine) costs only its last chunk. */
    int64_t tasks = g->split_n ? n_panels : m_panels, per_blk = kr->mc / kr->mr;
    int64_t cpt = (tasks + nt * per_blk - 1) / (nt * per_blk);
    int64_t chunks = nt * (cpt < 2 ? 2 : cpt > 4 ? 4 : cpt);
    /* Mid sizes (the B block under 1 MiB, one core's L2): each thread packs
       the B panels of its own columns and runs all of A against them.  A
       shared B block needs a barrier between packing and computing, and
       half of it, packed by the other core, crosses between the L2s: at
       128x256x128 that cost a third of the time (2 threads 120-136 GFLOP/s
       shared, 158-173 private, one thread 101).  For bigger B blocks, which
       stream from L3 either way, the shared block measured 2-6% faster at
       1024^3 and packs A once instead of once per thread. */
    int private_b = nt > 1 && n_panels >= nt &&
                    (double)g->kc_step * g->nc * sizeof(float) < PRIVATE_B_BYTES;
    if (private_b) mm_sgemm_last_path = MM_SGEMM_PATH_PACKED_PRIVATE_B;
    for (g->pc = 0; g->pc < g->K; g->pc += g->kc_step) {
      g->kc = g->K - g->pc < g->kc_step ? g->K - g->pc : g->kc_step;
      g->beta = g->pc == 0 ? beta0 : 1.0f;
      if (private_b) {
        mm_parallel_for_chunks(n_panels, privb_chunks(n_panels, nt), private_b_task, g);
      } else if (nt > 1) {
        mm_parallel_for(n_panels, pack_b_task, g);
        mm_parallel_for_chunks(tasks, chunks, compute_task, g);
      } else {
        pack_b_task(g, 0, n_panels);
        compute_task(g, 0, g->split_n ? n_panels : m_panels);
      }
    }
  }
  return 0;
}

/* ---- the small path -----------------------------------------------------------
 * Single-threaded; A is read in place by the kernel's strided entry (only a
 * last partial row panel is packed), B is packed per KC x NC block. */
static int sgemm_small(sgemm_job *g)
{
  const mm_sgemm_kernel *kr = g->kr;
  const int MR = kr->mr, NR = kr->nr;
  int64_t kc_step = balanced_step(g->K, kr->kc, 8), nc_step = balanced_step(g->N, kr->nc, NR);
  size_t bsize = (size_t)kc_step * nc_step;
  float *bpack = thread_buffer(BUF_B, bsize);
  if (!bpack) return -1;
  float tile[MM_SGEMM_MAX_TILE] __attribute__((aligned(64)));
  float aedge[MM_SGEMM_MAX_MR * MM_SGEMM_MAX_KC] __attribute__((aligned(64)));
  int64_t m_full = g->M / MR * MR;

  for (int64_t jc = 0; jc < g->N; jc += nc_step) {
    int64_t nc = g->N - jc < nc_step ? g->N - jc : nc_step;
    for (int64_t pc = 0; pc < g->K; pc += kc_step) {
      int64_t kc = g->K - pc < kc_step ? g->K - pc : kc_step;
      float beta = pc == 0 ? g->beta : 1.0f;
      pack_b(kr, kc, nc, g->B + pc * g->rs_b + jc * g->cs_b, g->rs_b, g->cs_b, bpack);
      if (m_full < g->M)
        pack_a(kr, g->M - m_full, kc, g->A + m_full * g->rs_a + pc * g->cs_a,
               g->rs_a, g->cs_a, aedge);
      for (int64_t jr = 0; jr < nc; jr += NR) {
        int64_t nr = nc - jr < NR ? nc - jr : NR;
        const float *bp = bpack + jr * kc;
        for (int64_t ir = 0; ir < g->M; ir += MR) {
          int64_t mr = g->M - ir < MR ? g->M - ir : MR;
          const float *a = g->A + ir * g->rs_a + pc * g->cs_a;
          float *c = g->C + ir * g->rs_c + (jc + jr) * g->cs_c;
          int direct = mr == MR && nr == NR && g->cs_c == 1;
          float *dst = direct ? c : tile;
          int64_t ldd = direct ? g->rs_c : NR;
          float b = direct ? beta : 0.0f;
          if (mr == MR) kr->strided(kc, a, g->rs_a, g->cs_a, bp, dst, ldd, g->alpha, b);
          else kr->packed(kc, aedge, bp, dst, ldd, g->alpha, b);
          if (!direct) merge_tile(tile, NR, mr, nr, beta, c, g->rs_c, g->cs_c);
        }
      }
    }
  }
  return 0;
}

/* ---- the narrow-N path ----------------------------------------------------------
 * N of a few columns (the logits layer: N = 10) and A with contiguous
 * columns: the kernel's column tiles read A and B in place, nothing is
 * packed.  Tasks are blocks of cols_mr rows; each covers all of N in column
 * groups of equal width, while its rows of A are still in L1. */
typedef struct {
  const mm_sgemm_kernel *kr;
  int64_t M, N, K, nb;
  float alpha, beta;
  const float *A, *B;
  int64_t cs_a, rs_b, cs_b, rs_c, cs_c;
  float *C;
} cols_job;

static void cols_task(void *vctx, int64_t t0, int64_t t1)
{
  const cols_job *g = vctx;
  const int64_t MR = g->kr->cols_mr;
  for (int64_t t = t0; t < t1; t++) {
    int64_t i0 = t * MR, m = g->M - i0 < MR ? g->M - i0 : MR;
    for (int64_t j0 = 0; j0 < g->N; j0 += g->nb) {
      int64_t n = g->N - j0 < g->nb ? g->N - j0 : g->nb;
      g->kr->cols(m, n, g->K, g->A + i0, g->cs_a, g->B + j0 * g->cs_b, g->rs_b, g->cs_b,
                  g->C + i0 * g->rs_c + j0 * g->cs_c, g->rs_c, g->cs_c, g->alpha, g->beta);
    }
  }
}

static void sgemm_cols(cols_job *g, int threads)
{
  int64_t groups = (g->N + g->kr->cols_nr - 1) / g->kr->cols_nr;
  g->nb = (g->N + groups - 1) / groups;
  int64_t ntasks = (g->M + g->kr->cols_mr - 1) / g->kr->cols_mr;
  if (threads) mm_parallel_for(ntasks, cols_task, g);
  else cols_task(g, 0, ntasks);
}

/* The dot-product variant: A's rows and B's columns contiguous (B^T is
   packed when they are not: N x K floats, small next to the M x K of A). */
typedef struct {
  const mm_sgemm_kernel *kr;
  int64_t M, N, K, nb;
  float alpha, beta;
  const float *A, *Bt;
  int64_t rs_a, rs_bt, rs_c, cs_c;
  float *C;
} dots_job;

static void dots_task(void *vctx, int64_t t0, int64_t t1)
{
  const dots_job *g = vctx;
  const int64_t MR = g->kr->dots_mr;
  for (int64_t t = t0; t < t1; t++) {
    int64_t i0 = t * MR, m = g->M - i0 < MR ? g->M - i0 : MR;
    for (int64_t j0 = 0; j0 < g->N; j0 += g->nb) {
      int64_t n = g->N - j0 < g->nb ? g->N - j0 : g->nb;
      g->kr->dots(m, n, g->K, g->A + i0 * g->rs_a, g->rs_a, g->Bt + j0 * g->rs_bt, g->rs_bt,
                  g->C + i0 * g->rs_c + j0 * g->cs_c, g->rs_c, g->cs_c, g->alpha, g->beta);
    }
  }
}

/* Returns -1 if B^T had to be packed and there was no memory for it. */
static int sgemm_dots(dots_job *g, int64_t rs_b, int64_t cs_b, int threads)
{
  if (rs_b != 1) {
    float *bt = thread_buffer(BUF_B, (size_t)g->N * g->K);
    if (!bt) return -1;
    if (g->kr->pack_bt) {
      g->kr->pack_bt(g->K, g->N, g->Bt, rs_b, cs_b, bt);
    } else {
      for (int64_t p = 0; p < g->K; p++)
        for (int64_t j = 0; j < g->N; j++) bt[j * g->K + p] = g->Bt[p * rs_b + j * cs_b];
    }
    g->Bt = bt;
    g->rs_bt = g->K;
  } else {
    g->rs_bt = cs_b;
  }
  int64_t groups = (g->N + g->kr->dots_nr - 1) / g->kr->dots_nr;
  g->nb = (g->N + groups - 1) / groups;
  int64_t ntasks = (g->M + g->kr->dots_mr - 1) / g->kr->dots_mr;
  if (threads) mm_parallel_for(ntasks, dots_task, g);
  else dots_task(g, 0, ntasks);
  return 0;
}

/* N at most this many columns (and A's columns contiguous) takes the
   narrow path; from about 3/4 of a 16-wide tile on, the row tiles waste
   little and share the packed A blocks better. */
#define NARROW_N 12

/* The fraction of tiles of width w that n fills. */
static double tile_fill(int64_t n, int w)
{
  return (double)n / ((n + w - 1) / w * w);
}

int mm_sgemm_force_path = 0;

const mm_sgemm_kernel *mm_sgemm_current_kernel(void) { return current_kernel(); }

void mm_sgemm(int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t rs_a, int64_t cs_a,
              const float *B, int64_t rs_b, int64_t cs_b,
              float beta, float *C, int64_t rs_c, int64_t cs_c)
{
  mm_sgemm_last_path = 0;
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0) {
    scale_c(M, N, beta, C, rs_c, cs_c);
    return;
  }
  const mm_sgemm_kernel *kr = current_kernel();
  double flops = 2.0 * M * N * K;
  if (kr->cols && (mm_sgemm_force_path == 0 || mm_sgemm_force_path == 3)) {
    int64_t lim = mm_sgemm_force_path == 3 ? INT64_MAX : NARROW_N;
    /* C itself when its N is narrow and A has contiguous columns; else C^T
       = B^T A^T when M is narrow and B has contiguous rows. */
    int direct = N <= lim && rs_a == 1 && (M >= N || cs_b != 1);
    if (direct || (M <= lim && cs_b == 1)) {
      cols_job g = {
        .kr = kr, .M = direct ? M : N, .N = direct ? N : M, .K = K,
        .alpha = alpha, .beta = beta, .A = direct ? A : B, .B = direct ? B : A,
        .cs_a = direct ? cs_a : rs_b, .rs_b = direct ? rs_b : cs_a,
        .cs_b = direct ? cs_b : rs_a, .C = C, .rs_c = direct ? rs_c : cs_c,
        .cs_c = direct ? cs_c : rs_c,
      };
      sgemm_cols(&g, flops >= PARALLEL_FLOPS);
      mm_sgemm_last_path = MM_SGEMM_PATH_COLS;
      return;
    }
    /* The same with row-major A (B^T row-major or packed), or its
       transpose with column-major B. */
    direct = N <= lim && cs_a == 1 && (M >= N || rs_b != 1);
    if (direct || (M <= lim && rs_b == 1)) {
      dots_job g = {
        .kr = kr, .M = direct ? M : N, .N = direct ? N : M, .K = K,
        .alpha = alpha, .beta = beta, .A = direct ? A : B, .Bt = direct ? B : A,
        .rs_a = direct ? rs_a : cs_b, .C = C, .rs_c = direct ? rs_c : cs_c,
        .cs_c = direct ? cs_c : rs_c,
      };
      if (sgemm_dots(&g, direct ? rs_b : cs_a, direct ? cs_b : rs_a,
                     flops >= PARALLEL_FLOPS) == 0) {
        mm_sgemm_last_path = MM_SGEMM_PATH_DOTS;
        return;
      }
    }
  }
  int small = mm_sgemm_force_path ? mm_sgemm_force_path == 1 : flops < SMALL_FLOPS;
  /* Compute C^T = B^T A^T instead when C is column-major (so the kernels
     store rows), or, on the small path, when N is narrower than the tile
     and M is not (e.g. N = 10 fills 10/16 of each tile; as rows, 10/12). */
  if ((cs_c != 1 && rs_c == 1) ||
      (small && cs_c == 1 && tile_fill(M, kr->mr) * tile_fill(N, kr->nr) <
                             0.8 * tile_fill(N, kr->mr) * tile_fill(M, kr->nr))) {
    int64_t t;
    const float *p;
    t = M; M = N; N = t;
    p = A; A = B; B = p;
    t = rs_a; rs_a = cs_b; cs_b = t;
    t = cs_a; cs_a = rs_b; rs_b = t;
    t = rs_c; rs_c = cs_c; cs_c = t;
  }
  sgemm_job g = {
    .id = atomic_fetch_add_explicit(&sgemm_ids, 1, memory_order_relaxed) + 1,
    .kr = kr, .M = M, .N = N, .K = K, .alpha = alpha, .beta = beta,
    .A = A, .B = B, .rs_a = rs_a, .cs_a = cs_a, .rs_b = rs_b, .cs_b = cs_b,
    .C = C, .rs_c = rs_c, .cs_c = cs_c,
  };
  mm_sgemm_last_path = small ? MM_SGEMM_PATH_SMALL : MM_SGEMM_PATH_PACKED;
  int rc = small ? sgemm_small(&g) : sgemm_packed(&g, flops >= PARALLEL_FLOPS);
  if (rc != 0)   /* out of memory for packing buffers: slow but correct */
    mm_sgemm_naive(M, N, K, alpha, A, rs_a, cs_a, B, rs_b, cs_b, beta, C, rs_c, cs_c);
}

/* ---- float64 -------------------------------------------------------------------
 * Not performance-critical (float64 is for checks and small problems): a
 * plain i-k-j loop, blocked over k and j so a block of B rows stays in cache,
 * with unit-stride inner loops when C and B rows are contiguous. */
void mm_dgemm(int64_t M, int64_t N, int64_t K, double alpha,
              const double *A, int64_t rs_a, int64_t cs_a,
              const double *B, int64_t rs_b, int64_t cs_b,
              double beta, double *C, int64_t rs_c, int64_t cs_c)
{
  if (M <= 0 || N <= 0) return;
  if (cs_c != 1 && rs_c == 1) {   /* column-major C: do the transpose problem */
    mm_dgemm(N, M, K, alpha, B, cs_b, rs_b, A, cs_a, rs_a, beta, C, cs_c, 1);
    return;
  }
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double *c = C + i * rs_c + j * cs_c;
      *c = beta == 0 ? 0.0 : beta == 1 ? *c : beta * *c;
    }
  if (K <= 0 || alpha == 0) return;
  enum { KB = 128, JB = 512 };
  for (int64_t j0 = 0; j0 < N; j0 += JB) {
    int64_t j1 = N - j0 < JB ? N : j0 + JB;
    for (int64_t p0 = 0; p0 < K; p0 += KB) {
      int64_t p1 = K - p0 < KB ? K : p0 + KB;
      for (int64_t i = 0; i < M; i++) {
        double *c = C + i * rs_c;
        for (int64_t p = p0; p < p1; p++) {
          double a = alpha * A[i * rs_a + p * cs_a];
          const double *b = B + p * rs_b;
          if (cs_c == 1 && cs_b == 1)
            for (int64_t j = j0; j < j1; j++) c[j] += a * b[j];
          else
            for (int64_t j = j0; j < j1; j++) c[j * cs_c] += a * b[j * cs_b];
        }
      }
    }
  }
}

void mm_gemm_typed(mm_dtype dt, int64_t M, int64_t N, int64_t K, const void *A, int64_t rs_a,
                   int64_t cs_a, const void *B, int64_t rs_b, int64_t cs_b, double beta, void *C,
                   int64_t rs_c, int64_t cs_c) {
  if (dt == MM_FLOAT32)
    mm_sgemm(M, N, K, 1.0f, A, rs_a, cs_a, B, rs_b, cs_b, (float)beta, C, rs_c, cs_c);
  else
    mm_dgemm(M, N, K, 1.0, A, rs_a, cs_a, B, rs_b, cs_b, beta, C, rs_c, cs_c);
}
