/* iter.c — setup and execution of the broadcasting loop (see iter.h). */
#include <string.h>

#include "internal.h"
#include "iter.h"
#include "parallel.h"

void mm_iter_init(mm_iter *it, int nops, mm_tensor *const *ops, int ndim, const int64_t *shape) {
  it->nops = nops;
  /* Nothing to visit: an empty operand's strides may be anything (huge ones
   * too), so they are not even scaled to bytes. */
  for (int d = 0; d < ndim; d++)
    if (shape[d] == 0) {
      for (int k = 0; k < nops; k++) {
        it->base[k] = (char *)mm_data_ptr(ops[k]);
        it->stride[k][0] = 0;
      }
      it->shape[0] = 0;
      it->ndim = 1;
      return;
    }
  int64_t sh[MM_MAX_DIMS], st[MM_ITER_MAX_OPS][MM_MAX_DIMS];
  for (int k = 0; k < nops; k++) {
    const mm_tensor *t = ops[k];
    size_t es = mm_dtype_size(t->dtype);
    it->base[k] = (char *)mm_data_ptr(t);
    int lead = ndim - t->ndim;
    for (int d = 0; d < ndim; d++) {
      int td = d - lead;
      st[k][d] = (td < 0 || t->shape[td] == 1) ? 0 : t->stride[td] * (int64_t)es;
    }
  }
  /* Drop size-1 dims, then merge (outer, inner) pairs that are contiguous
   * for every operand. */
  int n = 0;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    if (n > 0) {
      bool merge = true;
      for (int k = 0; k < nops && merge; k++)
        merge = st[k][d - 0] * shape[d] == it->stride[k][n - 1];
      if (merge) {
        it->shape[n - 1] *= shape[d];
        for (int k = 0; k < nops; k++) it->stride[k][n - 1] = st[k][d];
        continue;
      }
    }
    it->shape[n] = shape[d];
    for (int k = 0; k < nops; k++) it->stride[k][n] = st[k][d];
    n++;
  }
  (void)sh;
  if (n == 0) { /* scalar: one row of one element */
    it->shape[0] = 1;
    for (int k = 0; k < nops; k++) it->stride[k][0] = 0;
    n = 1;
  }
  for (int d = 0; d < n; d++)
    if (it->shape[d] == 0) { it->shape[0] = 0; break; }
  it->ndim = n;
}

typedef struct { const mm_iter *it; mm_loop_fn fn; const void *ctx; } run_ctx;

/* Rows [r0, r1) of the flattened outer dims. */
static void run_rows(void *vctx, int64_t r0, int64_t r1) {
  const run_ctx *rc = vctx;
  const mm_iter *it = rc->it;
  int nd = it->ndim, nops = it->nops;
  int64_t idx[MM_MAX_DIMS] = {0};
  int64_t r = r0;
  for (int d = nd - 2; d >= 0; d--) {  /* unflatten r0 into an odometer */
    idx[d] = r % it->shape[d];
    r /= it->shape[d];
  }
  char *p[MM_ITER_MAX_OPS];
  for (int k = 0; k < nops; k++) {
    p[k] = it->base[k];
    for (int d = 0; d < nd - 1; d++) p[k] += idx[d] * it->stride[k][d];
  }
  int64_t inner = it->shape[nd - 1], is[MM_ITER_MAX_OPS];
  for (int k = 0; k < nops; k++) is[k] = it->stride[k][nd - 1];
  for (int64_t row = r0; row < r1; row++) {
    rc->fn(inner, p, is, rc->ctx);
    for (int d = nd - 2; d >= 0; d--) {
      for (int k = 0; k < nops; k++) p[k] += it->stride[k][d];
      if (++idx[d] < it->shape[d]) break;
      for (int k = 0; k < nops; k++) p[k] -= it->stride[k][d] * it->shape[d];
      idx[d] = 0;
    }
  }
}

/* Below this many elements a thread hand-off costs more than it saves. */
#define PARALLEL_MIN_ELEMS (1 << 16)

void mm_iter_run(const mm_iter *it, mm_loop_fn fn, const void *ctx) {
  int64_t rows = 1;
  for (int d = 0; d < it->ndim - 1; d++) rows *= it->shape[d];
  int64_t inner = it->shape[it->ndim - 1];
  if (rows == 0 || inner == 0) return;
  run_ctx rc = {it, fn, ctx};
  bool out_overlaps = false;
  for (int d = 0; d < it->ndim; d++) out_overlaps |= it->stride[0][d] == 0 && it->shape[d] > 1;
  if (out_overlaps || rows * inner < PARALLEL_MIN_ELEMS || mm_get_num_threads() == 1) {
    run_rows(&rc, 0, rows);
    return;
  }
  if (rows == 1) { /* one long row: split it into chunks */
    mm_iter sub = *it;
    int64_t chunk = 16384;
    sub.ndim = 2;
    sub.shape[1] = chunk;
    sub.shape[0] = inner / chunk;
    for (int k = 0; k < it->nops; k++) {
      sub.stride[k][1] = it->stride[k][0];
      sub.stride[k][0] = it->stride[k][0] * chunk;
    }
    run_ctx sc = {&sub, fn, ctx};
    if (sub.shape[0] > 0) mm_parallel_for(sub.shape[0], run_rows, &sc);
    int64_t done = sub.shape[0] * chunk;
    if (done < inner) {
      char *p[MM_ITER_MAX_OPS];
      int64_t is[MM_ITER_MAX_OPS];
      for (int k = 0; k < it->nops; k++) {
        p[k] = it->base[k] + done * it->stride[k][0];
        is[k] = it->stride[k][0];
      }
      fn(inner - done, p, is, ctx);
    }
    return;
  }
  mm_parallel_for(rows, run_rows, &rc);
}

/* ---- rows: a tensor as rows along one dimension ----------------------------------------------------------- */

void mm_rows_init(mm_rows *r, int nops, mm_tensor *const *ops, int dim) {
  int nd = ops[0]->ndim;
  int64_t ref[MM_MAX_DIMS] = {0};
  for (int d = 0; d < nd; d++) {
    ref[d] = 1;
    for (int k = 0; k < nops; k++)
      if (ops[k]->shape[d] != 1) ref[d] = ops[k]->shape[d];
  }
  r->nops = nops;
  for (int k = 0; k < nops; k++) {
    r->base[k] = (char *)mm_data_ptr(ops[k]);
    r->esize[k] = mm_dtype_size(ops[k]->dtype);
    r->rstride[k] = 0;
  }
  r->ndim = 0;
  r->nrows = 1;
  if (nd == 0) { /* a scalar: one row of one element */
    r->n = 1;
    return;
  }
  r->n = ref[dim];
  for (int d = 0; d < nd; d++)
    if (d != dim && ref[d] == 0) { r->nrows = 0; return; }   /* no rows; strides unused */
  for (int k = 0; k < nops; k++)
    r->rstride[k] = ops[k]->shape[dim] == 1 ? 0 : ops[k]->stride[dim];
  int n = 0;
  for (int d = 0; d < nd; d++) {
    if (d == dim || ref[d] == 1) continue;
    int64_t st[MM_ROWS_MAX_OPS];
    bool merge = n > 0;
    for (int k = 0; k < nops; k++) {
      st[k] = ops[k]->shape[d] == 1 ? 0 : ops[k]->stride[d];
      int64_t span;   /* overflows only where the dims cannot merge anyway */
      if (merge && (!mm_mul_ok(st[k], ref[d], &span) || r->stride[k][n - 1] != span))
        merge = false;
    }
    if (merge) {
      r->shape[n - 1] *= ref[d];
      for (int k = 0; k < nops; k++) r->stride[k][n - 1] = st[k];
      continue;
    }
    r->shape[n] = ref[d];
    for (int k = 0; k < nops; k++) r->stride[k][n] = st[k];
    n++;
  }
  r->ndim = n;
  for (int d = 0; d < n; d++) r->nrows *= r->shape[d];
}

void mm_rows_at(const mm_rows *r, int64_t row, char **ptr) {
  for (int k = 0; k < r->nops; k++) ptr[k] = r->base[k];
  for (int d = r->ndim - 1; d >= 0; d--) {
    int64_t i = row % r->shape[d];
    row /= r->shape[d];
    for (int k = 0; k < r->nops; k++)
      ptr[k] += (ptrdiff_t)(i * r->stride[k][d]) * (ptrdiff_t)r->esize[k];
  }
}


typedef struct { const mm_rows *r; mm_rows_fn fn; void *ctx; } rows_job;

static void rows_task(void *c, int64_t b, int64_t e) {
  const rows_job *j = c;
  j->fn(j->ctx, j->r, b, e);
}

void mm_rows_run(const mm_rows *r, mm_rows_fn fn, void *ctx) {
  if (r->nrows == 0) return;
  int64_t work = r->nrows * (r->n > 0 ? r->n : 1);
  if (r->nrows == 1 || work < MM_PARALLEL_MIN_WORK || mm_get_num_threads() == 1) {
    fn(ctx, r, 0, r->nrows);
    return;
  }
  rows_job j = {r, fn, ctx};
  mm_parallel_for(r->nrows, rows_task, &j);
}

