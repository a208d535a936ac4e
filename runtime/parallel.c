/* parallel.c — the persistent pthread pool behind mm_parallel_for (see
 * parallel.h).
 *
 * One job at a time, split into chunks that any thread may claim: the
 * caller and the workers all take the next unclaimed chunk until none is
 * left, and the caller returns as soon as every chunk is done.  It never
 * waits for a worker merely to wake up: on a shared machine a worker may
 * stay descheduled for a whole time slice, and with a fixed chunk-per-thread
 * split the caller used to sit idle for it (2-thread GEMMs ran at a fifth
 * of the 1-thread speed while another process held the second core).  Which
 * thread runs a chunk never changes what the chunk computes.
 *
 * The claim word packs (generation << 32 | next chunk).  Publishing a job:
 * the caller first stores (gen+1, CLOSED), then a release fence, then the
 * job fields (relaxed atomics), then (gen+1, 0) with release.  A worker
 * loads the claim word (acquire), reads the fields, issues an acquire fence
 * and claims with a compare-and-swap on the word it loaded.  If it read any
 * field of a later job, the fences order that job's CLOSED store before its
 * CAS, which then fails; so a successful claim always pairs a chunk with
 * the fields of its own job, and a worker that arrives after the job is
 * over only finds the chunks gone (or a new generation).  `done` counts
 * finished chunks; the caller returns when it reaches the chunk count, so
 * no chunk, and so no use of the caller's ctx, outlives the call.
 *
 * Waiting: workers spin briefly on the claim word (a dispatch costs well
 * under a microsecond when they are awake), then sleep on `cv_work`; the
 * caller spins on `done`, then sleeps on `cv_done`.  `pool_busy` makes the
 * pool single-entry: a nested call, or a second application thread, just
 * runs its loop inline.  Plain mutex/condvar and C11 atomics throughout,
 * so ThreadSanitizer understands every synchronisation. */
#include "parallel.h"

#include <pthread.h>
#include <sched.h>
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
#define CLOSED 0xffffffffu   /* low half of the claim word: job being written */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cv_done = PTHREAD_COND_INITIALIZER;

/* The current job.  Atomics (relaxed) because a late worker may read them
   while the next job is being written; see the protocol above. */
static _Atomic(mm_parallel_fn) job_fn;
static _Atomic(void *) job_ctx;
static atomic_int_least64_t job_ntasks, job_nchunks;
static atomic_uint_least64_t claim;   /* generation << 32 | next chunk */
static atomic_int_least64_t done;     /* chunks of the current job finished */
static atomic_int quit;               /* tells workers to exit */

static pthread_t *workers;            /* nworkers threads */
static int nworkers;                  /* owned by the holder of pool_busy */
static atomic_flag pool_busy = ATOMIC_FLAG_INIT;

static atomic_int num_threads;        /* 0 until initialised */
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

static unsigned gen_of(uint64_t w) { return (unsigned)(w >> 32); }

/* Claim and run chunks of the job whose claim word was last seen as w, until
   none is left or a newer job has been published.  Returns nothing: the
   caller of this learns the job is over from the claim word. */
static void run_chunks(uint64_t w)
{
  for (;;) {
    if ((uint32_t)w == CLOSED) return;
    mm_parallel_fn fn = atomic_load_explicit(&job_fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&job_ctx, memory_order_relaxed);
    int64_t n = atomic_load_explicit(&job_ntasks, memory_order_relaxed);
    int64_t k = atomic_load_explicit(&job_nchunks, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    int64_t c = (uint32_t)w;
    if (c >= k) return;
    if (!atomic_compare_exchange_weak_explicit(&claim, &w, w + 1, memory_order_acq_rel,
                                               memory_order_acquire))
      continue;   /* w now holds the current word: retry on it */
    int64_t b = n * c / k, e = n * (c + 1) / k;
    if (b < e) fn(ctx, b, e);
    w++;
    if (atomic_fetch_add_explicit(&done, 1, memory_order_acq_rel) + 1 == k) {
      pthread_mutex_lock(&mu);   /* the caller tests `done` under mu before sleeping */
      pthread_cond_signal(&cv_done);
      pthread_mutex_unlock(&mu);
    }
  }
}

/* A new job to look at: a generation other than `seen` whose fields are
   written, or quit. */
static int job_ready(unsigned seen, uint64_t *w)
{
  *w = atomic_load_explicit(&claim, memory_order_acquire);
  return (gen_of(*w) != seen && (uint32_t)*w != CLOSED) ||
         atomic_load_explicit(&quit, memory_order_relaxed);
}

static void *worker_main(void *arg)
{
  /* The generation current when the worker was created comes with it. */
  unsigned seen = (unsigned)(uintptr_t)arg;
  for (;;) {
    uint64_t w;
    int ready = 0;
    for (int i = 0; i < SPIN_ITERS && !(ready = job_ready(seen, &w)); i++) cpu_relax();
    if (!ready) {
      pthread_mutex_lock(&mu);
      while (!job_ready(seen, &w)) pthread_cond_wait(&cv_work, &mu);
      pthread_mutex_unlock(&mu);
    }
    if (atomic_load(&quit)) break;
    seen = gen_of(w);
    run_chunks(w);
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
  unsigned gen = gen_of(atomic_load(&claim));
  for (int i = 0; i < want; i++) {
    if (pthread_create(&workers[i], NULL, worker_main, (void *)(uintptr_t)gen))
      break;   /* run with the threads we could get */
    nworkers = i + 1;
  }
  return nworkers;
}

void mm_parallel_for_chunks(int64_t ntasks, int64_t nchunks, mm_parallel_fn fn, void *ctx)
{
  if (ntasks <= 0) return;
  if (nchunks < 1) nchunks = 1;
  if (nchunks > ntasks) nchunks = ntasks;
  if (nchunks > CLOSED - 1) nchunks = CLOSED - 1;
  int nt = mm_get_num_threads();
  if (nt == 1 || nchunks <= 1 ||
      atomic_flag_test_and_set_explicit(&pool_busy, memory_order_acquire)) {
    /* Inline, but chunk by chunk all the same: the calls fn sees depend
       only on ntasks and nchunks. */
    for (int64_t c = 0; c < nchunks; c++) {
      int64_t b = ntasks * c / nchunks, e = ntasks * (c + 1) / nchunks;
      if (b < e) fn(ctx, b, e);
    }
    return;
  }
  int nw = resize_pool(nt - 1);
  if (nw == 0) {
    atomic_flag_clear_explicit(&pool_busy, memory_order_release);
    for (int64_t c = 0; c < nchunks; c++) {
      int64_t b = ntasks * c / nchunks, e = ntasks * (c + 1) / nchunks;
      if (b < e) fn(ctx, b, e);
    }
    return;
  }

  uint64_t g = (uint64_t)(gen_of(atomic_load_explicit(&claim, memory_order_relaxed)) + 1u);
  atomic_store_explicit(&claim, g << 32 | CLOSED, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&job_fn, fn, memory_order_relaxed);
  atomic_store_explicit(&job_ctx, ctx, memory_order_relaxed);
  atomic_store_explicit(&job_ntasks, ntasks, memory_order_relaxed);
  atomic_store_explicit(&job_nchunks, nchunks, memory_order_relaxed);
  atomic_store_explicit(&done, 0, memory_order_relaxed);
  atomic_store_explicit(&claim, g << 32, memory_order_release);
  pthread_mutex_lock(&mu);
  pthread_cond_broadcast(&cv_work);
  pthread_mutex_unlock(&mu);

  run_chunks(g << 32);

  for (int i = 0; i < SPIN_ITERS && atomic_load_explicit(&done, memory_order_acquire) < nchunks;
       i++)
    cpu_relax();
  if (atomic_load_explicit(&done, memory_order_acquire) < nchunks) {
    pthread_mutex_lock(&mu);
    while (atomic_load_explicit(&done, memory_order_acquire) < nchunks)
      pthread_cond_wait(&cv_done, &mu);
    pthread_mutex_unlock(&mu);
  }
  atomic_flag_clear_explicit(&pool_busy, memory_order_release);
}

void mm_parallel_for(int64_t ntasks, mm_parallel_fn fn, void *ctx)
{
  mm_parallel_for_chunks(ntasks, mm_get_num_threads(), fn, ctx);
}

void mm_parallel_shutdown(void)
{
  while (atomic_flag_test_and_set_explicit(&pool_busy, memory_order_acquire))
    sched_yield();
  stop_workers();
  atomic_flag_clear_explicit(&pool_busy, memory_order_release);
}
