/* tensor.c — tensor lifetime, geometry, dtypes and element access.
 * Tensor headers are recycled through a free list for the same reason
 * storages are: an eager op creates one, and malloc per op is measurable. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "microml.h"
#include "autograd.h"
#include "internal.h"

static mm_tensor *free_headers;   /* linked through ->grad */

size_t mm_dtype_size(mm_dtype dt) { return dt == MM_FLOAT32 ? 4 : 8; }

const char *mm_dtype_name(mm_dtype dt) {
  switch (dt) {
  case MM_FLOAT32: return "float32";
  case MM_FLOAT64: return "float64";
  case MM_INT64: return "int64";
  }
  return "?";
}

int mm_dtype_from_name(const char *name, mm_dtype *out) {
  static const struct { const char *n; mm_dtype d; } names[] = {
    {"float32", MM_FLOAT32}, {"float", MM_FLOAT32}, {"float64", MM_FLOAT64},
    {"double", MM_FLOAT64}, {"int64", MM_INT64}, {"long", MM_INT64},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(name, names[i].n) == 0) { *out = names[i].d; return 0; }
  return -1;
}

const char *mm_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "(");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, ")");
  return buf;
}

int mm_check_shape(int ndim, const int64_t *shape, const char *where) {
  if (ndim < 0 || ndim > MM_MAX_DIMS) {
    mm_set_error("%s: expected at most %d dimensions, got %d", where, MM_MAX_DIMS, ndim);
    return -1;
  }
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      mm_set_error("%s: expected sizes >= 0, got %lld for dimension %d", where,
                   (long long)shape[i], i + 1);
      return -1;
    }
  }
  /* 2^50 elements is far beyond any machine's memory and keeps numel times
   * the element size well inside int64 and size_t. */
  int64_t n;
  if (!mm_shape_numel(ndim, shape, &n) || n > ((int64_t)1 << 50)) {
    char b[160];
    mm_set_error("%s: shape %s has too many elements to allocate", where,
                 mm_shape_str(ndim, shape, b, sizeof b));
    return -1;
  }
  return 0;
}

/* Every tensor's count fits int64 (mm_tensor_view_checked enforces it), but
 * a running product can still overflow before a later zero size. */
/* Every tensor's count fits int64 (views and allocations check it), so the
 * product needs no overflow check; it is taken in uint64_t only because a
 * zero size next to huge ones may overflow the product of the others. */
int64_t mm_numel(const mm_tensor *t) {
  uint64_t p = 1;
  bool empty = false;
  for (int i = 0; i < t->ndim; i++) {
    p *= (uint64_t)t->shape[i];
    empty |= t->shape[i] == 0;
  }
  return empty ? 0 : (int64_t)p;
}

bool mm_is_contiguous(const mm_tensor *t) {
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != expect) return false;
    expect *= t->shape[i];
  }
  return true;
}

static mm_tensor *header_new(void) {
  mm_tensor *t = free_headers;
  if (t) free_headers = t->grad;
  else if (!(t = malloc(sizeof *t))) {
    mm_set_error("out of memory allocating a tensor header");
    return NULL;
  }
  /* Copying a constant template compiles to a handful of vector stores;
   * memset of this size becomes `rep stos`, whose start-up cost was about
   * 4% of a one-element `a + b`. */
  static const mm_tensor fresh = {.refcount = 1};
  memcpy(t, &fresh, sizeof *t);
  return t;
}

/* mm_tensor_empty for a shape taken from a live tensor, which is valid by
 * construction: ops on tiny tensors skip re-checking it (elementwise.c). */
mm_tensor *mm_tensor_empty_unchecked(mm_dtype dt, int ndim, const int64_t *shape);

mm_tensor *mm_tensor_empty(mm_dtype dt, int ndim, const int64_t *shape) {
  if (mm_check_shape(ndim, shape, "tensor") < 0) return NULL;
  return mm_tensor_empty_unchecked(dt, ndim, shape);
}

mm_tensor *mm_tensor_empty_unchecked(mm_dtype dt, int ndim, const int64_t *shape) {
  /* The caller's shape is a live tensor's, but a broadcast view may have up
   * to 2^63-1 elements, so materialising one (contiguous, clone, an op's
   * output) still needs the allocation bound; one comparison. */
  int64_t n;
  if (!mm_shape_numel(ndim, shape, &n) || n > ((int64_t)1 << 50)) {
    char b[160];
    mm_set_error("tensor: shape %s has too many elements to allocate",
                 mm_shape_str(ndim, shape, b, sizeof b));
    return NULL;
  }
  mm_storage *s = mm_storage_new((size_t)n * mm_dtype_size(dt));
  if (!s) return NULL;
  mm_tensor *t = header_new();
  if (!t) { mm_storage_release(s); return NULL; }
  t->dtype = dt;
  t->ndim = ndim;
  t->storage = s;
  if (ndim) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);   /* scalars pass NULL */
  mm_contiguous_strides(ndim, shape, t->stride);
  return t;
}

mm_tensor *mm_tensor_zeros(mm_dtype dt, int ndim, const int64_t *shape) {
  mm_tensor *t = mm_tensor_empty(dt, ndim, shape);
  if (t) memset(mm_data_ptr(t), 0, (size_t)mm_numel(t) * mm_dtype_size(dt));
  return t;
}

mm_tensor *mm_tensor_full(mm_dtype dt, int ndim, const int64_t *shape, double v) {
  mm_tensor *t = mm_tensor_empty(dt, ndim, shape);
  if (!t) return NULL;
  int64_t n = mm_numel(t);
  void *p = mm_data_ptr(t);   /* fresh and contiguous: a plain loop, no iterator */
  if (dt == MM_FLOAT32) for (int64_t i = 0; i < n; i++) ((float *)p)[i] = (float)v;
  else if (dt == MM_FLOAT64) for (int64_t i = 0; i < n; i++) ((double *)p)[i] = v;
  else for (int64_t i = 0; i < n; i++) ((int64_t *)p)[i] = (int64_t)v;
  return t;
}

mm_tensor *mm_tensor_scalar(mm_dtype dt, double v) { return mm_tensor_full(dt, 0, NULL, v); }

/* The geometry invariant (internal.h): the element count fits int64 and the
 * lowest and highest reachable offsets lie in the storage.  Ops check their
 * arguments with their own messages first; this is the backstop that no
 * view op, present or future, can bypass.  An empty view reaches nothing, so
 * its offset only has to be a sane number: it is clamped into the storage so
 * that data pointers computed from it stay in range. */
static int check_view(const mm_tensor *base, int ndim, const int64_t *shape,
                      const int64_t *stride, int64_t *offset, const char *where) {
  char b1[160], b2[160];
  int64_t n, lo = *offset, hi = *offset;
  int64_t avail = (int64_t)(base->storage->nbytes / mm_dtype_size(base->dtype));
  if (ndim < 0 || ndim > MM_MAX_DIMS) {
    mm_set_error("%s: expected at most %d dimensions, got %d", where, MM_MAX_DIMS, ndim);
    return -1;
  }
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) {
      mm_set_error("%s: expected sizes >= 0, got %lld for dimension %d", where,
                   (long long)shape[i], i + 1);
      return -1;
    }
  if (!mm_shape_numel(ndim, shape, &n)) {
    mm_set_error("%s: shape %s has more elements than fit in a 64-bit count (at most "
                 "2^63-1)", where, mm_shape_str(ndim, shape, b1, sizeof b1));
    return -1;
  }
  if (n == 0) {
    if (*offset < 0 || *offset > avail) *offset = *offset < 0 ? 0 : avail;
    return 0;
  }
  bool ok = true;
  for (int i = 0; i < ndim && ok; i++) {
    int64_t span;   /* (size - 1) * stride: how far this dim moves */
    ok = mm_mul_ok(shape[i] - 1, stride[i], &span) &&
         (span < 0 ? mm_add_ok(lo, span, &lo) : mm_add_ok(hi, span, &hi));
  }
  if (!ok || lo < 0 || hi >= avail) {
    mm_set_error("%s: a view of shape %s with strides %s at offset %lld reaches outside its "
                 "storage of %lld elements (expected offsets 0..%lld)", where,
                 mm_shape_str(ndim, shape, b1, sizeof b1),
                 mm_shape_str(ndim, stride, b2, sizeof b2), (long long)*offset,
                 (long long)avail, (long long)avail - 1);
    return -1;
  }
  return 0;
}

/* For the runtime's own windows (cat, pad, reductions, matmul reshapes,
 * sum_to): geometry derived from tensors that are valid, with sizes the op
 * has already computed with checked arithmetic.  The sanitizer build
 * (make sanitize) defines MM_CHECK_INTERNAL_VIEWS, so the whole suite runs
 * these through the checks too and catches a caller that breaks the rule;
 * views a user asks for always go through mm_tensor_view_checked. */
mm_tensor *mm_tensor_view_of(const mm_tensor *base, int ndim, const int64_t *shape,
                             const int64_t *stride, int64_t offset) {
#ifdef MM_CHECK_INTERNAL_VIEWS
  return mm_tensor_view_checked(base, ndim, shape, stride, offset, "view");
#else
  mm_tensor *t = header_new();
  if (!t) return NULL;
  t->dtype = base->dtype;
  t->ndim = ndim;
  if (ndim > 0) {
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    memcpy(t->stride, stride, sizeof(int64_t) * (size_t)ndim);
  }
  t->offset = offset;
  t->storage = base->storage;
  mm_storage_retain(t->storage);
  return t;
#endif
}

/* t's own geometry is valid already, so an alias of it skips the checks:
 * every recorded op saves its tensors this way, so this is on the path of
 * every small op. */
mm_tensor *mm_tensor_alias(const mm_tensor *t) {
  mm_tensor *a = header_new();
  if (!a) return NULL;
  a->dtype = t->dtype;
  a->ndim = t->ndim;
  memcpy(a->shape, t->shape, sizeof a->shape);
  memcpy(a->stride, t->stride, sizeof a->stride);
  a->offset = t->offset;
  a->storage = t->storage;
  mm_storage_retain(a->storage);
  return a;
}

mm_tensor *mm_tensor_view_checked(const mm_tensor *base, int ndim, const int64_t *shape,
                                  const int64_t *stride, int64_t offset, const char *where) {
  if (check_view(base, ndim, shape, stride, &offset, where) < 0) return NULL;
  mm_tensor *t = header_new();
  if (!t) return NULL;
  t->dtype = base->dtype;
  t->ndim = ndim;
  if (ndim > 0) {   /* a 0-dim view may come with NULL shape and strides */
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    memcpy(t->stride, stride, sizeof(int64_t) * (size_t)ndim);
  }
  t->offset = offset;
  t->storage = base->storage;
  mm_storage_retain(t->storage);
  return t;
}

void mm_tensor_retain(mm_tensor *t) { t->refcount++; }

void mm_tensor_release(mm_tensor *t) {
  if (!t || --t->refcount > 0) return;
  mm_storage_release(t->storage);
  if (t->grad) mm_tensor_release(t->grad);
  if (t->grad_fn) mm_autograd_detach_output(t);
  if (t->base) mm_tensor_release(t->base);   /* a root base: no deeper recursion */
  if (t->hooks) mm_hooks_free(t->hooks);
  t->grad = free_headers;
  free_headers = t;
}

const char *mm_config_error(void) {
  mm_storage_read_env();
  (void)mm_get_num_threads();   /* reads MICROML_NUM_THREADS once */
  return mm_env_error();
}

/* The header free list is a cache like the storage one, and must not
 * outlive an unloaded library (leak checkers). */
void mm_empty_cache(void) {
  while (free_headers) {
    mm_tensor *t = free_headers;
    free_headers = t->grad;
    free(t);
  }
  mm_storage_cache_empty();
}

/* ---- autograd node lifetime ------------------------------------------------
 * Here rather than in autograd.c because the two lifetimes are one: a
 * tensor owns its grad_fn node and a node owns its saved tensors, so
 * releasing either may release the other.  The engine (autograd.c) sits
 * above this file and the kernels; nothing here calls an op. */

void mm_node_retain(mm_node *n) { n->refcount++; }

void mm_hooks_free(mm_hook *h) {
  while (h) {
    mm_hook *next = h->next;
    if (h->free_ctx) h->free_ctx(h->ctx);
    free(h);
    h = next;
  }
}

void mm_node_release_saved(mm_node *n) {
  for (int i = 0; i < n->nsaved; i++) {
    mm_tensor_release(n->saved[i]);
    n->saved[i] = NULL;
  }
  n->nsaved = 0;
}

/* Iterative: releasing the head of a long chain frees the whole chain with
 * a heap-allocated worklist instead of recursion. */
void mm_node_release(mm_node *first) {
  if (!first || --first->refcount > 0) return;
  size_t cap = 64, top = 0;
  mm_node **stack = malloc(cap * sizeof *stack);
  mm_node *inline_stack[1];
  if (!stack) { stack = inline_stack; cap = 1; }
  stack[top++] = first;
  while (top) {
    mm_node *n = stack[--top];
    for (int i = 0; i < n->ninputs; i++) {
      mm_edge *e = &n->edges[i];
      if (e->leaf) mm_tensor_release(e->leaf);
      if (e->node && --e->node->refcount == 0) {
        if (top == cap && stack != inline_stack) {
          mm_node **bigger = realloc(stack, 2 * cap * sizeof *stack);
          if (bigger) { stack = bigger; cap *= 2; }
        }
        if (top < cap) stack[top++] = e->node;
        else { e->node->refcount = 1; mm_node_release(e->node); } /* last resort */
      }
    }
    mm_node_release_saved(n);
    if (n->grad_acc) mm_tensor_release(n->grad_acc);
    if (n->hooks) mm_hooks_free(n->hooks);
    free(n);
  }
  if (stack != inline_stack) free(stack);
}

void mm_autograd_detach_output(mm_tensor *t) {
  mm_node *n = t->grad_fn;
  t->grad_fn = NULL;
  if (n->output == t) n->output = NULL;
  mm_node_release(n);
}



/* Offset (in elements) of the i-th element in row-major order. */
static int64_t flat_offset(const mm_tensor *t, int64_t i) {
  int64_t off = t->offset;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t n = t->shape[d];
    off += (i % n) * t->stride[d];
    i /= n;
  }
  return off;
}

double mm_get_flat(const mm_tensor *t, int64_t i) {
  int64_t off = flat_offset(t, i);
  switch (t->dtype) {
  case MM_FLOAT32: return ((float *)t->storage->data)[off];
  case MM_FLOAT64: return ((double *)t->storage->data)[off];
  case MM_INT64: return (double)((int64_t *)t->storage->data)[off];
  }
  return 0;
}

void mm_set_flat(mm_tensor *t, int64_t i, double v) {
  int64_t off = flat_offset(t, i);
  switch (t->dtype) {
  case MM_FLOAT32: ((float *)t->storage->data)[off] = (float)v; break;
  case MM_FLOAT64: ((double *)t->storage->data)[off] = v; break;
  case MM_INT64: ((int64_t *)t->storage->data)[off] = (int64_t)v; break;
  }
}

int mm_wrap_dim(int dim, int ndim, const char *where) {
  int n = ndim > 0 ? ndim : 1;
  if (dim < -n || dim >= n) {
    mm_set_error("%s: dimension out of range (expected 1..%d or -%d..-1, got %d)", where, n, n,
                 dim >= 0 ? dim + 1 : dim);
    return -1;
  }
  return dim < 0 ? dim + n : dim;
}
