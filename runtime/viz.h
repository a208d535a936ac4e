/* viz.h — the autograd graph as Graphviz DOT text, and gradient norms for
 * inspection.  Included by microml.h.
 *
 * mm_graph_dot draws the graph that produced `root`:
 *   - one node per op (name without "Backward", output shape, dtype) and one
 *     per leaf that requires grad (its name from `names`, else "tensor");
 *   - edges in data-flow direction, input -> consumer; a node shared by
 *     several consumers is drawn once;
 *   - node ids are renumbered in breadth-first order from the root, so the
 *     same graph gives byte-identical text in every run;
 *   - after a backward with statistics on (mm_autograd_set_stats), op labels
 *     carry the norm and max |g| of the gradient that reached them, leaf
 *     labels those of their .grad; fill colours bucket the norm by powers of
 *     ten, non-finite gradients are filled red, and a legend explains it;
 *   - `collapse` prefixes turn a module's internals into one node (see
 *     mm_dot_options).
 * The walk is iterative: graphs of 100k+ nodes need no deep C stack. */
#ifndef MICROML_VIZ_H
#define MICROML_VIZ_H
#include "tensor.h"

#define MM_DOT_DEFAULT_MAX_NODES 2000

/* Zero-initialised options are the defaults. */
typedef struct mm_dot_options {
  /* Export refuses graphs that would draw more nodes than this (after
     collapsing); <= 0 means MM_DOT_DEFAULT_MAX_NODES. */
  int64_t max_nodes;
  /* Parameter-name prefixes ("encoder" matches "encoder" and "encoder.*";
     a prefix ending in '.' matches as written).  Each becomes one node
     holding: its parameters (longest matching prefix wins); the ops that
     consume them directly or through view/reshape/transpose/dtype ops of
     them alone; and every op on a path between two of those (so an
     activation inside the module joins it).  An op claimed by an earlier
     prefix stays there. */
  const char *const *collapse;
  int ncollapse;
  bool hide_legend;
  const char *title;     /* graph caption, or NULL */
} mm_dot_options;

/* DOT text for the graph of root, as a malloc'd string the caller frees; or
 * NULL with mm_error() set (root outside any graph, too many nodes, out of
 * memory).  named[i] (borrowed) is shown as names[i]; the first name given
 * for a tensor wins.  opts may be NULL. */
char *mm_graph_dot(mm_tensor *root, const mm_tensor *const *named, const char *const *names,
                   int nnamed, const mm_dot_options *opts);

/* Magnitude summary of a tensor's elements (any dtype and layout).  norm and
 * maxabs are taken over the finite elements only; the norm is computed with
 * scaling, so finite values never overflow it. */
typedef struct mm_norm_stats {
  double norm, maxabs;
  int64_t nan_count, inf_count;
} mm_norm_stats;
void mm_tensor_norm_stats(const mm_tensor *t, mm_norm_stats *out);

#endif
