/* autograd.h — the tape: nodes that ops attach to their outputs, and the
 * interface op implementations use to record themselves.
 *
 * Recording an op (forward and backward live side by side in the op's file):
 *
 *     mm_tensor *in[2] = {a, b};
 *     if (mm_needs_grad(2, in)) {
 *       mm_node *n = mm_node_new("MulBackward", mul_backward, 2, in);
 *       if (!n) { mm_tensor_release(out); return NULL; }
 *       mm_node_save(n, a); mm_node_save(n, b);
 *       mm_node_attach(n, out);
 *     }
 *
 * A backward function receives the gradient of the output and fills gin[i]
 * (a new reference) for each input whose edge needs_grad.  gin[i] may have
 * any shape that broadcasts to the input's shape and any float dtype: the
 * engine sums it down to the input's shape and casts it, in one place.
 * Backward functions run with grad mode off and use ordinary ops.
 *
 * Saved tensors are stored as detached aliases (same storage, no grad_fn),
 * so saving an op's own output creates no reference cycle, and the
 * storage's version number at save time is checked before backward. */
#ifndef MICROML_AUTOGRAD_H
#define MICROML_AUTOGRAD_H

#include "microml.h"

#define MM_NODE_MAX_SAVED 6

typedef int (*mm_backward_fn)(mm_node *n, mm_tensor *gout, mm_tensor **gin);

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
  const char *name;             /* "MulBackward" — shown by grad_fn and the DOT export */
  mm_backward_fn backward;
  int ninputs;
  mm_edge *edges;               /* points at inline_edges when ninputs <= 4 */
  mm_edge inline_edges[4];
  int nsaved;
  mm_tensor *saved[MM_NODE_MAX_SAVED];
  uint64_t saved_version[MM_NODE_MAX_SAVED];
  bool released;                /* saved tensors freed by a backward without retain_graph */
  double fargs[4];              /* op parameters (exponent, eps, slope, ...) */
  int64_t iargs[2 * MM_MAX_DIMS];
  void *ctx;                    /* op-owned extra data, free()d with the node */
  mm_tensor *output;            /* weak: the output tensor while it lives */
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

bool mm_needs_grad(int n, mm_tensor *const *inputs);

mm_node *mm_node_new(const char *name, mm_backward_fn fn, int n, mm_tensor *const *inputs);
int mm_node_save(mm_node *node, mm_tensor *t);     /* returns the slot, or -1 */
void mm_node_attach(mm_node *node, mm_tensor *out); /* takes the node's reference */
void mm_node_retain(mm_node *n);
void mm_node_release(mm_node *n);

/* Called by mm_tensor_release for a tensor with a grad_fn. */
void mm_autograd_detach_output(mm_tensor *t);

/* Sum g down to (ndim, shape) as broadcasting's inverse. New reference. */
mm_tensor *mm_sum_to(mm_tensor *g, int ndim, const int64_t *shape);
/* Statistics of gradients flowing through each node (off by default). */
void mm_autograd_set_stats(bool on);
bool mm_autograd_stats_enabled(void);

#endif
