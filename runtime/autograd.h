/* autograd.h — the tape, as op implementations see it (internal: not
 * installed).  Public autograd calls (backward, detach, grad mode,
 * requires_grad) are in tensor.h.
 *
 * Recording an op: its forward computes `out` with raw kernels, then hands
 * it to the one recorder with everything backward will need:
 *
 *     static const mm_op_def MUL = {"mul", "MulBackward", mul_backward};
 *     ...
 *     mm_tensor *in[2] = {a, b}, *saved[2] = {a, b};
 *     mul_args args = {...};                      // any plain struct, any size
 *     return mm_record(out, &MUL, 2, in, 2, saved, &args, sizeof args);
 *
 * mm_record decides whether a node is needed (grad mode on and an input
 * requires grad), refuses to record a non-float output, saves the tensors
 * with their storage versions, copies the argument struct, and attaches the
 * node.  On any failure it releases `out`, leaves a message and returns NULL,
 * so an op ends with `return mm_record(...)` and has no failure path of its
 * own.  No other file creates nodes.
 *
 * A backward function receives the gradient of the output and fills gin[i]
 * (a new reference) for each input whose edge needs_grad.  gin[i] may have
 * any shape that broadcasts to the input's shape and any float dtype: the
 * engine sums it down to the input's shape and casts it, in one place.
 * Backward functions run with grad mode off and may use ordinary ops.
 *
 * Saved tensors are stored as detached aliases (same storage, no grad_fn),
 * so saving an op's own output creates no reference cycle, and the
 * storage's version number at save time is checked before backward. */
#ifndef MICROML_AUTOGRAD_H
#define MICROML_AUTOGRAD_H

#include "microml.h"

typedef int (*mm_backward_fn)(mm_node *n, mm_tensor *gout, mm_tensor **gin);

/* What an op tells the recorder about itself; one static const per op. */
typedef struct mm_op_def {
  const char *op;            /* the op's user-facing name, for messages: "mul" */
  const char *node;          /* the node's name, shown by grad_fn and the DOT export */
  mm_backward_fn backward;
} mm_op_def;

typedef struct mm_edge {
  mm_node *node;        /* producer of this input (a reference), or NULL */
  mm_tensor *leaf;      /* leaf input that accumulates .grad (a reference), or NULL */
  bool needs_grad;
  mm_dtype dtype;       /* the input's dtype and shape, to unbroadcast into */
  int ndim;
  int64_t shape[MM_MAX_DIMS];
} mm_edge;

struct mm_node {
  int64_t refcount;
  const char *name;             /* def->node */
  mm_backward_fn backward;
  int ninputs;
  mm_edge *edges;               /* ninputs of them, in the node's own block */
  int nsaved;
  mm_tensor **saved;            /* detached aliases; an entry may be NULL */
  uint64_t *saved_version;
  void *args;                   /* the op's argument struct (copied), or NULL */
  bool released;                /* saved tensors freed by a backward without retain_graph */
  mm_tensor *output;            /* weak: the output tensor while it lives */
  mm_hook *hooks;               /* gradient hooks of the output (a non-leaf's) */
  mm_dtype out_dtype;
  int out_ndim;
  int64_t out_shape[MM_MAX_DIMS];
  uint64_t id;                  /* creation order: stable ids for DOT output */
  /* gradient statistics of the last backward (for visualisation) */
  bool has_stats;
  double grad_norm, grad_maxabs;
  bool grad_nonfinite;
  /* engine scratch, valid during one backward */
  uint64_t visit;
  int64_t pending;
  mm_tensor *grad_acc;
};

/* The recorder (see the top of this file).  in[i] may be NULL (an input
   that gets no gradient, e.g. a mask); saved[i] may be NULL too.  args may
   be NULL when args_size is 0. */
mm_tensor *mm_record(mm_tensor *out, const mm_op_def *def, int nin, mm_tensor *const *in,
                     int nsaved, mm_tensor *const *saved, const void *args, size_t args_size);
/* Whether mm_record would record for these inputs (to skip work a
   non-recorded call does not need, such as computing a saved mask). */
bool mm_needs_grad(int n, mm_tensor *const *inputs);
/* The argument struct given to mm_record. */
static inline const void *mm_node_args(const mm_node *n) { return n->args; }

/* ---- views and in-place writes (autograd.c) -------------------------------
 * A view keeps a reference to its base (the tensor that owns the geometry it
 * looks into, never itself a view).  An in-place op computes its result out
 * of place with a recorded op and hands it to mm_inplace_commit, which
 * writes it into `self` and rebases the history: self's grad_fn becomes the
 * result's node, or, when self is a view of a tensor that requires grad,
 * the base's grad_fn becomes a CopySlices node (the base with the view's
 * region replaced by the result) and the view becomes a view of that.
 * Views made before the write are brought up to date (as views of the
 * base's current history) the next time they are used: their storage
 * version has moved since their grad_fn was made. */
/* Makes v a view of base's root (v sharing base's storage). */
void mm_view_set_base(mm_tensor *v, mm_tensor *base);
/* Whether an in-place write to self (from `other`, may be NULL) must be
   recorded: grad mode on and self, other or self's base requires grad. */
bool mm_inplace_records(const mm_tensor *self, const mm_tensor *other);
/* 0, or -1 naming op when self may not be written in place: a leaf that
   requires grad (or a view of one) while grad mode is on, or a tensor whose
   elements share memory (an expanded view). */
int mm_inplace_check(const mm_tensor *self, const char *op);
/* Writes value (self's shape; any dtype, cast) into self and rebases the
   history as above.  value is borrowed. */
int mm_inplace_commit(mm_tensor *self, mm_tensor *value, const char *op);
/* A recorded view of t's storage with this geometry (offset in elements of
   the storage), e.g. one element for t:_set(i, v). */
mm_tensor *mm_strided_view(mm_tensor *t, int ndim, const int64_t *shape, const int64_t *stride,
                           int64_t offset);

/* A registered gradient hook (a list per leaf tensor or node). */
struct mm_hook {
  mm_grad_hook_fn fn;
  void *ctx;
  void (*free_ctx)(void *);
  uint64_t id;
  struct mm_hook *next;
};
/* Frees a hook list (tensor.c and node release). */
void mm_hooks_free(mm_hook *h);

/* Node lifetime (tensor.c: a tensor owns its grad_fn node, a node owns its
   saved tensors, so both lifetimes live in one file). */
void mm_node_retain(mm_node *n);
void mm_node_release(mm_node *n);
void mm_node_release_saved(mm_node *n);
/* Cuts t from its producer node (t becomes a leaf). */
void mm_autograd_detach_output(mm_tensor *t);

/* Statistics of gradients flowing through each node (off by default). */
void mm_autograd_set_stats(bool on);
bool mm_autograd_stats_enabled(void);

#endif
