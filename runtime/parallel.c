/* parallel.c — the persistent pthread pool behind mm_parallel_for (see
 * parallel.h).
 *
 * One job at a time.  The caller publishes the job (fn, ctx, ntasks, number
 * of chunks) and bumps `job_gen` with a release store; workers waiting for a
 * new generation first spin briefly on the atomic (a dispatch costs well
 * under a microsecond when they are awake), then sleep on `cv_work`.  Every
 * worker, busy or not, decrements `pending` when it has finished with the job,
 * and the caller waits until it reaches zero (spin, then `cv_done`), so no
 * worker can still be reading the job when the next one is written.
 * `pool_busy` makes the pool single-entry: a nested call, or a second
 * application thread, just runs its loop inline. */
#include "parallel.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* Spin iterations before sleeping: roughly 20-50 microseconds. */
#define SPIN_ITERS 4000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cv_done = PTHREAD_COND_INITIALIZER;

/* The current job; written only by the pool owner while no worker reads it. */
static struct {
  mm_parallel_fn fn;
  void *ctx;
  int64_t ntasks;
  int nchunks;
} job;
static atomic_uint job_gen;        /* bumped (release) when a job is published */
static atomic_int pending;         /* workers not yet done with the current job */
static atomic_int quit;            /* tells workers to exit */

static pthread_t *workers;         /* nworkers threads, ids 1..nworkers */
static int nworkers;               /* owned by the holder of pool_busy */
static atomic_flag pool_busy = ATOMIC_FLAG_INIT;

static atomic_int num_threads;     /* 0 until initialised */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static int clamp_threads(long n)
{
  return n < 1 ? 1 : n > MM_MAX_THREADS ? MM_MAX_THREADS : (int)n;
}

static void init_threads(void)
{
  const char *env = getenv("MICROML_NUM_THREADS");
  long n = 0;
  if (env && *env) {
    char *end;
    n = strtol(env, &end, 10);
    if (*end || n < 1) {
      fprintf(stderr, "microml: MICROML_NUM_THREADS=%s: expected a positive "
              "integer; using the number of CPUs\n", env);
      n = 0;
    }
  }
  if (n == 0) n = sysconf(_SC_NPROCESSORS_ONLN);
  int expected = 0;   /* an explicit mm_set_num_threads wins over the environment */
  atomic_compare_exchange_strong(&num_threads, &expected, clamp_threads(n));
}

void mm_set_num_threads(int n)
{
  pthread_once(&init_once, init_threads);
  atomic_store(&num_threads, clamp_threads(n));
}

int mm_get_num_threads(void)
{
  pthread_once(&init_once, init_threads);
  return atomic_load(&num_threads);
}

static void run_chunk(int id)
{
  int64_t n = job.ntasks, k = job.nchunks;
  if (id < k) {
    int64_t b = n * id / k, e = n * (id + 1) / k;
    if (b < e) job.fn(job.ctx, b, e);
  }
}

static void *worker_main(void *arg)
{
  /* The generation current when the worker was created comes with it:
     reading job_gen here could already see the first job's and miss it. */
  uint64_t a = (uint64_t)(uintptr_t)arg;
  int id = (int)(a & 0xffff);
  unsigned seen = (unsigned)(a >> 16);
  for (;;) {
    unsigned g = seen;
    for (int i = 0; i < SPIN_ITERS; i++) {
      g = atomic_load_explicit(&job_gen, memory_order_acquire);
      if (g != seen || atomic_load_explicit(&quit, memory_order_relaxed)) break;
      cpu_relax();
    }
    if (g == seen) {
      pthread_mutex_lock(&mu);
      while ((g = atomic_load_explicit(&job_gen, memory_order_acquire)) == seen &&
             !atomic_load(&quit))
        pthread_cond_wait(&cv_work, &mu);
      pthread_mutex_unlock(&mu);
    }
    if (atomic_load(&quit)) break;
    seen = g;
    run_chunk(id);
    if (atomic_fetch_sub_explicit(&pending, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&mu);   /* the caller tests `pending` under mu */
      pthread_cond_signal(&cv_done);
      pthread_mutex_unlock(&mu);
    }
  }
  return NULL;
}

/* Caller holds pool_busy. */
static void stop_workers(void)
{
  if (!nworkers) return;
  pthread_mutex_lock(&mu);
  atomic_store(&quit, 1);
  pthread_cond_broadcast(&cv_work);
  pthread_mutex_unlock(&mu);
  for (int i = 0; i < nworkers; i++) pthread_join(workers[i], NULL);
  free(workers);
  workers = NULL;
  nworkers = 0;
  atomic_store(&quit, 0);
}

/* Caller holds pool_busy.  Returns the number of workers actually running. */
static int resize_pool(int want)
{
  if (want == nworkers) return nworkers;
  stop_workers();
  if (want == 0) return 0;
  workers = malloc(sizeof *workers * (size_t)want);
  if (!workers) return 0;
  uint64_t gen = atomic_load(&job_gen);
  for (int i = 0; i < want; i++) {
    void *arg = (void *)(uintptr_t)(gen << 16 | (uint64_t)(i + 1));
    if (pthread_create(&workers[i], NULL, worker_main, arg)) {
      break;   /* run with the threads we could get */
    }
    nworkers = i + 1;
  }
  return nworkers;
}

void mm_parallel_for(int64_t ntasks, mm_parallel_fn fn, void *ctx)
{
  if (ntasks <= 0) return;
  int nt = mm_get_num_threads();
  if (nt == 1 || ntasks == 1 || atomic_flag_test_and_set_explicit(&pool_busy,
                                                                  memory_order_acquire)) {
    fn(ctx, 0, ntasks);
    return;
  }
  int nw = resize_pool(nt - 1);
  if (nw == 0) {
    atomic_flag_clear_explicit(&pool_busy, memory_order_release);
    fn(ctx, 0, ntasks);
    return;
  }
  int64_t nchunks = nw + 1 < ntasks ? nw + 1 : ntasks;

  pthread_mutex_lock(&mu);
  job.fn = fn;
  job.ctx = ctx;
  job.ntasks = ntasks;
  job.nchunks = (int)nchunks;
  atomic_store_explicit(&pending, nw, memory_order_relaxed);
  atomic_fetch_add_explicit(&job_gen, 1, memory_order_release);
  pthread_cond_broadcast(&cv_work);
  pthread_mutex_unlock(&mu);

  run_chunk(0);

  for (int i = 0; i < SPIN_ITERS && atomic_load_explicit(&pending, memory_order_acquire); i++)
    cpu_relax();
  if (atomic_load_explicit(&pending, memory_order_acquire)) {
    pthread_mutex_lock(&mu);
    while (atomic_load_explicit(&pending, memory_order_acquire))
      pthread_cond_wait(&cv_done, &mu);
    pthread_mutex_unlock(&mu);
  }
  atomic_flag_clear_explicit(&pool_busy, memory_order_release);
}

void mm_parallel_shutdown(void)
{
  while (atomic_flag_test_and_set_explicit(&pool_busy, memory_order_acquire))
    sched_yield();
  stop_workers();
  atomic_flag_clear_explicit(&pool_busy, memory_order_release);
}
