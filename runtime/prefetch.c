/* prefetch.c — the DataLoader's batch prefetch: index_select of the next
 * batch's rows, run by idle pool workers in the background.
 *
 * A DataLoader hands out batch b and at once asks for batch b+1 here: the
 * rows are copied by pool workers in time they would spend idle (while the
 * Lua code between kernels runs on the calling thread), and the next call
 * collects the result, copying whatever nobody has started yet itself.  A
 * shuffled batch is 128 random rows of a dataset much larger than the
 * caches, so the copy is a string of DRAM misses worth hiding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "parallel.h"

/* Rows per background task.  A foreground job may wait for a worker to
 * finish its task, so tasks are short: at 2 rows (6 KiB of a Fashion-MNIST
 * batch) the 2-thread epoch measured 0.370 s, at 1 row 0.375, 4 rows 0.378,
 * 8 rows 0.382 (medians of 5 alternating runs' best epochs). */
#define BG_ROWS 2

struct mm_bg_gather {
  int n;                        /* tensors */
  mm_tensor *src[MM_BG_GATHER_MAX], *out[MM_BG_GATHER_MAX];
  uint64_t version[MM_BG_GATHER_MAX];
  mm_index_rows c[MM_BG_GATHER_MAX];
  int64_t first_task[MM_BG_GATHER_MAX + 1];
  mm_tensor *ic;                /* the checked, contiguous indices */
  uint64_t ticket;
};

static void bg_gather_task(void *vg, int64_t t0, int64_t t1) {
  mm_bg_gather *g = vg;
  for (int64_t t = t0; t < t1; t++) {
    int k = 0;
    while (t >= g->first_task[k + 1]) k++;
    int64_t r0 = (t - g->first_task[k]) * BG_ROWS, r1 = r0 + BG_ROWS;
    if (r1 > g->c[k].k) r1 = g->c[k].k;
    mm_index_rows_gather(&g->c[k], r0, r1);
  }
}

int mm_bg_gather_count(const mm_bg_gather *g) { return g->n; }

void mm_bg_gather_free(mm_bg_gather *g) {
  if (!g) return;
  mm_parallel_background_join(g->ticket);
  for (int k = 0; k < g->n; k++) {
    mm_tensor_release(g->src[k]);
    mm_tensor_release(g->out[k]);
  }
  mm_tensor_release(g->ic);
  free(g);
}

mm_bg_gather *mm_index_select_start(int n, mm_tensor *const *xs, mm_tensor *idx, int64_t base) {
  char b[160], what[200];
  if (n < 1 || n > MM_BG_GATHER_MAX) {
    mm_set_error("index_select_start: expected 1 to %d tensors, got %d", MM_BG_GATHER_MAX, n);
    return NULL;
  }
  if (mm_index_check_dtype(idx, "index_select_start") < 0) return NULL;
  if (idx->ndim != 1) {
    mm_set_error("index_select_start: expected a 1-D index tensor, got shape %s",
                 mm_shape_str(idx->ndim, idx->shape, b, sizeof b));
    return NULL;
  }
  for (int k = 0; k < n; k++) {
    if (xs[k]->ndim == 0) {
      mm_set_error("index_select_start: expected tensors with at least 1 dimension, got a "
                   "0-dimensional tensor (tensor %d)", k + 1);
      return NULL;
    }
    if (xs[k]->shape[0] != xs[0]->shape[0]) {
      mm_set_error("index_select_start: expected tensors of %lld rows like the first, got %lld "
                   "(tensor %d)", (long long)xs[0]->shape[0], (long long)xs[k]->shape[0], k + 1);
      return NULL;
    }
  }
  mm_bg_gather *g = calloc(1, sizeof *g);
  if (!g) {
    mm_set_error("index_select_start: out of memory");
    return NULL;
  }
  snprintf(what, sizeof what, "dimension 1 of size %lld", (long long)xs[0]->shape[0]);
  g->ic = mm_index_checked(idx, xs[0]->shape[0], base, "index_select_start", what);
  if (g->ic && g->ic->storage == idx->storage) {
    /* The workers read the indices later: a private copy, so that writing
     * into idx meanwhile can neither race with them nor slip past the
     * range check. */
    mm_tensor *own = mm_raw_clone(g->ic);
    mm_tensor_release(g->ic);
    g->ic = own;
  }
  if (!g->ic) { free(g); return NULL; }
  int64_t rows = mm_numel(g->ic), ntasks = 0;
  for (int k = 0; k < n; k++) {
    mm_tensor *x = xs[k];
    /* A source that needs its graph recorded, or is not one plain block,
     * is gathered now, by the ordinary op. */
    bool now = (mm_grad_enabled() && x->requires_grad) || !mm_is_contiguous(x);
    g->first_task[k] = ntasks;
    g->n = k + 1;
    if (now) {
      g->out[k] = mm_index_select(x, 0, idx, base);
      if (!g->out[k]) { mm_bg_gather_free(g); return NULL; }
      g->c[k].k = 0;
      continue;
    }
    int64_t shape[MM_MAX_DIMS];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[0] = rows;
    g->out[k] = mm_tensor_empty(x->dtype, x->ndim, shape);
    if (!g->out[k]) { mm_bg_gather_free(g); return NULL; }
    mm_tensor_retain(x);
    g->src[k] = x;
    g->version[k] = x->storage->version;
    g->c[k] = (mm_index_rows){mm_data_ptr(g->out[k]), mm_data_ptr(x), x->shape[0],
                         x->ndim > 1 ? mm_numel(x) / x->shape[0] : 1, rows, mm_data_ptr(g->ic), base,
                         mm_dtype_size(x->dtype), x->dtype};
    ntasks += (rows + BG_ROWS - 1) / BG_ROWS;
  }
  g->first_task[n] = ntasks;
  g->ticket = mm_parallel_background(ntasks, bg_gather_task, g);
  return g;
}

void mm_index_select_finish(mm_bg_gather *g, mm_tensor **out) {
  mm_parallel_background_join(g->ticket);
  g->ticket = 0;
  for (int k = 0; k < g->n; k++) {
    /* Written in place since the start (the copy may have seen either
     * value): copy again, now that nothing else is reading. */
    if (g->src[k] && g->src[k]->storage->version != g->version[k])
      mm_index_rows_gather(&g->c[k], 0, g->c[k].k);
    out[k] = g->out[k];
    g->out[k] = NULL;
  }
  mm_bg_gather_free(g);
}

