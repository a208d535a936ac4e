/* internal.h — what only the runtime uses (not installed).
 *
 * The runtime is layered; each file calls only into layers below it, so
 * the call graph between files has no cycle (`make check-layers` checks):
 *
 *   1. error.c, cpu.c, parallel.c          messages, CPU features, the pool
 *   2. alloc.c, tensor.c                   storage; tensor and node lifetime
 *   3. iter.c                              the strided iterators (elements, rows)
 *   4. pointwise_raw.c (+ _avx2)           raw kernels: never record, never read grad mode
 *   5. autograd.c                          the recorder and the backward engine
 *   6. the recorded ops                    elementwise, view, reduce, linalg, conv, ...
 *
 * The engine and tensor lifetime call only the raw layer; an op body that
 * needs an unrecorded copy, cast or sum calls mm_raw_* too, so no op flips
 * grad mode. */
#ifndef MICROML_INTERNAL_H
#define MICROML_INTERNAL_H

#include "microml.h"

/* ---- checked arithmetic ------------------------------------------------------
 * Sizes, strides and offsets come from users (Lua integers up to 2^63-1), so
 * every product or sum of them is computed with these: signed overflow is
 * undefined behaviour, and a wrapped size turns into a wrong answer or an
 * out-of-bounds access.  Each returns false when the result does not fit. */
static inline bool mm_add_ok(int64_t a, int64_t b, int64_t *r) {
  return !__builtin_add_overflow(a, b, r);
}
static inline bool mm_mul_ok(int64_t a, int64_t b, int64_t *r) {
  return !__builtin_mul_overflow(a, b, r);
}
/* The element count of a shape (sizes >= 0), false if it exceeds int64.  A
 * zero size anywhere gives 0, even when the other sizes' product would not
 * fit (an empty (0, 2^40, 2^40) tensor is fine). */
static inline bool mm_shape_numel(int ndim, const int64_t *shape, int64_t *n) {
  for (int i = 0; i < ndim; i++)
    if (shape[i] == 0) { *n = 0; return true; }
  int64_t p = 1;
  for (int i = 0; i < ndim; i++)
    if (!mm_mul_ok(p, shape[i], &p)) return false;
  *n = p;
  return true;
}
/* Row-major strides for shape.  Of an empty shape any strides are valid (no
 * element is reachable), so where the running product would overflow there
 * it stops growing instead. */
static inline void mm_contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = s;
    int64_t next;
    if (shape[i] > 1 && mm_mul_ok(s, shape[i], &next)) s = next;
  }
}

/* ---- the environment (error.c) -------------------------------------------- */
/* A non-negative count: digits, optionally with a fraction and/or exponent
 * (1e9, 1.5e3) that leave a whole number, and with byte_suffixes one of K M
 * G T or KiB MiB GiB TiB (powers of 1024) or KB MB GB TB (powers of 1000).
 * False for anything else or above max. */
bool mm_parse_count(const char *text, bool byte_suffixes, uint64_t max, uint64_t *out);
/* Records a bad environment variable (the first one) for mm_config_error. */
void mm_env_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *mm_env_error(void);   /* NULL when nothing was recorded */

/* ---- tensors (tensor.c, alloc.c) ----------------------------------------- */
/* A view sharing t's storage with the given geometry.  The one place views
 * are made, so it enforces the invariant every kernel relies on: the element
 * count fits int64 and every reachable offset lies inside the storage.  NULL
 * with a message naming `where` otherwise (mm_tensor_view_of: "view"). */
mm_tensor *mm_tensor_view_checked(const mm_tensor *t, int ndim, const int64_t *shape,
                                  const int64_t *stride, int64_t offset, const char *where);
mm_tensor *mm_tensor_view_of(const mm_tensor *t, int ndim, const int64_t *shape,
                             const int64_t *stride, int64_t offset);
/* A view with t's own geometry (no checks needed: t's is valid). */
mm_tensor *mm_tensor_alias(const mm_tensor *t);
/* mm_tensor_empty without the shape check (the caller's shape is valid). */
mm_tensor *mm_tensor_empty_unchecked(mm_dtype dt, int ndim, const int64_t *shape);
/* Frees the allocator's cached blocks (mm_empty_cache also frees headers). */
void mm_storage_cache_empty(void);
/* Reads MICROML_MAX_BYTES now if it has not been read (alloc.c). */
void mm_storage_read_env(void);

/* Result dtype of a binary op between two tensors (float64 > float32 > int64). */
static inline mm_dtype mm_promote(mm_dtype a, mm_dtype b) {
  if (a == MM_FLOAT64 || b == MM_FLOAT64) return MM_FLOAT64;
  if (a == MM_FLOAT32 || b == MM_FLOAT32) return MM_FLOAT32;
  return MM_INT64;
}

/* ---- raw kernels (pointwise_raw.c) -----------------------------------------
 * Same arithmetic as the public ops, without recording and without the
 * user-facing checks the public ops make (in-place safety, dtype policy).
 * Shapes are still checked where they can mismatch. */
/* a op b with broadcasting and promotion (int64 / int64 divides as float32). */
mm_tensor *mm_raw_binary(mm_binary_op op, mm_tensor *a, mm_tensor *b);
/* a = a op b (b broadcasts to a; b may overlap a's memory); bumps a's version. */
int mm_raw_binary_(mm_binary_op op, mm_tensor *a, mm_tensor *b);
/* The shape and dtype checks of mm_raw_binary_ alone (0 ok, -1 + message). */
int mm_raw_binary_check_(mm_binary_op op, const mm_tensor *a, const mm_tensor *b);
/* Result dtype of a binary op (division of integers gives float32). */
mm_dtype mm_raw_binary_dtype(mm_binary_op op, mm_dtype a, mm_dtype b);
/* f(x) for an op of pointwise.def with its MM_POINTWISE_MAX_PARAMS
   parameters (never NULL); int64 only for the ops the table allows (the
   caller checks, and checks int64 parameters are in range). */
mm_tensor *mm_raw_pointwise(mm_unary_op op, mm_tensor *x, const double *params);
/* g * f'(x) in one pass, from x and y = f(x); g, x and y all of x's shape
   and float dtype.  Exactly 0 where f' is 0 (see pointwise.def). */
mm_tensor *mm_raw_pointwise_grad(mm_unary_op op, mm_tensor *g, mm_tensor *x, mm_tensor *y,
                                 const double *params);
/* g * relu'(x) in one pass (g of x's shape and dtype). */
mm_tensor *mm_raw_relu_backward(mm_tensor *g, mm_tensor *x);
/* t in dtype dt: t itself (a new reference) when it already is. */
mm_tensor *mm_raw_cast(mm_tensor *t, mm_dtype dt);
/* A contiguous copy in t's dtype. */
mm_tensor *mm_raw_clone(mm_tensor *t);
/* t itself (a new reference) if contiguous, else a contiguous copy. */
mm_tensor *mm_raw_contiguous(mm_tensor *t);
/* dst = src with broadcasting and casting; `where` names the caller in
   the shape error.  Does not bump dst's version. */
int mm_raw_copy_into(mm_tensor *dst, mm_tensor *src, const char *where);
/* Every element of t set to v (cast to t's dtype); no version bump. */
void mm_raw_fill(mm_tensor *t, double v);
/* g summed down to (ndim, shape): broadcasting's inverse. */
mm_tensor *mm_raw_sum_to(mm_tensor *g, int ndim, const int64_t *shape);
/* where(cond, a, b) with broadcasting, in the promoted dtype of a and b. */
mm_tensor *mm_raw_where(mm_tensor *cond, mm_tensor *a, mm_tensor *b);

/* ---- index rows (index.c), shared with the batch prefetch (prefetch.c) -- */
/* dst[o, k, :] = src[o, ix[k] - base, :]: rows of `inner` elements. */
typedef struct mm_index_rows {
  char *dst;
  const char *src;
  int64_t size, inner, k;       /* rows in the selected dim, row length, number of indices */
  const int64_t *ix;
  int64_t base;
  size_t es;
  mm_dtype dt;
} mm_index_rows;
/* Copies output rows [r0, r1) (r = o*k + j); an mm_parallel_fn. */
void mm_index_rows_gather(void *rows, int64_t r0, int64_t r1);
/* 0, or -1 with a message naming op when idx is not int64. */
int mm_index_check_dtype(const mm_tensor *idx, const char *op);
/* idx as a contiguous array with every index in base..base+size-1 (a new
   reference), or NULL with a message naming op and `what` (the dimension). */
mm_tensor *mm_index_checked(mm_tensor *idx, int64_t size, int64_t base, const char *op,
                            const char *what);

#endif
