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
 * so ThreadSanitizer understands every synchronisation.
 *
 * Background loops (mm_parallel_background) fill the workers' idle time:
 * between two foreground jobs the calling thread runs Lua, builds the graph
 * and frees tensors, and a worker would only spin.  A worker that finds no
 * foreground job claims one background task (its own claim word, same
 * protocol), runs it, and looks for a foreground job again, so a job waits
 * at most one short task for that worker (and the caller, which claims
 * chunks itself, not at all).  The owner joins: it runs the tasks nobody
 * started and waits for the rest.  The training loop's next batch is
 * gathered this way. */
#include "internal.h"
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

/* The background loop (mm_parallel_background): the same claim-word
   protocol as the foreground job, on its own word, so a worker that read
   one loop's fields can never claim a task of the next. */
static pthread_cond_t cv_bg = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t bg_mu = PTHREAD_MUTEX_INITIALIZER;  /* one starter/joiner at a time */
static _Atomic(mm_parallel_fn) bg_fn;
static _Atomic(void *) bg_ctx;
static atomic_int_least64_t bg_ntasks;
static atomic_uint_least64_t bg_claim;  /* generation << 32 | next task */
static atomic_int_least64_t bg_done;    /* tasks of the current loop finished */
static atomic_int live_workers;         /* nworkers, readable without pool_busy */
static _Thread_local int is_worker;

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
  uint64_t v;
  if (env && *env) {
    if (mm_parse_count(env, false, INT32_MAX, &v) && v >= 1) n = (long)v;
    else   /* recorded, not printed: the bindings refuse to start (mm_config_error) */
      mm_env_fail("MICROML_NUM_THREADS=%s: expected a positive whole number of threads "
                  "such as 4 (at most %d are used)", env, MM_MAX_THREADS);
  }
  /* The CPUs this process may run on (taskset, cgroup cpusets, a batch
   * scheduler's binding), not all online ones: more threads than those only
   * time-slice and wait for each other at every barrier. */
  cpu_set_t set;
  if (n == 0 && sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
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

/* Claims and runs one task of the background loop; returns 0 when there
   was none to claim. */
static int bg_run_one(void)
{
  uint64_t w = atomic_load_explicit(&bg_claim, memory_order_acquire);
  for (;;) {
    if ((uint32_t)w == CLOSED) return 0;
    mm_parallel_fn fn = atomic_load_explicit(&bg_fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&bg_ctx, memory_order_relaxed);
    int64_t n = atomic_load_explicit(&bg_ntasks, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    int64_t t = (uint32_t)w;
    if (t >= n) return 0;
    if (!atomic_compare_exchange_weak_explicit(&bg_claim, &w, w + 1, memory_order_acq_rel,
                                               memory_order_acquire))
      continue;
    fn(ctx, t, t + 1);
    if (atomic_fetch_add_explicit(&bg_done, 1, memory_order_acq_rel) + 1 == n) {
      pthread_mutex_lock(&mu);
      pthread_cond_broadcast(&cv_bg);
      pthread_mutex_unlock(&mu);
    }
    return 1;
  }
}

static int bg_available(void)
{
  uint64_t w = atomic_load_explicit(&bg_claim, memory_order_acquire);
  return (uint32_t)w != CLOSED && (int64_t)(uint32_t)w < atomic_load_explicit(&bg_ntasks, memory_order_relaxed);
}

static void *worker_main(void *arg)
{
  /* The generation current when the worker was created comes with it. */
  unsigned seen = (unsigned)(uintptr_t)arg;
  is_worker = 1;
  for (;;) {
    uint64_t w;
    int ready = 0;
    /* Idle time goes to the background loop, one task at a time, checking
       for a foreground job between tasks. */
    for (int i = 0; i < SPIN_ITERS && !(ready = job_ready(seen, &w)); i++) {
      if (bg_run_one()) i = 0;
      else cpu_relax();
    }
    if (!ready) {
      pthread_mutex_lock(&mu);
      while (!(ready = job_ready(seen, &w)) && !bg_available()) pthread_cond_wait(&cv_work, &mu);
      pthread_mutex_unlock(&mu);
      if (!ready) continue;   /* woken for background work */
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
  atomic_store(&live_workers, 0);
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
  atomic_store(&live_workers, nworkers);
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

/* ---- background loops ------------------------------------------------------ */

/* Claims and runs, on the calling thread, every task of loop `gen` not yet
   claimed, then waits until all of its tasks are done. */
static void bg_finish(unsigned gen)
{
  uint64_t w = atomic_load_explicit(&bg_claim, memory_order_acquire);
  if (gen_of(w) != gen) return;   /* an older loop: joined when the next started */
  while (bg_run_one()) {}
  int64_t n = atomic_load_explicit(&bg_ntasks, memory_order_relaxed);
  for (int i = 0; i < SPIN_ITERS && atomic_load_explicit(&bg_done, memory_order_acquire) < n; i++)
    cpu_relax();
  if (atomic_load_explicit(&bg_done, memory_order_acquire) < n) {
    pthread_mutex_lock(&mu);
    while (atomic_load_explicit(&bg_done, memory_order_acquire) < n) pthread_cond_wait(&cv_bg, &mu);
    pthread_mutex_unlock(&mu);
  }
  /* Closed: nothing for a worker to look at until the next loop. */
  atomic_store_explicit(&bg_claim, (uint64_t)gen << 32 | CLOSED, memory_order_release);
}

uint64_t mm_parallel_background(int64_t ntasks, mm_parallel_fn fn, void *ctx)
{
  if (ntasks <= 0) return 0;
  if (is_worker || mm_get_num_threads() == 1 || atomic_load(&live_workers) == 0 ||
      ntasks >= CLOSED) {
    fn(ctx, 0, ntasks);   /* no idle worker to lend the work to: now, here */
    return 0;
  }
  pthread_mutex_lock(&bg_mu);
  uint64_t w = atomic_load_explicit(&bg_claim, memory_order_acquire);
  bg_finish(gen_of(w));   /* one loop at a time */
  unsigned g = gen_of(w) + 1u;
  if (g == 0) g = 1;      /* ticket 0 means "already done" */
  atomic_store_explicit(&bg_claim, (uint64_t)g << 32 | CLOSED, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&bg_fn, fn, memory_order_relaxed);
  atomic_store_explicit(&bg_ctx, ctx, memory_order_relaxed);
  atomic_store_explicit(&bg_ntasks, ntasks, memory_order_relaxed);
  atomic_store_explicit(&bg_done, 0, memory_order_relaxed);
  atomic_store_explicit(&bg_claim, (uint64_t)g << 32, memory_order_release);
  pthread_mutex_unlock(&bg_mu);
  pthread_mutex_lock(&mu);
  pthread_cond_broadcast(&cv_work);
  pthread_mutex_unlock(&mu);
  return g;
}

void mm_parallel_background_join(uint64_t ticket)
{
  if (ticket == 0) return;
  pthread_mutex_lock(&bg_mu);
  bg_finish((unsigned)ticket);
  pthread_mutex_unlock(&bg_mu);
}
