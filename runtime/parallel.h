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

#include "tensor.h"   /* MM_MAX_THREADS, mm_set_num_threads */

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

/* A background loop: tasks [0, ntasks) of fn, one call per task, run by
   pool workers in their idle time (between foreground jobs, never delaying
   one by more than a task) while the caller goes on.  Returns a ticket for
   mm_parallel_background_join, which runs the tasks nobody has started on
   the calling thread and returns when all are done; until then ctx must
   stay valid and the caller must not touch what the tasks write.  One loop
   at a time: starting another joins the previous one first.  With one
   thread, or from inside a pool task, the loop runs at once and the ticket
   is 0.  fn must not use the pool.  Used to gather the next batch of a
   DataLoader while the model computes. */
uint64_t mm_parallel_background(int64_t ntasks, mm_parallel_fn fn, void *ctx);
void mm_parallel_background_join(uint64_t ticket);

/* Stop and join the worker threads (they restart on demand).  For leak
   checks and orderly shutdown; must not be called from inside fn. */
void mm_parallel_shutdown(void);

#endif
