/* iter.h — the strided, broadcasting loop every elementwise kernel runs on.
 *
 * Operands (operand 0 is the output) are laid over one iteration shape,
 * each with byte strides (0 where it broadcasts).  Adjacent dimensions that
 * are contiguous for every operand are merged, so a contiguous or
 * scalar-broadcast op becomes one long inner loop; the kernel sees the inner
 * length and the operands' inner byte strides and picks its fast path. */
#ifndef MICROML_ITER_H
#define MICROML_ITER_H

#include "tensor.h"

#define MM_ITER_MAX_OPS 4
/* Below this many elements of work a thread hand-off costs more than it saves. */
#define MM_PARALLEL_MIN_WORK 32768

typedef void (*mm_loop_fn)(int64_t n, char **ptr, const int64_t *stride, const void *ctx);

typedef struct mm_iter {
  int nops;
  int ndim;                                  /* >= 1 after setup */
  int64_t shape[MM_MAX_DIMS];
  int64_t stride[MM_ITER_MAX_OPS][MM_MAX_DIMS]; /* bytes */
  char *base[MM_ITER_MAX_OPS];
} mm_iter;

/* Lays operands ops[0..nops) over (ndim, shape).  Every operand must
   broadcast to the shape (checked by the caller). */
void mm_iter_init(mm_iter *it, int nops, mm_tensor *const *ops, int ndim, const int64_t *shape);
/* Runs fn over every inner row; splits rows across threads when large and
   when the output (operand 0) has no zero stride. */
void mm_iter_run(const mm_iter *it, mm_loop_fn fn, const void *ctx);


/* ---- rows: a tensor as rows along one dimension ------------------------
 * A tensor seen as rows along one dimension: `nrows` rows of `n` elements,
 * row r of operand k starting at mm_rows_at(...)[k] with `rstride[k]`
 * elements between neighbours.  Rows come in row-major order of the other
 * dimensions, so a contiguous output of those dimensions is indexed by r.
 * Operands share one shape, except that any operand may have size 1 in a
 * dimension (it then repeats: stride 0).  The outer dimensions are merged
 * where every operand allows it, so a contiguous tensor reduced over its
 * last dimension is one flat loop of rows. */
#define MM_ROWS_MAX_OPS 4
typedef struct mm_rows {
  int nops;
  int ndim;                                    /* outer dims after merging */
  int64_t shape[MM_MAX_DIMS];
  int64_t stride[MM_ROWS_MAX_OPS][MM_MAX_DIMS]; /* in elements */
  int64_t n;                                   /* row length */
  int64_t rstride[MM_ROWS_MAX_OPS];            /* in elements */
  int64_t nrows;
  char *base[MM_ROWS_MAX_OPS];
  size_t esize[MM_ROWS_MAX_OPS];
} mm_rows;

/* dim must already be wrapped (0 <= dim < ndim), or anything for ndim 0. */
void mm_rows_init(mm_rows *r, int nops, mm_tensor *const *ops, int dim);
/* Start of row `row` for every operand. */
void mm_rows_at(const mm_rows *r, int64_t row, char **ptr);
/* fn(ctx, r, row_begin, row_end) over all rows, split across threads by
   rows when the work (rows x row length) is large.  Each row is handled
   whole by one thread, so results never depend on the thread count. */
typedef void (*mm_rows_fn)(void *ctx, const mm_rows *r, int64_t row_begin, int64_t row_end);
void mm_rows_run(const mm_rows *r, mm_rows_fn fn, void *ctx);

#endif
