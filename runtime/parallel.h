/* parallel.h — a small persistent pthread pool for data-parallel loops.
 *
 * Owns: the worker threads and the thread count.  Every parallel kernel in
 * the runtime (GEMM, elementwise ops) goes through mm_parallel_for(_chunks),
 * so there is one pool and one knob.  No OpenMP: plain mutex/condvar plus C11 atomics,
 * so that ThreadSanitizer understands every synchronisation.
 *
 * Thread count: MICROML_NUM_THREADS from the environment at first use, else
 * the number of online CPUs; changed with mm_set_num_threads at any time
 * between calls (the pool is resized at the next mm_parallel_for). */
#ifndef MICROML_PARALLEL_H
#define MICROML_PARALLEL_H

#include <stdint.h>

#define MM_MAX_THREADS 256

/* Set the number of threads used by mm_parallel_for, clamped to
   [1, MM_MAX_THREADS]; 1 means everything runs on the calling thread. */
void mm_set_num_threads(int n);
int mm_get_num_threads(void);

/* The body of a parallel loop: handle tasks [task_begin, task_end). */
typedef void (*mm_parallel_fn)(void *ctx, int64_t task_begin, int64_t task_end);

/* Run fn over the tasks [0, ntasks), split into nchunks contiguous chunks
   (chunk c is [ntasks*c/nchunks, ntasks*(c+1)/nchunks); nchunks is clamped
   to [1, ntasks]), and return when all are done.  Threads claim chunks as
   they become free (the calling thread too), so a slow or descheduled
   worker does not hold the caller up; which thread runs a chunk is not
   defined, so fn must compute the same thing whichever thread calls it.
   Runs the chunks inline, in order, when there is one thread or one chunk,
   or when called from inside a running loop (nested) or while another
   thread is using the pool.  The calls fn receives depend only on ntasks
   and nchunks, so a kernel whose result per task does not depend on the
   chunking is deterministic. */
void mm_parallel_for_chunks(int64_t ntasks, int64_t nchunks, mm_parallel_fn fn, void *ctx);

/* mm_parallel_for_chunks with one chunk per thread (mm_get_num_threads()). */
void mm_parallel_for(int64_t ntasks, mm_parallel_fn fn, void *ctx);

/* Stop and join the worker threads (they restart on demand).  For leak
   checks and orderly shutdown; must not be called from inside fn. */
void mm_parallel_shutdown(void);

#endif
