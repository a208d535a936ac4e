/* test_gemm.c — mm_sgemm / mm_dgemm against the naive triple loops.
 *
 * Covers: shapes of 1, primes, random shapes, and sizes just around every
 * block size of the kernel in use (MR, NR, MC, KC, NC +-1); the four
 * transpose combinations; padded (lda > cols) and general strided operands,
 * column-major C, zero strides on dimensions of size 1; alpha and beta of 0,
 * 1 and other values, with beta == 0 over a NaN-filled C; NaN/inf
 * propagation; both the small and the packed path for every shape; the
 * narrow-N paths (column tiles, dot products) for narrow N and narrow M,
 * checking which path ran; 1 vs 2 threads bitwise identical (narrow paths
 * too); the pool's chunking (mm_parallel_for_chunks); mm_dgemm.  Elements of C's allocation outside
 * the view must be left alone.
 *
 * Tolerance per element: the standard bound for a length-K dot product,
 * (K + 2) * eps * (|alpha| sum_k |a_ik||b_kj| + |beta||c_ij|), doubled since
 * both the tested and the reference result carry such an error.
 *
 * Prints one line per failure and ends with "test_gemm: N passed, N failed";
 * exits non-zero on failure.  Without MICROML_KERNEL the battery runs once
 * per SIMD kernel the CPU supports (avx512, avx2), each with its own block
 * sizes and narrow-N tiles; `make test` runs it again with
 * MICROML_KERNEL=portable. */
#include "gemm.h"
#include "cpu.h"
#include "parallel.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

static uint64_t rng = 88172645463325252ULL;
static double urand(void)   /* uniform in [-1, 1) */
{
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return (double)(rng >> 11) / (double)(1ULL << 52) - 1.0;
}
static int64_t irand(int64_t lo, int64_t hi) { return lo + (int64_t)((urand() + 1) / 2 * (hi - lo + 1)); }

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
  va_list ap;
  printf("FAIL ");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  failed++;
}

/* A matrix view over its own allocation, element (i,j) at [i*rs + j*cs].
   layout: 0 row-major, 1 column-major (a transposed operand), 2 row-major
   with padded rows, 3 general strides (neither unit), 4 zero stride on
   whichever dimension has size 1 (else row-major). */
typedef struct {
  int64_t rows, cols, rs, cs;
  size_t n;
  float *f;
  double *d;
} mat;

static const char *layout_name[] = { "row", "col", "pad", "strided", "zero" };

static mat mat_new(int64_t rows, int64_t cols, int layout)
{
  mat m = { .rows = rows, .cols = cols };
  switch (layout) {
  case 0: m.rs = cols; m.cs = 1; break;
  case 1: m.rs = 1; m.cs = rows; break;
  case 2: m.rs = cols + 3; m.cs = 1; break;
  case 3: m.rs = 2 * cols + 1; m.cs = 2; break;
  default: m.rs = rows == 1 ? 0 : cols; m.cs = cols == 1 ? 0 : 1; break;
  }
  m.n = rows && cols ? (size_t)((rows - 1) * m.rs + (cols - 1) * m.cs + 1) : 1;
  m.f = malloc(m.n * sizeof(float));
  m.d = malloc(m.n * sizeof(double));
  for (size_t i = 0; i < m.n; i++) m.f[i] = (float)(m.d[i] = urand());
  return m;
}

static void mat_free(mat *m) { free(m->f); free(m->d); }

#define AT(m, x, i, j) ((m).x[(i) * (m).rs + (j) * (m).cs])

typedef struct {
  int64_t M, N, K;
  int la, lb, lc;
  float alpha, beta;
  int nan_c;          /* fill C with NaN first (only meaningful with beta == 0) */
  int poison;         /* 1: NaN in A, 2: +inf in B, 3: NaN in A with alpha == 0 */
} gcase;

static void describe(char *buf, size_t n, const gcase *c, const char *path)
{
  snprintf(buf, n, "sgemm %lldx%lldx%lld A:%s B:%s C:%s alpha=%g beta=%g%s%s path=%s kernel=%s",
           (long long)c->M, (long long)c->N, (long long)c->K, layout_name[c->la],
           layout_name[c->lb], layout_name[c->lc], c->alpha, c->beta,
           c->nan_c ? " C=NaN" : "", c->poison == 1 ? " NaN-in-A" : c->poison == 2 ? " inf-in-B"
           : c->poison == 3 ? " NaN-in-A,alpha=0" : "", path, mm_kernel_name());
}

/* Compare mm_sgemm (on the given path) with the naive loop for one case. */
static void check_sgemm(const gcase *c, int path)
{
  static const char *path_name[] = { "auto", "small", "packed", "narrow" };
  mat A = mat_new(c->M, c->K, c->la), B = mat_new(c->K, c->N, c->lb), C = mat_new(c->M, c->N, c->lc);
  if (c->poison == 1 || c->poison == 3) AT(A, f, c->M / 2, c->K / 3) = NAN;
  if (c->poison == 2) AT(B, f, c->K / 2, c->N / 3) = INFINITY;
  if (c->nan_c)
    for (int64_t i = 0; i < c->M; i++)
      for (int64_t j = 0; j < c->N; j++) AT(C, f, i, j) = NAN;
  float *c0 = malloc(C.n * sizeof(float)), *ref = malloc(C.n * sizeof(float));
  memcpy(c0, C.f, C.n * sizeof(float));
  memcpy(ref, C.f, C.n * sizeof(float));
  char *inview = calloc(C.n, 1);
  for (int64_t i = 0; i < c->M; i++)
    for (int64_t j = 0; j < c->N; j++) inview[i * C.rs + j * C.cs] = 1;

  mm_sgemm_force_path = path;
  mm_sgemm(c->M, c->N, c->K, c->alpha, A.f, A.rs, A.cs, B.f, B.rs, B.cs, c->beta, C.f, C.rs, C.cs);
  mm_sgemm_force_path = 0;
  mm_sgemm_naive(c->M, c->N, c->K, c->alpha, A.f, A.rs, A.cs, B.f, B.rs, B.cs, c->beta, ref,
                 C.rs, C.cs);

  int bad = 0;
  char what[256];
  for (int64_t i = 0; i < c->M && bad < 1; i++)
    for (int64_t j = 0; j < c->N && bad < 1; j++) {
      size_t at = i * C.rs + j * C.cs;
      float got = C.f[at], want = ref[at];
      double s = 0;
      if (c->alpha != 0)
        for (int64_t p = 0; p < c->K; p++) s += fabs((double)AT(A, f, i, p) * AT(B, f, p, j));
      double cold = c->beta == 0 ? 0 : fabs(c0[at]);
      double tol = 2.0 * (c->K + 2) * FLT_EPSILON * (fabs(c->alpha) * s + fabs(c->beta) * cold)
                   + FLT_MIN;
      int ok = isnan(want) ? isnan(got)
               : isinf(want) ? got == want
               : fabs((double)got - want) <= tol;
      if (!ok) {
        describe(what, sizeof what, c, path_name[path]);
        fail("%s: C[%lld,%lld] = %.9g, naive %.9g, tolerance %.3g", what, (long long)i,
             (long long)j, got, want, tol);
        bad++;
      }
    }
  for (size_t at = 0; at < C.n && !bad; at++)
    if (!inview[at] && memcmp(&C.f[at], &c0[at], sizeof(float))) {
      describe(what, sizeof what, c, path_name[path]);
      fail("%s: wrote outside the view of C at offset %zu", what, at);
      bad++;
    }
  if (!bad) passed++;
  free(c0); free(ref); free(inview);
  mat_free(&A); mat_free(&B); mat_free(&C);
}

static void check_all_paths(const gcase *c)
{
  for (int path = 0; path < 3; path++) check_sgemm(c, path);
}

static void check_shape(int64_t M, int64_t N, int64_t K)
{
  gcase c = { M, N, K, (int)irand(0, 3), (int)irand(0, 3), (int)irand(0, 3), 1.0f, 0.0f, 0, 0 };
  check_all_paths(&c);
}

/* A shape that should take one of the narrow-N paths (column tiles or dot
   products): checked against the naive loop, and the path it took is
   counted, so a change of the selection that left a path untested shows. */
static int narrow_hits[5];
static void check_narrow(const gcase *c, int path)
{
  check_sgemm(c, path);
  int got = mm_sgemm_last_path;
  if (got != MM_SGEMM_PATH_COLS && got != MM_SGEMM_PATH_DOTS) {
    char what[256];
    describe(what, sizeof what, c, path == 3 ? "narrow" : "auto");
    fail("%s: took path %d, expected a narrow-N path", what, got);
  } else {
    narrow_hits[got]++;
  }
}

/* mm_parallel_for_chunks: every task exactly once, in exactly the documented
   chunks, whatever the thread count; also from inside a running loop. */
static int64_t chunk_calls[64][2], chunk_ncalls;
static int task_hits[1000];
static pthread_mutex_t chunk_mu = PTHREAD_MUTEX_INITIALIZER;
static void chunk_fn(void *ctx, int64_t b, int64_t e)
{
  (void)ctx;
  pthread_mutex_lock(&chunk_mu);
  if (chunk_ncalls < 64) {
    chunk_calls[chunk_ncalls][0] = b;
    chunk_calls[chunk_ncalls][1] = e;
  }
  chunk_ncalls++;
  for (int64_t i = b; i < e; i++) task_hits[i]++;
  pthread_mutex_unlock(&chunk_mu);
}
static void check_chunks(int threads, int64_t ntasks, int64_t nchunks)
{
  int nt = mm_get_num_threads();
  mm_set_num_threads(threads);
  memset(task_hits, 0, sizeof task_hits);
  chunk_ncalls = 0;
  mm_parallel_for_chunks(ntasks, nchunks, chunk_fn, NULL);
  mm_set_num_threads(nt);
  int64_t k = nchunks < 1 ? 1 : nchunks > ntasks ? ntasks : nchunks, expect = 0;
  int bad = 0;
  for (int64_t i = 0; i < ntasks; i++) bad |= task_hits[i] != 1;
  for (int64_t c = 0; c < k; c++) {
    int64_t b = ntasks * c / k, e = ntasks * (c + 1) / k, seen = 0;
    if (b == e) continue;
    expect++;
    for (int64_t i = 0; i < chunk_ncalls && i < 64; i++)
      seen += chunk_calls[i][0] == b && chunk_calls[i][1] == e;
    bad |= seen != 1;
  }
  bad |= chunk_ncalls != expect;
  if (bad)
    fail("mm_parallel_for_chunks(%lld tasks, %lld chunks) on %d threads: tasks not run exactly "
         "once in the documented chunks (%lld calls)", (long long)ntasks, (long long)nchunks,
         threads, (long long)chunk_ncalls);
  else passed++;
}

/* 1 thread and 2 threads must give bitwise the same C.  thread_paths
   counts the paths the 2-thread runs took. */
static int thread_paths[6];
static void check_threads(int64_t M, int64_t N, int64_t K, int la, int lb)
{
  mat A = mat_new(M, K, la), B = mat_new(K, N, lb);
  float *c1 = malloc(M * N * sizeof(float)), *c2 = malloc(M * N * sizeof(float));
  for (int64_t i = 0; i < M * N; i++) c1[i] = c2[i] = (float)urand();
  int nt = mm_get_num_threads();
  mm_set_num_threads(1);
  mm_sgemm(M, N, K, 0.5f, A.f, A.rs, A.cs, B.f, B.rs, B.cs, 1.0f, c1, N, 1);
  mm_set_num_threads(2);
  mm_sgemm(M, N, K, 0.5f, A.f, A.rs, A.cs, B.f, B.rs, B.cs, 1.0f, c2, N, 1);
  if (mm_sgemm_last_path >= 0 && mm_sgemm_last_path < 6) thread_paths[mm_sgemm_last_path]++;
  mm_set_num_threads(nt);
  if (memcmp(c1, c2, M * N * sizeof(float)))
    fail("sgemm %lldx%lldx%lld A:%s B:%s kernel=%s: 1 and 2 threads differ", (long long)M,
         (long long)N, (long long)K, layout_name[la], layout_name[lb], mm_kernel_name());
  else passed++;
  free(c1); free(c2);
  mat_free(&A); mat_free(&B);
}

static void check_dgemm(int64_t M, int64_t N, int64_t K, int la, int lb, int lc, double alpha,
                        double beta)
{
  mat A = mat_new(M, K, la), B = mat_new(K, N, lb), C = mat_new(M, N, lc);
  double *ref = malloc(C.n * sizeof(double)), *c0 = malloc(C.n * sizeof(double));
  if (beta == 0)
    for (size_t i = 0; i < C.n; i++) C.d[i] = NAN;
  memcpy(ref, C.d, C.n * sizeof(double));
  memcpy(c0, C.d, C.n * sizeof(double));
  mm_dgemm(M, N, K, alpha, A.d, A.rs, A.cs, B.d, B.rs, B.cs, beta, C.d, C.rs, C.cs);
  mm_dgemm_naive(M, N, K, alpha, A.d, A.rs, A.cs, B.d, B.rs, B.cs, beta, ref, C.rs, C.cs);
  int bad = 0;
  for (int64_t i = 0; i < M && !bad; i++)
    for (int64_t j = 0; j < N && !bad; j++) {
      size_t at = i * C.rs + j * C.cs;
      double s = 0;
      for (int64_t p = 0; p < K; p++) s += fabs(AT(A, d, i, p) * AT(B, d, p, j));
      double tol = 2.0 * (K + 2) * DBL_EPSILON * (fabs(alpha) * s + (beta ? fabs(beta * c0[at]) : 0))
                   + DBL_MIN;
      if (!(fabs(C.d[at] - ref[at]) <= tol)) {
        fail("dgemm %lldx%lldx%lld A:%s B:%s C:%s alpha=%g beta=%g: C[%lld,%lld] = %.17g, "
             "naive %.17g", (long long)M, (long long)N, (long long)K, layout_name[la],
             layout_name[lb], layout_name[lc], alpha, beta, (long long)i, (long long)j, C.d[at],
             ref[at]);
        bad = 1;
      }
    }
  if (!bad) passed++;
  free(ref); free(c0);
  mat_free(&A); mat_free(&B); mat_free(&C);
}

/* The whole battery, for the kernel selected now. */
static void run_suite(void)
{
  const mm_sgemm_kernel *kr = mm_sgemm_current_kernel();
  memset(narrow_hits, 0, sizeof narrow_hits);
  memset(thread_paths, 0, sizeof thread_paths);
  int64_t MR = kr->mr, NR = kr->nr, MC = kr->mc, KC = kr->kc, NC = kr->nc;

  /* Degenerate shapes: nothing to do, or C = beta*C. */
  for (int64_t K = 0; K <= 1; K++) {
    gcase c0 = { 1, 1, K, 0, 0, 0, 1.0f, 0.0f, 1, 0 };
    check_all_paths(&c0);
  }
  gcase kz = { 7, 5, 0, 0, 0, 3, 2.0f, 0.5f, 0, 0 };
  check_all_paths(&kz);
  gcase kz0 = { 7, 5, 0, 0, 0, 0, 2.0f, 0.0f, 1, 0 };
  check_all_paths(&kz0);
  {
    float c = 3.0f;   /* M or N == 0 must not touch C */
    mm_sgemm(0, 5, 5, 1.0f, NULL, 5, 1, NULL, 5, 1, 0.0f, &c, 5, 1);
    mm_sgemm(5, 0, 5, 1.0f, NULL, 5, 1, NULL, 5, 1, 0.0f, &c, 5, 1);
    if (c != 3.0f) fail("sgemm with M or N == 0 wrote C");
    else passed++;
  }

  /* Small sizes and primes, every transpose combination. */
  static const int64_t primes[] = { 1, 2, 3, 5, 7, 11, 13, 17, 31, 37, 61, 97, 127 };
  for (int la = 0; la < 2; la++)
    for (int lb = 0; lb < 2; lb++)
      for (size_t i = 0; i < sizeof primes / sizeof *primes; i += 2)
        for (size_t j = 1; j < sizeof primes / sizeof *primes; j += 3) {
          gcase c = { primes[i], primes[j], primes[(i + j) % 13], la, lb, 0, 1.0f, 0.0f, 0, 0 };
          check_all_paths(&c);
        }

  /* Around every block size: MR, NR, MC, KC, NC (+-1), on both paths. */
  for (int d = -1; d <= 1; d++) {
    check_shape(MR + d, 17, 9);
    check_shape(2 * MR + d, NR + d, 33);
    check_shape(29, NR + d, 20);
    check_shape(3 * NR + d, 2 * NR + d, 5);
    check_shape(MC + d, 23, 19);
    check_shape(2 * MC + d, NR + 1, 7);
    check_shape(13, 21, KC + d);
    check_shape(MR + 1, NR + 1, 2 * KC + d);
    check_shape(5, NC + d, 11);
  }
  check_shape(MC + 1, NR + 3, KC + 1);

  /* Random shapes and layouts, alpha and beta. */
  static const float alphas[] = { 1.0f, -0.75f, 2.5f }, betas[] = { 0.0f, 1.0f, -0.5f };
  for (int t = 0; t < 40; t++) {
    gcase c = { irand(1, 150), irand(1, 150), irand(1, 300), (int)irand(0, 3), (int)irand(0, 3),
                (int)irand(0, 3), alphas[t % 3], betas[(t / 3) % 3], 0, 0 };
    c.nan_c = c.beta == 0;
    check_all_paths(&c);
  }
  /* beta == 0 must not read a NaN-filled C, on every path and layout of C. */
  for (int lc = 0; lc < 4; lc++) {
    gcase c = { 37, 45, 29, 0, 1, lc, 1.5f, 0.0f, 1, 0 };
    check_all_paths(&c);
  }
  /* alpha == 0: C = beta*C, A and B not read (NaN in A does not spread). */
  gcase a0 = { 20, 30, 40, 0, 0, 0, 0.0f, 0.5f, 0, 3 };
  check_all_paths(&a0);
  gcase a00 = { 20, 30, 40, 0, 0, 0, 0.0f, 0.0f, 1, 3 };
  check_all_paths(&a00);

  /* NaN and inf propagate like the naive loop (rows / columns of C). */
  for (int poison = 1; poison <= 2; poison++)
    for (int la = 0; la < 2; la++) {
      gcase c = { 45, 70, 130, la, 1 - la, 0, 1.0f, 0.0f, 0, poison };
      check_all_paths(&c);
      gcase s = { 9, 10, 12, la, la, 0, 1.0f, 1.0f, 0, poison };
      check_all_paths(&s);
    }

  /* Zero strides on dimensions of size 1 (broadcast views), GEMV shapes. */
  for (int t = 0; t < 3; t++) {
    gcase r = { 1, 37, 50, 4, t, 4, 1.0f, 0.0f, 1, 0 };
    check_all_paths(&r);
    gcase cc = { 41, 1, 50, t, 4, 4, 1.0f, 1.0f, 0, 0 };
    check_all_paths(&cc);
    gcase k1 = { 33, 35, 1, 4, 4, t, 2.0f, 0.0f, 0, 0 };
    check_all_paths(&k1);
  }

  /* The MLP shapes the training loop runs, and skinny ones. */
  static const int64_t mlp[][5] = {
    { 128, 256, 784, 0, 0 }, { 784, 256, 128, 1, 0 }, { 128, 784, 256, 0, 1 },
    { 128, 10, 128, 0, 0 },  { 128, 10, 128, 1, 0 },  { 128, 128, 10, 0, 1 },
    { 1, 500, 300, 0, 0 },   { 500, 1, 300, 0, 0 },   { 3, 700, 9, 1, 1 },
  };
  for (size_t i = 0; i < sizeof mlp / sizeof *mlp; i++) {
    gcase c = { mlp[i][0], mlp[i][1], mlp[i][2], (int)mlp[i][3], (int)mlp[i][4], 0, 1.0f, 1.0f, 0, 0 };
    check_sgemm(&c, 0);
  }

  /* Narrow N (a logits layer: N = 10) and, transposed, narrow M: column
     tiles when A has contiguous columns, dot products when A has contiguous
     rows; every width up to the limit, row edges (M not a multiple of the
     tile) and k tails (K not a multiple of 8), every layout of B and C,
     alpha, beta, NaN-filled C with beta = 0. */
  for (int t = 0; t < 90; t++) {
    int64_t n = 1 + t % 12, m = t % 5 == 0 ? n : irand(n, 140), K = irand(1, 140);
    int la = t % 3, lb = (t / 3) % 4, lc = (t / 2) % 4;
    gcase c = { m, n, K, la, lb, lc, alphas[t % 3], betas[(t / 4) % 3], 0, 0 };
    c.nan_c = c.beta == 0;
    if (t % 2) {   /* the transposed problem: M narrow, B rows or columns contiguous */
      c.M = n; c.N = m; c.la = (t / 2) % 2 ? 0 : 3; c.lb = t % 4 == 1 ? 0 : 1;
    }
    check_narrow(&c, 0);
  }
  for (int la = 0; la < 3; la++) {
    gcase f = { 33, 10, 128, la, 0, 0, 1.0f, 0.0f, 1, 0 };   /* the MLP's layer 3 */
    check_narrow(&f, 0);
    gcase g = { 37, 40, 45, la, 1, 1, -0.5f, 1.0f, 0, 0 };   /* forced: any N */
    check_narrow(&g, 3);
    for (int poison = 1; poison <= 2; poison++) {
      gcase p = { 45, 9, 70, la, (la + poison) % 3, 0, 1.0f, 0.0f, 0, poison };
      check_narrow(&p, 0);
    }
  }
  if (narrow_hits[MM_SGEMM_PATH_COLS] < 20 || narrow_hits[MM_SGEMM_PATH_DOTS] < 20)
    fail("narrow-N shapes: %d took the column-tile path, %d the dot-product path; expected "
         "at least 20 each", narrow_hits[MM_SGEMM_PATH_COLS], narrow_hits[MM_SGEMM_PATH_DOTS]);
  else passed++;

  /* The pool: chunks claimed by whichever thread is free. */
  for (int threads = 1; threads <= 3; threads++)
    for (int64_t k = 0; k <= 9; k++) {
      check_chunks(threads, 1 + k * 37 % 50, k);
      check_chunks(threads, 7, k);
    }

  /* Thread count does not change a bit of the result. */
  check_threads(300, 200, 300, 0, 0);
  check_threads(257, 263, 520, 1, 1);
  check_threads(10, 1000, 300, 0, 1);   /* M too small to split: columns are */
  check_threads(1000, 40, 100, 1, 0);
  check_threads(MC * 2 + 5, NR * 3 + 1, KC + 3, 0, 0);
  check_threads(3001, 10, 200, 1, 0);   /* narrow N, column tiles */
  check_threads(3001, 10, 200, 0, 1);   /* narrow N, dot products, B^T in place */
  check_threads(2999, 7, 301, 0, 0);    /* narrow N, dot products, B^T packed */
  check_threads(150, 1100, 256, 0, 1);  /* B block over 1 MiB: one B shared by the threads */
  check_threads(13, 1100, 512, 1, 0);   /* the same, split by columns */
  if (thread_paths[MM_SGEMM_PATH_PACKED] < 2 || thread_paths[MM_SGEMM_PATH_PACKED_PRIVATE_B] < 2 ||
      thread_paths[MM_SGEMM_PATH_COLS] < 1 || thread_paths[MM_SGEMM_PATH_DOTS] < 2)
    fail("2-thread checks: paths shared-B %d, private-B %d, cols %d, dots %d; expected every "
         "threaded path covered", thread_paths[MM_SGEMM_PATH_PACKED],
         thread_paths[MM_SGEMM_PATH_PACKED_PRIVATE_B], thread_paths[MM_SGEMM_PATH_COLS],
         thread_paths[MM_SGEMM_PATH_DOTS]);
  else passed++;

  /* float64. */
  for (int la = 0; la < 4; la++)
    for (int lc = 0; lc < 4; lc++)
      check_dgemm(irand(1, 90), irand(1, 90), irand(1, 300), la, (la + lc) % 4, lc,
                  la == 0 ? 1.0 : -0.5, lc % 3 == 0 ? 0.0 : lc % 3 == 1 ? 1.0 : 0.25);
  check_dgemm(130, 600, 270, 0, 1, 0, 1.0, 0.0);
  check_dgemm(1, 1, 1, 0, 0, 0, 1.0, 0.0);
}

int main(void)
{
  /* With MICROML_KERNEL set (`make test` also runs MICROML_KERNEL=portable),
     that kernel only; else every SIMD kernel this CPU runs, best first, so
     the AVX2 kernel stays covered on a machine that picks AVX-512. */
  const char *env = getenv("MICROML_KERNEL");
  if (env && *env && strcmp(env, "auto")) {
    run_suite();
  } else {
    static const char *const kernels[] = { "avx512", "avx2" };
    int ran = 0;
    for (size_t i = 0; i < sizeof kernels / sizeof *kernels; i++)
      if (mm_set_kernel(kernels[i]) == 0) {
        if (strcmp(mm_sgemm_current_kernel()->name, kernels[i]))
          fail("mm_set_kernel(\"%s\") left the GEMM on kernel %s", kernels[i],
               mm_sgemm_current_kernel()->name);
        printf("test_gemm: kernel %s\n", kernels[i]);
        run_suite();
        ran++;
      }
    if (!ran) run_suite();   /* no SIMD kernel here: the portable one */
    mm_set_kernel("auto");
  }

  mm_gemm_release_buffers();
  mm_parallel_shutdown();
  printf("test_gemm: %d passed, %d failed\n", passed, failed);
  return failed != 0;
}
