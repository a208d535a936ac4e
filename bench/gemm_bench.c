/* gemm_bench.c — float32 GEMM throughput: MicroML against the naive triple
 * loop and against OpenBLAS, at 1 thread and at all threads, measured
 * alternately in one run (one sample of each in turn, per round) and
 * reported as medians, because the machine is shared and noisy.
 *
 * Shapes: squares 64..2048, and the MLP 784-256-128-10 at batch 128:
 * forward X*W, backward X^T*dY and dY*W^T per layer, the transposes given
 * as strides exactly as the autograd code passes them.
 *
 *   gemm_bench [--quick] [--rounds N] [--square-only|--mlp-only] [--path small|packed]
 *
 * Built with -DHAVE_OPENBLAS when OpenBLAS is installed (bench/bench.mk). */
#include "gemm.h"
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif


typedef struct {
  const char *name;
  int64_t M, N, K;
  int ta, tb;   /* operand stored transposed: A as K x M, B as N x K */
} bench_case;

static const bench_case squares[] = {
  { "64", 64, 64, 64, 0, 0 },       { "128", 128, 128, 128, 0, 0 },
  { "256", 256, 256, 256, 0, 0 },   { "512", 512, 512, 512, 0, 0 },
  { "1024", 1024, 1024, 1024, 0, 0 }, { "2048", 2048, 2048, 2048, 0, 0 },
};
/* Layer l: X [128 x in], W [in x out], dY [128 x out].
   forward Y = X W; backward dW = X^T dY (A transposed), dX = dY W^T (B transposed). */
static const bench_case mlp[] = {
  { "L1 fwd X*W", 128, 256, 784, 0, 0 },
  { "L1 bwd Xt*dY", 784, 256, 128, 1, 0 },
  { "L1 bwd dY*Wt", 128, 784, 256, 0, 1 },
  { "L2 fwd X*W", 128, 128, 256, 0, 0 },
  { "L2 bwd Xt*dY", 256, 128, 128, 1, 0 },
  { "L2 bwd dY*Wt", 128, 256, 128, 0, 1 },
  { "L3 fwd X*W", 128, 10, 128, 0, 0 },
  { "L3 bwd Xt*dY", 128, 10, 128, 1, 0 },
  { "L3 bwd dY*Wt", 128, 128, 10, 0, 1 },
};

enum { NAIVE, MM1, MMN, OB1, OBN, NIMPL };
static const char *impl_names[NIMPL] = { "naive", "MicroML 1T", "MicroML nT", "OpenBLAS 1T",
                                         "OpenBLAS nT" };

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n)
{
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct {
  const bench_case *bc;
  float *A, *B, *C;
  int64_t rs_a, cs_a, rs_b, cs_b;
  int64_t naive_rows;   /* naive runs on the first naive_rows rows only */
} problem;

static int nthreads_all;

static void run_impl(const problem *p, int impl)
{
  const bench_case *c = p->bc;
  switch (impl) {
  case NAIVE:
    mm_sgemm_naive(p->naive_rows, c->N, c->K, 1.0f, p->A, p->rs_a, p->cs_a, p->B, p->rs_b,
                   p->cs_b, 0.0f, p->C, c->N, 1);
    break;
  case MM1: case MMN:
    mm_set_num_threads(impl == MM1 ? 1 : nthreads_all);
    mm_sgemm(c->M, c->N, c->K, 1.0f, p->A, p->rs_a, p->cs_a, p->B, p->rs_b, p->cs_b, 0.0f,
             p->C, c->N, 1);
    break;
#ifdef HAVE_OPENBLAS
  case OB1: case OBN:
    openblas_set_num_threads(impl == OB1 ? 1 : nthreads_all);
    cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans,
                c->tb ? CblasTrans : CblasNoTrans, (int)c->M, (int)c->N, (int)c->K, 1.0f,
                p->A, c->ta ? (int)c->M : (int)c->K, p->B, c->tb ? (int)c->K : (int)c->N,
                0.0f, p->C, (int)c->N);
    break;
#endif
  }
}

/* One sample: GFLOP/s over enough back-to-back calls to last ~target s. */
static double sample(const problem *p, int impl, int iters)
{
  int64_t rows = impl == NAIVE ? p->naive_rows : p->bc->M;
  run_impl(p, impl);   /* warm: thread count change, caches */
  double t0 = now();
  for (int i = 0; i < iters; i++) run_impl(p, impl);
  double t = now() - t0;
  usleep(1000);   /* let spinning pool threads (ours, OpenBLAS's) go to sleep */
  return 2.0 * rows * p->bc->N * p->bc->K * iters / t * 1e-9;
}

static int iters_for(const problem *p, int impl, double target)
{
  int64_t rows = impl == NAIVE ? p->naive_rows : p->bc->M;
  run_impl(p, impl);
  double t0 = now();
  run_impl(p, impl);
  double t = now() - t0;
  (void)rows;
  int n = (int)(target / (t > 1e-7 ? t : 1e-7));
  return n < 1 ? 1 : n > 100000 ? 100000 : n;
}

static void bench(const bench_case *bc, int rounds, int naive_rounds, int have_ob)
{
  problem p = { .bc = bc };
  int64_t M = bc->M, N = bc->N, K = bc->K;
  p.A = malloc(sizeof(float) * M * K);
  p.B = malloc(sizeof(float) * K * N);
  p.C = malloc(sizeof(float) * M * N);
  float *ref = malloc(sizeof(float) * M * N);
  for (int64_t i = 0; i < M * K; i++) p.A[i] = (float)rand() / RAND_MAX * 2 - 1;
  for (int64_t i = 0; i < K * N; i++) p.B[i] = (float)rand() / RAND_MAX * 2 - 1;
  p.rs_a = bc->ta ? 1 : K;  p.cs_a = bc->ta ? M : 1;
  p.rs_b = bc->tb ? 1 : N;  p.cs_b = bc->tb ? K : 1;
  /* The naive loop is ~100x slower: on big shapes it runs on 64 rows. */
  p.naive_rows = M * N * K > 64LL * 1024 * 1024 ? 64 : M;

  /* Sanity: MicroML against the naive result (on the rows naive does). */
  run_impl(&p, NAIVE);
  memcpy(ref, p.C, sizeof(float) * p.naive_rows * N);
  run_impl(&p, MMN);
  int path = mm_sgemm_last_path;
  double maxerr = 0;
  for (int64_t i = 0; i < p.naive_rows * N; i++) {
    double e = fabs(p.C[i] - ref[i]) / (K * 1.2e-7 + 1e-30);   /* |a|,|b| <= 1 */
    if (e > maxerr) maxerr = e;
  }

  int impls[NIMPL], nimpl = 0;
  impls[nimpl++] = NAIVE;
  impls[nimpl++] = MM1;
  if (nthreads_all > 1) impls[nimpl++] = MMN;
  if (have_ob) {
    impls[nimpl++] = OB1;
    if (nthreads_all > 1) impls[nimpl++] = OBN;
  }
  int iters[NIMPL];
  double samples[NIMPL][64], med[NIMPL] = { 0 };
  int ns[NIMPL] = { 0 };
  for (int i = 0; i < nimpl; i++)
    iters[impls[i]] = iters_for(&p, impls[i], impls[i] == NAIVE ? 0.05 : 0.02);
  for (int r = 0; r < rounds; r++)
    for (int i = 0; i < nimpl; i++) {
      int im = impls[(i + r) % nimpl];   /* rotate who goes first */
      if (im == NAIVE && r >= naive_rounds) continue;
      samples[im][ns[im]++] = sample(&p, im, iters[im]);
    }
  for (int i = 0; i < nimpl; i++) med[impls[i]] = median(samples[impls[i]], ns[impls[i]]);
  if (nthreads_all == 1) med[MMN] = med[MM1], med[OBN] = med[OB1];

  char shape[64];
  snprintf(shape, sizeof shape, "%lldx%lldx%lld%s%s", (long long)M, (long long)N,
           (long long)K, bc->ta ? " At" : "", bc->tb ? " Bt" : "");
  printf("%-14s %-20s %7.2f%s %8.1f %8.1f", bc->name, shape, med[NAIVE],
         p.naive_rows < M ? "*" : " ", med[MM1], med[MMN]);
  if (have_ob)
    printf(" %8.1f %8.1f %7.2f %7.2f", med[OB1], med[OBN], med[MM1] / med[OB1],
           med[MMN] / med[OBN]);
  else
    printf(" %8s %8s %7s %7s", "n/a", "n/a", "n/a", "n/a");
  printf(" %8.1f %6.2f", med[MM1] / med[NAIVE], med[MMN] / med[MM1]);
  if (have_ob) printf(" %6.2f", med[OBN] / med[OB1]);
  else printf(" %6s", "n/a");
  static const char *path_names[] = { "?", "small", "packed", "cols", "dots", "privB" };
  printf("  %-6s", path_names[path >= 0 && path <= 5 ? path : 0]);
  if (maxerr > 2) printf("  ERROR %.1f x K*eps", maxerr);
  printf("\n");
  fflush(stdout);
  free(p.A); free(p.B); free(p.C); free(ref);
}

int main(int argc, char **argv)
{
  int rounds = 9, naive_rounds = 3, do_sq = 1, do_mlp = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) rounds = 5, naive_rounds = 1;
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--square-only")) do_mlp = 0;
    else if (!strcmp(argv[i], "--mlp-only")) do_sq = 0;
    else if (!strcmp(argv[i], "--path") && i + 1 < argc) {
      i++;
      mm_sgemm_force_path = !strcmp(argv[i], "small") ? 1 : !strcmp(argv[i], "packed") ? 2 : 0;
    } else {
      fprintf(stderr, "usage: %s [--quick] [--rounds N] [--square-only|--mlp-only] "
              "[--path small|packed]\n", argv[0]);
      return 2;
    }
  }
  if (rounds < 1) rounds = 1;
  if (rounds > 64) rounds = 64;
  if (naive_rounds > rounds) naive_rounds = rounds;
  nthreads_all = mm_get_num_threads();
#ifdef HAVE_OPENBLAS
  int have_ob = 1;
#else
  int have_ob = 0;
#endif

  printf("GEMM float32, GFLOP/s (median of %d alternating rounds; naive: %d)\n", rounds,
         naive_rounds);
  printf("MicroML kernel: %s, all threads = %d; OpenBLAS: %s\n", mm_kernel_name(),
         nthreads_all, have_ob ? "linked" : "OpenBLAS not installed");
  printf("* naive measured on the first 64 rows only (a full run would take minutes)\n");
  printf("(mm 2T, ob 2T: all-thread over one-thread speed; path: MicroML's path at all threads: "
         "small, packed (B shared), privB (packed, B per thread), narrow-N cols or dots)\n");
  printf("%-14s %-20s %8s %8s %8s %8s %8s %7s %7s %8s %6s %6s  %s\n", "case", "MxNxK", "naive",
         impl_names[MM1] + 8, "mm nT", "ob 1T", "ob nT", "mm/ob1", "mm/obN", "mm/naive",
         "mm 2T", "ob 2T", "path");
  (void)impl_names;
  if (do_sq)
    for (size_t i = 0; i < sizeof squares / sizeof *squares; i++)
      bench(&squares[i], rounds, naive_rounds, have_ob);
  if (do_mlp) {
    printf("-- MLP 784-256-128-10, batch 128 (At / Bt: operand transposed by strides)\n");
    for (size_t i = 0; i < sizeof mlp / sizeof *mlp; i++)
      bench(&mlp[i], rounds, naive_rounds, have_ob);
  }
  mm_gemm_release_buffers();
  mm_parallel_shutdown();
  return 0;
}
