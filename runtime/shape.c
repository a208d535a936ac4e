/* shape.c — ops that join, cut and frame tensors: cat, stack, split,
 * chunk, pad.  Each op's backward sits right under its forward.
 *
 * Joining copies each input into a window of one fresh output (views made
 * with mm_tensor_view_of, so nothing is recorded for the windows); the
 * backward hands each input the matching window of the gradient, as a view.
 * split and chunk are plain narrow views, so their gradients come from
 * NarrowBackward in view.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"

/* ---- cat / stack ------------------------------------------------------------ */

/* PyTorch still accepts 1-D empty tensors next to anything in cat (legacy
 * code starts accumulators with an empty tensor), and skips them. */
static bool cat_skips(int ndim, const int64_t *shape) { return ndim == 1 && shape[0] == 0; }

/* Input i's gradient is its window of g along dim (a view of g); for stack
 * the window is the i-th slice of the new dim. */
typedef struct { int dim; bool stack; } cat_args;

static int cat_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const cat_args *a = mm_node_args(n);
  int dim = a->dim;
  bool stack = a->stack;
  int64_t off = 0;
  for (int i = 0; i < n->ninputs; i++) {
    const mm_edge *e = &n->edges[i];
    bool skip = !stack && cat_skips(e->ndim, e->shape);
    int64_t len = stack ? 1 : skip ? 0 : e->shape[dim];
    if (e->needs_grad) {
      if (skip) {
        gin[i] = mm_tensor_zeros(g->dtype, e->ndim, e->shape);
      } else if (stack) {
        int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
        for (int d = 0, k = 0; d < g->ndim; d++)
          if (d != dim) { shape[k] = g->shape[d]; stride[k] = g->stride[d]; k++; }
        gin[i] = mm_tensor_view_of(g, g->ndim - 1, shape, stride, g->offset + off * g->stride[dim]);
      } else {
        int64_t shape[MM_MAX_DIMS];
        memcpy(shape, g->shape, sizeof(int64_t) * (size_t)g->ndim);
        shape[dim] = len;
        gin[i] = mm_tensor_view_of(g, g->ndim, shape, g->stride, g->offset + off * g->stride[dim]);
      }
      if (!gin[i]) return -1;
    }
    off += len;
  }
  return 0;
}

/* cat and stack share everything but the output shape and the window. */
static mm_tensor *join(int n, mm_tensor *const *ts, int dim, bool stack) {
  const char *op = stack ? "stack" : "cat";
  char b1[160], b2[160];
  if (n <= 0) {
    mm_set_error("%s: expected a non-empty list of tensors, got an empty list", op);
    return NULL;
  }
  /* The reference is the first tensor cat does not skip. */
  int ref = 0;
  if (!stack)
    while (ref < n - 1 && cat_skips(ts[ref]->ndim, ts[ref]->shape)) ref++;
  const mm_tensor *r = ts[ref];
  bool all_skipped = !stack && cat_skips(r->ndim, r->shape);
  if (!stack && r->ndim == 0) {
    mm_set_error("cat: expected tensors with at least 1 dimension, got a 0-dimensional tensor "
                 "at position %d", ref + 1);
    return NULL;
  }
  if (stack && r->ndim == MM_MAX_DIMS) {
    mm_set_error("stack: a tensor has at most %d dimensions, got %d-dimensional inputs",
                 MM_MAX_DIMS, r->ndim);
    return NULL;
  }
  int ondim = stack ? r->ndim + 1 : r->ndim;
  if ((dim = mm_wrap_dim(dim, ondim, op)) < 0) return NULL;

  mm_dtype dt = r->dtype;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    const mm_tensor *t = ts[i];
    dt = mm_promote(dt, t->dtype);
    if (!stack && cat_skips(t->ndim, t->shape)) continue;
    bool same = t->ndim == r->ndim;
    for (int d = 0; same && d < r->ndim; d++)
      same = t->shape[d] == r->shape[d] || (!stack && d == dim);
    if (!same) {
      if (stack)
        mm_set_error("stack: expected every tensor to have tensor 1's shape %s, got shape %s for "
                     "tensor %d", mm_shape_str(r->ndim, r->shape, b1, sizeof b1),
                     mm_shape_str(t->ndim, t->shape, b2, sizeof b2), i + 1);
      else
        mm_set_error("cat: expected tensor %d to have tensor %d's shape %s except in dimension "
                     "%d, got shape %s", i + 1, ref + 1,
                     mm_shape_str(r->ndim, r->shape, b1, sizeof b1), dim + 1,
                     mm_shape_str(t->ndim, t->shape, b2, sizeof b2));
      return NULL;
    }
    /* inputs may be broadcast views of up to 2^63-1 elements each */
    if (!mm_add_ok(total, stack ? 1 : t->shape[dim], &total)) {
      mm_set_error("%s: the joined size of dimension %d does not fit in 64 bits (tensor %d "
                   "has shape %s)", op, dim + 1, i + 1,
                   mm_shape_str(t->ndim, t->shape, b1, sizeof b1));
      return NULL;
    }
  }

  int64_t shape[MM_MAX_DIMS];
  if (stack) {
    for (int d = 0, k = 0; d < ondim; d++) shape[d] = d == dim ? n : r->shape[k++];
  } else {
    memcpy(shape, r->shape, sizeof(int64_t) * (size_t)r->ndim);
    if (!all_skipped) shape[dim] = total;
  }
  mm_tensor *out = mm_tensor_empty(dt, ondim, shape);
  if (!out) return NULL;
  int64_t off = 0;
  for (int i = 0; i < n; i++) {
    mm_tensor *t = ts[i];
    if (!stack && cat_skips(t->ndim, t->shape)) continue;
    int64_t wstride[MM_MAX_DIMS];
    if (stack)
      for (int d = 0, k = 0; d < ondim; d++) { if (d != dim) wstride[k++] = out->stride[d]; }
    else
      memcpy(wstride, out->stride, sizeof(int64_t) * (size_t)ondim);
    mm_tensor *win = mm_tensor_view_of(out, t->ndim, t->shape, wstride, off * out->stride[dim]);
    int rc = win ? mm_raw_copy_into(win, t, stack ? "stack" : "cat") : -1;
    mm_tensor_release(win);
    if (rc < 0) { mm_tensor_release(out); return NULL; }
    off += stack ? 1 : t->shape[dim];
  }

  static const mm_op_def CAT = {"cat", "CatBackward", cat_backward};
  static const mm_op_def STACK = {"stack", "StackBackward", cat_backward};
  cat_args a = {dim, stack};
  return mm_record(out, stack ? &STACK : &CAT, n, ts, 0, NULL, &a, sizeof a);
}

mm_tensor *mm_cat(int n, mm_tensor *const *ts, int dim) { return join(n, ts, dim, false); }
mm_tensor *mm_stack(int n, mm_tensor *const *ts, int dim) { return join(n, ts, dim, true); }

/* ---- split / chunk ------------------------------------------------------------ */

/* n narrow views of the given sizes; sizes already checked to sum up. */
static mm_tensor **cut(mm_tensor *t, int64_t n, const int64_t *sizes, int dim, const char *op) {
  mm_tensor **out = calloc(n > 0 ? (size_t)n : 1, sizeof *out);
  if (!out) {
    mm_set_error("%s: out of memory for %lld pieces", op, (long long)n);
    return NULL;
  }
  int64_t start = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!(out[i] = mm_narrow(t, dim, start, sizes[i]))) {
      for (int64_t j = 0; j < i; j++) mm_tensor_release(out[j]);
      free(out);
      return NULL;
    }
    start += sizes[i];
  }
  return out;
}

/* Wraps dim for a split-like op; -1 on error. */
static int split_dim(const mm_tensor *t, int dim, const char *op) {
  if (t->ndim == 0) {
    mm_set_error("%s: expected a tensor with at least 1 dimension, got a 0-dimensional tensor", op);
    return -1;
  }
  return mm_wrap_dim(dim, t->ndim, op);
}

/* Pieces of `each` along dim, the last one shorter; one empty piece for an
 * empty dim (as torch.split). */
static mm_tensor **split_even(mm_tensor *t, int64_t each, int dim, int64_t *count, const char *op) {
  int64_t size = t->shape[dim];
  int64_t n = size == 0 ? 1 : size / each + (size % each != 0);   /* no overflow for huge each */
  int64_t *sizes = malloc((size_t)n * sizeof *sizes);
  if (!sizes) {
    mm_set_error("%s: out of memory for %lld pieces", op, (long long)n);
    return NULL;
  }
  for (int64_t i = 0; i < n; i++) sizes[i] = size - i * each < each ? size - i * each : each;
  mm_tensor **out = cut(t, n, sizes, dim, op);
  free(sizes);
  if (out) *count = n;
  return out;
}

mm_tensor **mm_split(mm_tensor *t, int64_t split_size, int dim, int64_t *count) {
  if ((dim = split_dim(t, dim, "split")) < 0) return NULL;
  if (split_size < 1 && !(split_size == 0 && t->shape[dim] == 0)) {
    mm_set_error("split: expected a split size >= 1, got %lld", (long long)split_size);
    return NULL;
  }
  return split_even(t, split_size ? split_size : 1, dim, count, "split");
}

mm_tensor **mm_split_sizes(mm_tensor *t, int64_t n, const int64_t *sizes, int dim) {
  if ((dim = split_dim(t, dim, "split")) < 0) return NULL;
  if (n < 1) {
    mm_set_error("split: expected at least one size, got an empty list of sizes");
    return NULL;
  }
  int64_t sum = 0;
  for (int64_t i = 0; i < n; i++) {
    if (sizes[i] < 0 || sizes[i] > t->shape[dim]) {
      mm_set_error("split: expected sizes between 0 and %lld (the size of dimension %d), got "
                   "%lld at position %lld", (long long)t->shape[dim], dim + 1,
                   (long long)sizes[i], (long long)i + 1);
      return NULL;
    }
    sum += sizes[i];
  }
  if (sum != t->shape[dim]) {
    char b[160];
    mm_set_error("split: expected sizes summing to %lld (dimension %d of shape %s), got sizes "
                 "summing to %lld", (long long)t->shape[dim], dim + 1,
                 mm_shape_str(t->ndim, t->shape, b, sizeof b), (long long)sum);
    return NULL;
  }
  return cut(t, n, sizes, dim, "split");
}

mm_tensor **mm_chunk(mm_tensor *t, int64_t chunks, int dim, int64_t *count) {
  if ((dim = split_dim(t, dim, "chunk")) < 0) return NULL;
  if (chunks < 1) {
    mm_set_error("chunk: expected a number of chunks >= 1, got %lld", (long long)chunks);
    return NULL;
  }
  int64_t size = t->shape[dim];
  if (size == 0) { /* torch keeps the count here: chunks empty pieces */
    int64_t *zeros = calloc((size_t)chunks, sizeof *zeros);
    mm_tensor **out = zeros ? cut(t, chunks, zeros, dim, "chunk") : NULL;
    if (!zeros) mm_set_error("chunk: out of memory for %lld pieces", (long long)chunks);
    free(zeros);
    if (out) *count = chunks;
    return out;
  }
  /* ceil without size + chunks - 1, which overflows for huge counts */
  return split_even(t, size / chunks + (size % chunks != 0), dim, count, "chunk");
}

/* ---- pad ------------------------------------------------------------------------- */

/* Before/after amounts per dim (dim order) from torch's last-dim-first pairs. */
static int pad_amounts(const mm_tensor *x, int npads, const int64_t *pads, int64_t *before,
                       int64_t *after) {
  char b[160];
  if (npads < 0 || npads % 2 || npads / 2 > x->ndim) {
    mm_set_error("pad: expected an even number of padding amounts, at most 2 per dimension "
                 "(at most %d for shape %s), got %d", 2 * x->ndim,
                 mm_shape_str(x->ndim, x->shape, b, sizeof b), npads);
    return -1;
  }
  for (int d = 0; d < x->ndim; d++) {
    int k = x->ndim - 1 - d;
    before[d] = 2 * k < npads ? pads[2 * k] : 0;
    after[d] = 2 * k < npads ? pads[2 * k + 1] : 0;
    /* The size is checked in full: x may be a broadcast view of up to
     * 2^63-1 elements, and the amounts are the user's. */
    const int64_t lim = (int64_t)1 << 50;
    int64_t size;
    bool fits = before[d] <= lim && before[d] >= -lim && after[d] <= lim && after[d] >= -lim &&
                mm_add_ok(x->shape[d], before[d], &size) && mm_add_ok(size, after[d], &size);
    if (!fits || size < 0) {
      if (fits)
        mm_set_error("pad: padding (%lld, %lld) gives dimension %d of shape %s a negative "
                     "size %lld", (long long)before[d], (long long)after[d], d + 1,
                     mm_shape_str(x->ndim, x->shape, b, sizeof b), (long long)size);
      else
        mm_set_error("pad: padding (%lld, %lld) of dimension %d of shape %s is too large "
                     "(expected amounts within +-2^50 and a size that fits)",
                     (long long)before[d], (long long)after[d], d + 1,
                     mm_shape_str(x->ndim, x->shape, b, sizeof b));
      return -1;
    }
  }
  return 0;
}

/* The gradient of a pad is the gradient cropped back: pad with the amounts
 * negated (which also zero-fills where the forward cropped). */
typedef struct { int64_t before[MM_MAX_DIMS], after[MM_MAX_DIMS]; } pad_args;

static int pad_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const pad_args *a = mm_node_args(n);
  int nd = n->edges[0].ndim;
  int64_t neg[2 * MM_MAX_DIMS];
  for (int d = 0; d < nd; d++) {
    int k = nd - 1 - d;
    neg[2 * k] = -a->before[d];
    neg[2 * k + 1] = -a->after[d];
  }
  gin[0] = mm_pad(g, 2 * nd, neg, 0.0);
  return gin[0] ? 0 : -1;
}

mm_tensor *mm_pad(mm_tensor *x, int npads, const int64_t *pads, double value) {
  int64_t before[MM_MAX_DIMS], after[MM_MAX_DIMS], shape[MM_MAX_DIMS];
  if (pad_amounts(x, npads, pads, before, after) < 0) return NULL;
  if (x->dtype == MM_INT64 && value != floor(value)) {
    mm_set_error("pad: an int64 tensor cannot be padded with %g (expected an integer value)", value);
    return NULL;
  }
  for (int d = 0; d < x->ndim; d++) shape[d] = x->shape[d] + before[d] + after[d];
  mm_tensor *out = mm_tensor_full(x->dtype, x->ndim, shape, value);
  if (!out) return NULL;
  /* The part of x that survives the cropping, and where it lands. */
  int64_t win[MM_MAX_DIMS], xoff = x->offset, ooff = 0;
  bool empty = false;
  for (int d = 0; d < x->ndim; d++) {
    int64_t cut_lo = before[d] < 0 ? -before[d] : 0, cut_hi = after[d] < 0 ? -after[d] : 0;
    win[d] = x->shape[d] - cut_lo - cut_hi;
    if (win[d] <= 0) { empty = true; break; }
    xoff += cut_lo * x->stride[d];
    ooff += (before[d] > 0 ? before[d] : 0) * out->stride[d];
  }
  if (!empty) {
    mm_tensor *src = mm_tensor_view_of(x, x->ndim, win, x->stride, xoff);
    mm_tensor *dst = src ? mm_tensor_view_of(out, x->ndim, win, out->stride, ooff) : NULL;
    int rc = dst ? mm_raw_copy_into(dst, src, "pad") : -1;
    mm_tensor_release(src);
    mm_tensor_release(dst);
    if (rc < 0) { mm_tensor_release(out); return NULL; }
  }
  static const mm_op_def PAD = {"pad", "PadBackward", pad_backward};
  pad_args a;
  memcpy(a.before, before, sizeof a.before);
  memcpy(a.after, after, sizeof a.after);
  return mm_record(out, &PAD, 1, &x, 0, NULL, &a, sizeof a);
}

