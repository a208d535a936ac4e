/*
 * tensor.h — the core of the public C interface: the data model, tensor
 * lifetime, views, pointwise ops, autograd and threads.  microml.h
 * includes this and every op family's header.
 *
 * Data model in five minutes:
 *   - A storage is a reference-counted, 64-byte-aligned block of bytes that
 *     comes from a size-class caching allocator (mm_alloc.c).
 *   - A tensor is a view over a storage: dtype, ndim, shape, strides (in
 *     elements, may be 0 for broadcast/expanded dims), and an offset (in
 *     elements).  Views share their storage; writing through one is visible
 *     in the others.
 *   - Tensors are reference counted too.  Every function that returns a
 *     tensor returns a NEW reference the caller owns (release it with
 *     mm_tensor_release).  Arguments are borrowed.
 *   - Dims in this C API are 0-based; the Lua bindings translate from the
 *     1-based, negative-from-the-end Lua convention.
 *   - Autograd: an op whose inputs require grad (while grad mode is on)
 *     attaches an mm_node to its output; mm_backward() walks them.
 *
 * Errors: nothing here aborts on user input.  A function that fails returns
 * NULL (or a negative status) and leaves a message in mm_error(), which names
 * what was expected and what was given.
 */
#ifndef MICROML_TENSOR_H
#define MICROML_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MM_VERSION "0.1.0"
#define MM_MAX_DIMS 8

typedef enum { MM_FLOAT32 = 0, MM_FLOAT64 = 1, MM_INT64 = 2 } mm_dtype;

typedef struct mm_storage {
  void *data;          /* 64-byte aligned, nbytes long */
  size_t nbytes;
  size_t capacity;     /* size class actually allocated (>= nbytes) */
  int64_t refcount;
  uint64_t version;    /* bumped by every in-place write; autograd checks it */
} mm_storage;

typedef struct mm_node mm_node;
typedef struct mm_hook mm_hook;   /* gradient hooks (autograd.c) */

typedef struct mm_tensor {
  int64_t refcount;
  mm_dtype dtype;
  int ndim;                       /* 0 for a scalar tensor */
  int64_t shape[MM_MAX_DIMS];
  int64_t stride[MM_MAX_DIMS];    /* in elements */
  int64_t offset;                 /* in elements, into storage->data */
  mm_storage *storage;
  /* autograd */
  bool requires_grad;             /* leaf flag, or "some input requires grad" */
  bool retains_grad;              /* non-leaf asked to keep .grad */
  struct mm_tensor *grad;         /* accumulated gradient, or NULL */
  mm_node *grad_fn;               /* producer node; NULL for leaves */
  /* views (narrow, select, transpose, expand, ...) */
  struct mm_tensor *base;         /* the tensor a view looks into (never itself a view;
                                     a reference), or NULL: an in-place write through
                                     the view updates the base's history */
  uint64_t view_version;          /* storage version when the view's grad_fn was made */
  mm_hook *hooks;                 /* a leaf's gradient hooks (a non-leaf's are on grad_fn) */
} mm_tensor;

/* ---- errors ---------------------------------------------------------- */
const char *mm_error(void);
void mm_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reads the environment (MICROML_MAX_BYTES, MICROML_NUM_THREADS) now and
 * returns NULL if it is valid, else a message naming the variable, its
 * value and what was expected.  A program should call it at start-up and
 * refuse to run on a message: the runtime then ignores the bad value
 * (no limit, one thread per CPU), which is not what was asked for. */
const char *mm_config_error(void);

/* ---- dtypes ---------------------------------------------------------- */
size_t mm_dtype_size(mm_dtype dt);
const char *mm_dtype_name(mm_dtype dt);        /* "float32", "float64", "int64" */
int mm_dtype_from_name(const char *name, mm_dtype *out); /* 0 ok, -1 unknown */
static inline bool mm_dtype_is_float(mm_dtype dt) { return dt != MM_INT64; }

/* ---- memory ---------------------------------------------------------- */
typedef struct mm_memory_stats {
  uint64_t bytes_live;     /* bytes in storages that are in use */
  uint64_t bytes_cached;   /* bytes held in the cache, free for reuse */
  uint64_t bytes_peak;     /* high-water mark of bytes_live */
  uint64_t alloc_count;    /* storages handed out */
  uint64_t system_allocs;  /* of those, how many needed a fresh system allocation */
  uint64_t bytes_limit;    /* 0 = no limit */
} mm_memory_stats;
void mm_memory_stats_get(mm_memory_stats *out);
void mm_empty_cache(void);
void mm_set_memory_limit(uint64_t bytes);   /* 0 removes the limit */
/* Bytes freshly allocated from the system since the last call; the Lua
   bindings feed this to the collector so it sees tensor memory. */
uint64_t mm_take_alloc_debt(void);

mm_storage *mm_storage_new(size_t nbytes);
void mm_storage_retain(mm_storage *s);
void mm_storage_release(mm_storage *s);

/* ---- tensor lifetime ------------------------------------------------- */
/* New contiguous tensor with uninitialised data. ndim may be 0. */
mm_tensor *mm_tensor_empty(mm_dtype dt, int ndim, const int64_t *shape);
mm_tensor *mm_tensor_zeros(mm_dtype dt, int ndim, const int64_t *shape);
mm_tensor *mm_tensor_full(mm_dtype dt, int ndim, const int64_t *shape, double value);
mm_tensor *mm_tensor_scalar(mm_dtype dt, double value);   /* 0-dim */
void mm_tensor_retain(mm_tensor *t);
void mm_tensor_release(mm_tensor *t);

/* ---- geometry -------------------------------------------------------- */
int64_t mm_numel(const mm_tensor *t);
bool mm_is_contiguous(const mm_tensor *t);
static inline void *mm_data_ptr(const mm_tensor *t) {
  return (char *)t->storage->data + (size_t)t->offset * mm_dtype_size(t->dtype);
}
/* Checks a shape: sizes >= 0, ndim <= MM_MAX_DIMS, product fits. 0 ok. */
int mm_check_shape(int ndim, const int64_t *shape, const char *where);
/* "(2, 3)" into buf; returns buf. */
const char *mm_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);

/* ---- element access -------------------------------------------------- */
double mm_get_flat(const mm_tensor *t, int64_t i);   /* i-th element in row-major order */
void mm_set_flat(mm_tensor *t, int64_t i, double v);
/* Bump the version of t's storage after an in-place write. */
static inline void mm_bump_version(mm_tensor *t) { t->storage->version++; }

/* ---- creation -------------------------------------------------------- */
mm_tensor *mm_arange(mm_dtype dt, double start, double end, double step);
mm_tensor *mm_linspace(mm_dtype dt, double start, double end, int64_t steps);
mm_tensor *mm_eye(mm_dtype dt, int64_t n, int64_t m);
mm_tensor *mm_rand(mm_dtype dt, int ndim, const int64_t *shape);    /* U[0,1) */
mm_tensor *mm_randn(mm_dtype dt, int ndim, const int64_t *shape);   /* N(0,1) */
mm_tensor *mm_randint(int64_t low, int64_t high, int ndim, const int64_t *shape);
mm_tensor *mm_randperm(int64_t n);
int mm_uniform_(mm_tensor *t, double lo, double hi);
int mm_normal_(mm_tensor *t, double mean, double std);

/* ---- random generator (seeded, reproducible across runs) -------------- */
void mm_manual_seed(uint64_t seed);
uint64_t mm_random_u64(void);
double mm_random_uniform(void);                 /* [0,1) */
double mm_random_normal(void);
/* Whole generator state, for checkpoints. */
typedef struct mm_rng_state { uint64_t s[4]; double spare; int has_spare; } mm_rng_state;
void mm_rng_get_state(mm_rng_state *out);
void mm_rng_set_state(const mm_rng_state *in);

/* ---- views (share storage; differentiable) ------------------------------ */
mm_tensor *mm_reshape(mm_tensor *t, int ndim, const int64_t *shape);   /* one -1 allowed; copies if it must */
mm_tensor *mm_view(mm_tensor *t, int ndim, const int64_t *shape);      /* never copies; errors if impossible */
mm_tensor *mm_transpose(mm_tensor *t, int d0, int d1);
mm_tensor *mm_permute(mm_tensor *t, int ndim, const int *perm);
mm_tensor *mm_narrow(mm_tensor *t, int dim, int64_t start, int64_t len);
mm_tensor *mm_select(mm_tensor *t, int dim, int64_t index);
mm_tensor *mm_expand(mm_tensor *t, int ndim, const int64_t *shape);    /* -1 keeps a size */
#define MM_ALL_DIMS (-1000)
mm_tensor *mm_squeeze(mm_tensor *t, int dim);   /* dim MM_ALL_DIMS: every size-1 dim */
mm_tensor *mm_unsqueeze(mm_tensor *t, int dim);
mm_tensor *mm_contiguous(mm_tensor *t);   /* t itself (new ref) if already contiguous */
mm_tensor *mm_clone(mm_tensor *t);
mm_tensor *mm_to_dtype(mm_tensor *t, mm_dtype dt);  /* t itself if same dtype */
/* Normalises a possibly negative 0-based dim against ndim; -1 on error. */
int mm_wrap_dim(int dim, int ndim, const char *where);

/* ---- in-place data ------------------------------------------------------ */
/* The in-place writers below refuse a leaf that requires grad while grad
   mode is on (as PyTorch does); this is that check, for writers elsewhere
   (0 ok, -1 with a message naming op). */
int mm_check_inplace(const mm_tensor *t, const char *op);
int mm_fill_(mm_tensor *t, double v);
/* The i-th element (0-based, row-major) set to v, as an in-place write
   (checked, recorded, version bumped); mm_set_flat is the unchecked one. */
int mm_set_element_(mm_tensor *t, int64_t i, double v);
int mm_copy_(mm_tensor *dst, mm_tensor *src);      /* src broadcasts to dst */

/* ---- broadcasting ------------------------------------------------------- */
int mm_broadcast_shapes(int na, const int64_t *sa, int nb, const int64_t *sb,
                        int *nout, int64_t *out);

/* ---- elementwise ops (broadcasting, differentiable) ---------------------- */
typedef enum {
  MM_OP_ADD, MM_OP_SUB, MM_OP_MUL, MM_OP_DIV, MM_OP_POW, MM_OP_MAXIMUM, MM_OP_MINIMUM,
  MM_OP_EQ, MM_OP_NE, MM_OP_LT, MM_OP_LE, MM_OP_GT, MM_OP_GE,
  MM_BINARY_COUNT
} mm_binary_op;
mm_tensor *mm_binary(mm_binary_op op, mm_tensor *a, mm_tensor *b);
/* Same with a plain number on one side (scalar_first: number is the left operand). */
mm_tensor *mm_binary_scalar(mm_binary_op op, mm_tensor *a, double s, bool scalar_first);
/* a = a op b in place (b broadcasts to a's shape); not recorded by autograd
   except as a version bump of a. */
int mm_binary_inplace(mm_binary_op op, mm_tensor *a, mm_tensor *b);
int mm_binary_scalar_inplace(mm_binary_op op, mm_tensor *a, double s);
const char *mm_binary_name(mm_binary_op op);

/* Unary pointwise ops, with or without parameters: one line each in
   pointwise.def (installed beside this header), which generates this enum,
   the kernels, the names and the Lua bindings. */
typedef enum {
#define MM_UNARY(ID, ...) MM_OP_##ID,
#include "pointwise.def"
#undef MM_UNARY
  MM_UNARY_COUNT
} mm_unary_op;
#define MM_POINTWISE_MAX_PARAMS 2
/* What the table says about an op. */
typedef struct mm_unary_desc {
  const char *name;          /* "leaky_relu" */
  const char *node;          /* grad_fn name, or NULL: not differentiable */
  bool int64_ok;             /* accepts int64 input (else float32/float64 only) */
  int nparams;               /* 0..MM_POINTWISE_MAX_PARAMS */
  bool need_one;             /* each parameter optional, at least one required (clamp) */
  const char *param_names[MM_POINTWISE_MAX_PARAMS];   /* PyTorch's names */
  double param_defaults[MM_POINTWISE_MAX_PARAMS];
} mm_unary_desc;
/* The table entry of op, or NULL if op is out of range. */
const mm_unary_desc *mm_unary_info(mm_unary_op op);
const char *mm_unary_name(mm_unary_op op);
/* f(x; params): params holds the op's nparams values, or is NULL for the
   defaults.  An int64 input (where allowed) with a non-integral parameter
   is promoted to float32, as torch promotes; an infinite parameter
   saturates to the int64 range, a finite one outside it is an error. */
mm_tensor *mm_pointwise(mm_unary_op op, mm_tensor *x, const double *params);
/* mm_pointwise with the default parameters. */
mm_tensor *mm_unary(mm_unary_op op, mm_tensor *a);

/* where(cond, a, b): a where cond != 0, else b (b NULL means 0). */
mm_tensor *mm_where(mm_tensor *cond, mm_tensor *a, mm_tensor *b);
mm_tensor *mm_masked_fill(mm_tensor *t, mm_tensor *mask, double value);
/* Wrappers over mm_pointwise kept for the C API.  clamp: min(max(x, lo),
   hi); a NULL bound is absent (at least one is required).  NaN inputs stay
   NaN.  Gradient 1 where lo <= x <= hi, else 0.  An int64 tensor with a
   non-integral bound is promoted to float32. */
mm_tensor *mm_clamp(mm_tensor *x, const double *lo, const double *hi);
/* x for x > 0, slope * x otherwise. */
mm_tensor *mm_leaky_relu(mm_tensor *x, double slope);


/* ---- autograd (the node structure is internal: runtime/autograd.h) ------ */
/* Grad mode is per thread (like torch.no_grad); on by default. */
bool mm_grad_enabled(void);
void mm_set_grad_enabled(bool on);           /* off: ops record no graph */
/* Makes a leaf require grad or not.  Refuses an integer tensor (only
   float32/float64 can require gradients) and turning it off on a non-leaf
   (detach it instead).  `where` names the caller in messages. */
int mm_set_requires_grad(mm_tensor *t, bool on, const char *where);
/* A non-leaf keeps its .grad after backward (a leaf always does). */
int mm_retain_grad(mm_tensor *t);
/* Replaces t->grad (g may be NULL to clear it): g must have t's shape and a
   float dtype.  Takes a new reference to g. */
int mm_set_grad(mm_tensor *t, mm_tensor *g);
/* The producer's name ("MulBackward"), or NULL for a leaf. */
const char *mm_grad_fn_name(const mm_tensor *t);
/* Cuts t from the graph in place: it becomes a leaf that does not require
   grad (PyTorch's detach_). */
void mm_detach_(mm_tensor *t);
/* Gradients of outputs with respect to inputs, returned in result[0..nin)
   (new references, NULL for an input the outputs do not depend on when
   allow_unused) without touching any .grad: torch.autograd.grad.
   grad_outputs may be NULL, or hold NULL for a one-element output. */
int mm_grad(int nout, mm_tensor *const *outputs, mm_tensor *const *grad_outputs, int nin,
            mm_tensor *const *inputs, bool retain_graph, bool allow_unused, mm_tensor **result);
/* A gradient hook runs when the gradient of t is computed during backward
   (for a leaf, before it reaches .grad): it returns NULL to keep the
   gradient, a new reference of the same shape to replace it, or sets
   *failed (with a message in mm_error()) to stop the backward. */
typedef mm_tensor *(*mm_grad_hook_fn)(void *ctx, mm_tensor *grad, int *failed);
/* Registers fn on t (which must require grad); free_ctx(ctx), if given, is
   called when the hook is removed or t's history is freed.  Returns a
   handle > 0 for mm_remove_hook, or 0 with a message. */
uint64_t mm_register_hook(mm_tensor *t, mm_grad_hook_fn fn, void *ctx, void (*free_ctx)(void *));
/* Removes a hook registered on t; 0 if it was there, -1 if not. */
int mm_remove_hook(mm_tensor *t, uint64_t handle);
/* Gradient norms per node during backward, for the graph export. */
void mm_autograd_set_stats(bool on);
bool mm_autograd_stats_enabled(void);
/* Backward from t with gradient g (NULL: t must have one element; g = 1).
   Leaves that require grad accumulate into ->grad. */
int mm_backward(mm_tensor *t, mm_tensor *g, bool retain_graph);
mm_tensor *mm_detach(mm_tensor *t);         /* shares storage, cut from the graph */

/* ---- threads ------------------------------------------------------------ */
/* Kernels split work by shape, never by thread count, so results do not
   depend on it.  Default: MICROML_NUM_THREADS, else the CPUs available. */
#define MM_MAX_THREADS 256
void mm_set_num_threads(int n);   /* clamped to 1..MM_MAX_THREADS */
int mm_get_num_threads(void);
/* Joins the worker threads (they restart on demand). */
void mm_parallel_shutdown(void);

/* ---- printing ------------------------------------------------------------ */
/* Pretty-prints like PyTorch/NumPy, eliding the middle of large tensors.
   Returns a malloc'd string the caller frees, or NULL on error. */
char *mm_tensor_format(const mm_tensor *t);

#endif /* MICROML_TENSOR_H */
