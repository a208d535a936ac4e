/* autograd.c — the engine: recording nodes, topological sort, and the
 * reverse sweep.
 *
 * Graph shape: a non-leaf tensor holds a reference to its grad_fn node; a
 * node holds references to the nodes of its inputs (and to leaf inputs that
 * require grad) through its edges.  Nothing points back to outputs except a
 * weak pointer, so the graph is a DAG of references and dies with its last
 * output.  Both sorting and freeing are iterative: a 100,000-node chain
 * needs no deep C stack. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"

/* Grad mode is per thread: a background loop, or a future second Lua
 * state on another thread, never sees this thread's no_grad. */
static _Thread_local bool grad_off;   /* zero-initialised: grad mode on */
static bool stats_enabled = false;
static uint64_t next_id = 1;
static uint64_t visit_gen = 0;

bool mm_grad_enabled(void) { return !grad_off; }
void mm_set_grad_enabled(bool on) { grad_off = !on; }
void mm_autograd_set_stats(bool on) { stats_enabled = on; }
bool mm_autograd_stats_enabled(void) { return stats_enabled; }

static bool stale_view(const mm_tensor *t);

bool mm_needs_grad(int n, mm_tensor *const *inputs) {
  if (grad_off) return false;
  for (int i = 0; i < n; i++)
    if (inputs[i] && (inputs[i]->requires_grad || (inputs[i]->base && stale_view(inputs[i]))))
      return true;
  return false;
}

/* Arguments and saved tensors live in the node's own block after it: one
 * allocation per node whatever their number or size. */
static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

static int refresh_view(mm_tensor *t);

/* A view whose storage was written since its grad_fn was made, of a base
 * that requires grad: its history is out of date (see autograd.h). */
static bool stale_view(const mm_tensor *t) {
  return t->base && t->base->requires_grad && t->view_version != t->storage->version;
}

/* A node with its edges, saved tensors and arguments, not yet attached. */
static mm_node *make_node(const mm_op_def *def, int nin, mm_tensor *const *in, int nsaved,
                          mm_tensor *const *saved, const void *args, size_t args_size) {
  for (int i = 0; i < nin; i++)
    if (in[i] && stale_view(in[i]) && refresh_view(in[i]) < 0) return NULL;
  size_t off_edges = align16(sizeof(mm_node));
  size_t off_saved = off_edges + align16((size_t)nin * sizeof(mm_edge));
  size_t off_vers = off_saved + align16((size_t)nsaved * sizeof(mm_tensor *));
  size_t off_args = off_vers + align16((size_t)nsaved * sizeof(uint64_t));
  mm_node *node = calloc(1, off_args + args_size);
  if (!node) {
    mm_set_error("%s: out of memory recording the autograd node", def->op);
    return NULL;
  }
  char *base = (char *)node;
  node->refcount = 1;
  node->name = def->node;
  node->backward = def->backward;
  node->ninputs = nin;
  node->edges = (mm_edge *)(base + off_edges);
  node->saved = (mm_tensor **)(base + off_saved);
  node->saved_version = (uint64_t *)(base + off_vers);
  node->args = args_size ? base + off_args : NULL;
  if (args_size) memcpy(node->args, args, args_size);
  node->id = next_id++;
  for (int i = 0; i < nin; i++) {
    mm_edge *e = &node->edges[i];
    mm_tensor *t = in[i];
    if (!t) continue;
    e->dtype = t->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    if (!t->requires_grad) continue;
    e->needs_grad = true;
    if (t->grad_fn) {
      e->node = t->grad_fn;
      mm_node_retain(e->node);
    } else {
      e->leaf = t;
      mm_tensor_retain(t);
    }
  }
  for (int k = 0; k < nsaved; k++) {
    mm_tensor *t = saved[k];
    if (!t) continue;
    mm_tensor *alias = mm_tensor_alias(t);
    if (!alias) {
      node->nsaved = k;
      mm_node_release(node);
      mm_set_error("%s: out of memory saving a tensor for backward", def->op);
      return NULL;
    }
    node->saved[k] = alias;
    node->saved_version[k] = t->storage->version;
  }
  node->nsaved = nsaved;
  return node;
}

/* Makes node t's producer (taking over the caller's reference), replacing
 * any producer t had. */
static void attach_node(mm_node *node, mm_tensor *t) {
  if (t->grad_fn) mm_autograd_detach_output(t);
  t->grad_fn = node;
  t->requires_grad = true;
  node->output = t;
  node->out_dtype = t->dtype;
  node->out_ndim = t->ndim;
  memcpy(node->out_shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
  if (t->base) t->view_version = t->storage->version;
}

mm_tensor *mm_record(mm_tensor *out, const mm_op_def *def, int nin, mm_tensor *const *in,
                     int nsaved, mm_tensor *const *saved, const void *args, size_t args_size) {
  if (!out || !mm_needs_grad(nin, in)) return out;
  if (!mm_dtype_is_float(out->dtype)) {
    mm_set_error("%s: only floating-point tensors can require gradients, got %s", def->op,
                 mm_dtype_name(out->dtype));
    mm_tensor_release(out);
    return NULL;
  }
  mm_node *node = make_node(def, nin, in, nsaved, saved, args, args_size);
  if (!node) {
    mm_tensor_release(out);
    return NULL;
  }
  attach_node(node, out);
  return out;
}

/* ---- views and in-place writes ------------------------------------------------
 * The geometry of a region of a base's storage, relative to the base: what
 * AsStrided (a view's history rebuilt from its base) and CopySlices (a base
 * whose region was written) need to map a gradient of the base's shape onto
 * the region and back. */
typedef struct {
  int ndim, bndim;
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS], offset;   /* the region */
  int64_t bshape[MM_MAX_DIMS], bstride[MM_MAX_DIMS];         /* the base */
} region_args;

static region_args region_of(const mm_tensor *v, const mm_tensor *b) {
  region_args a = {.ndim = v->ndim, .bndim = b->ndim, .offset = v->offset - b->offset};
  memcpy(a.shape, v->shape, sizeof(int64_t) * (size_t)v->ndim);
  memcpy(a.stride, v->stride, sizeof(int64_t) * (size_t)v->ndim);
  memcpy(a.bshape, b->shape, sizeof(int64_t) * (size_t)b->ndim);
  memcpy(a.bstride, b->stride, sizeof(int64_t) * (size_t)b->ndim);
  return a;
}

/* A zeroed buffer laid out like the base (its strides, offset 0), seen as
 * the base (*whole) and as the region (*part).  Returns the buffer. */
static mm_tensor *base_layout(mm_dtype dt, const region_args *a, mm_tensor **whole,
                              mm_tensor **part) {
  int64_t extent = 1;
  for (int d = 0; d < a->bndim; d++) {
    if (a->bshape[d] == 0) { extent = 0; break; }
    extent += (a->bshape[d] - 1) * a->bstride[d];
  }
  mm_tensor *buf = mm_tensor_zeros(dt, 1, &extent);
  *whole = buf ? mm_tensor_view_of(buf, a->bndim, a->bshape, a->bstride, 0) : NULL;
  *part = *whole ? mm_tensor_view_of(buf, a->ndim, a->shape, a->stride, a->offset) : NULL;
  if (!*part) {
    mm_tensor_release(*whole);
    mm_tensor_release(buf);
    *whole = NULL;
    return NULL;
  }
  return buf;
}

/* A view rebuilt from its base: the gradient lands in the region of zeros
 * of the base's shape (added, so elements a view repeats sum up). */
static int as_strided_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *whole, *part, *buf = base_layout(g->dtype, mm_node_args(n), &whole, &part);
  if (!buf) return -1;
  int rc = mm_raw_binary_(MM_OP_ADD, part, g);
  if (rc == 0) gin[0] = mm_raw_clone(whole);
  mm_tensor_release(part), mm_tensor_release(whole), mm_tensor_release(buf);
  return rc == 0 && gin[0] ? 0 : -1;
}
static const mm_op_def AS_STRIDED = {"view", "AsStridedBackward", as_strided_backward};

/* The base after a write into its region: the old base gets the gradient
 * outside the region, the written value the gradient inside it. */
static int copy_slices_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *whole, *part, *buf = base_layout(g->dtype, mm_node_args(n), &whole, &part);
  if (!buf) return -1;
  int rc = mm_raw_copy_into(whole, g, "CopySlicesBackward");
  if (rc == 0 && n->edges[1].needs_grad && !(gin[1] = mm_raw_clone(part))) rc = -1;
  if (rc == 0 && n->edges[0].needs_grad) {
    mm_raw_fill(part, 0);
    if (!(gin[0] = mm_raw_clone(whole))) rc = -1;
  }
  mm_tensor_release(part), mm_tensor_release(whole), mm_tensor_release(buf);
  return rc;
}
static const mm_op_def COPY_SLICES = {"copy_slices", "CopySlicesBackward", copy_slices_backward};

void mm_view_set_base(mm_tensor *v, mm_tensor *base) {
  mm_tensor *root = base->base ? base->base : base;
  mm_tensor_retain(root);
  v->base = root;
  v->view_version = v->storage->version;
}

/* t's history as a view of its base's current history. */
static int refresh_view(mm_tensor *t) {
  region_args a = region_of(t, t->base);
  mm_node *n = make_node(&AS_STRIDED, 1, &t->base, 0, NULL, &a, sizeof a);
  if (!n) return -1;
  attach_node(n, t);
  return 0;
}

mm_tensor *mm_strided_view(mm_tensor *t, int ndim, const int64_t *shape, const int64_t *stride,
                           int64_t offset) {
  mm_tensor *v = mm_tensor_view_of(t, ndim, shape, stride, offset);
  if (!v) return NULL;
  mm_view_set_base(v, t);
  if (mm_grad_enabled() && v->base->requires_grad && refresh_view(v) < 0) {
    mm_tensor_release(v);
    return NULL;
  }
  return v;
}

bool mm_inplace_records(const mm_tensor *self, const mm_tensor *other) {
  return !grad_off && (self->requires_grad || (other && other->requires_grad) ||
                       (self->base && self->base->requires_grad));
}

int mm_inplace_check(const mm_tensor *self, const char *op) {
  if (!grad_off && self->requires_grad && !self->grad_fn) {
    mm_set_error("%s: a leaf tensor that requires grad cannot be modified in place "
                 "(turn grad mode off first, e.g. wrap it in mm.no_grad, or use :detach())", op);
    return -1;
  }
  const mm_tensor *b = self->base;
  if (!grad_off && b && b->requires_grad && !b->grad_fn) {
    mm_set_error("%s: a view of a leaf tensor that requires grad cannot be modified in place "
                 "(turn grad mode off first, e.g. wrap it in mm.no_grad, or clone() the view)", op);
    return -1;
  }
  if (!grad_off && b && b->requires_grad && !self->requires_grad && !stale_view(self)) {
    mm_set_error("%s: this view of a tensor that requires grad was made with grad mode off; "
                 "writing it in place with grad mode on would bypass autograd (make the view "
                 "with grad mode on, or write under no_grad)", op);
    return -1;
  }
  for (int d = 0; d < self->ndim; d++)
    if (self->stride[d] == 0 && self->shape[d] > 1) {
      mm_set_error("%s: more than one element of the tensor refers to the same memory (an "
                   "expanded view, dimension %d); clone() it before writing in place", op, d + 1);
      return -1;
    }
  return 0;
}

int mm_inplace_commit(mm_tensor *self, mm_tensor *value, const char *op) {
  mm_node *n = value->grad_fn;
  /* The write is about to overwrite self's old values: a tensor the new
   * node saved that views them is replaced by a copy taken now (PyTorch's
   * "original self"), so its backward still sees the values it used. */
  for (int k = 0; n && k < n->nsaved; k++) {
    mm_tensor *sv = n->saved[k];
    if (sv && sv->storage == self->storage) {
      mm_tensor *c = mm_raw_clone(sv);
      if (!c) return -1;
      mm_tensor_release(sv);
      n->saved[k] = c;
      n->saved_version[k] = c->storage->version;
    }
  }
  if (mm_raw_copy_into(self, value, op) < 0) return -1;
  mm_bump_version(self);
  if (!n) return 0;   /* nothing to record */
  mm_tensor *b = self->base;
  if (!b || !(b->requires_grad || value->requires_grad)) {
    mm_node_retain(n);
    attach_node(n, self);
    return 0;
  }
  region_args a = region_of(self, b);
  mm_tensor *in[2] = {b, value};
  mm_node *cs = make_node(&COPY_SLICES, 2, in, 0, NULL, &a, sizeof a);
  if (!cs) return -1;
  attach_node(cs, b);
  return refresh_view(self);
}

mm_tensor *mm_detach(mm_tensor *t) {
  return mm_tensor_alias(t);
}

/* acc += g, out of place unless we own acc outright. */
static int accumulate(mm_tensor **acc, mm_tensor *g, bool in_place_ok) {
  if (!*acc) {
    mm_tensor_retain(g);
    *acc = g;
    return 0;
  }
  if (in_place_ok) return mm_raw_binary_(MM_OP_ADD, *acc, g);
  mm_tensor *s = mm_raw_binary(MM_OP_ADD, *acc, g);
  if (!s) return -1;
  mm_tensor_release(*acc);
  *acc = s;
  return 0;
}

static void record_stats(mm_node *n, mm_tensor *g) {
  double ss = 0, mx = 0;
  bool bad = false;
  int64_t k = mm_numel(g);
  for (int64_t i = 0; i < k; i++) {
    double v = mm_get_flat(g, i);
    if (!isfinite(v)) bad = true;
    else {
      ss += v * v;
      if (fabs(v) > mx) mx = fabs(v);
    }
  }
  n->has_stats = true;
  n->grad_norm = sqrt(ss);
  n->grad_maxabs = mx;
  n->grad_nonfinite = bad;
}

/* Accumulates g into a leaf's .grad.  The first gradient is copied so that
 * .grad never aliases a buffer someone else holds; later ones add in place,
 * as PyTorch does.  `held` counts the references to g that the engine
 * itself holds and is about to drop: when those are all there are, and no
 * other tensor views g's storage, nobody else can see g and it becomes
 * .grad as it is — a training step's weight gradients then skip one full
 * copy every step (zero_grad leaves .grad empty, so every step is "first"). */
static int accumulate_leaf(mm_tensor *leaf, mm_tensor *g, int64_t held) {
  if (!leaf->grad && g->refcount == held && g->storage->refcount == 1 && !g->grad_fn &&
      !g->requires_grad && g->offset == 0 && mm_is_contiguous(g)) {
    mm_tensor_retain(g);
    leaf->grad = g;
    return 0;
  }
  if (!leaf->grad) {
    mm_tensor *c = mm_raw_clone(g);
    if (!c) return -1;
    leaf->grad = c;
    return 0;
  }
  for (int d = 0; d < leaf->grad->ndim; d++)
    if (leaf->grad->stride[d] == 0 && leaf->grad->shape[d] > 1) {
      /* a .grad the user assigned as an expanded view: its elements share
       * memory, so add out of place instead of into it */
      mm_tensor *sum = mm_raw_binary(MM_OP_ADD, leaf->grad, g);
      if (!sum) return -1;
      mm_tensor_release(leaf->grad);
      leaf->grad = sum;
      return 0;
    }
  return mm_raw_binary_(MM_OP_ADD, leaf->grad, g);
}

/* Brings a raw input gradient to the edge's shape and dtype. */
static mm_tensor *fit_to_edge(mm_tensor *g, const mm_edge *e) {
  mm_tensor *r = mm_raw_sum_to(g, e->ndim, e->shape);
  if (!r) return NULL;
  if (r->dtype != e->dtype) {
    mm_tensor *c = mm_raw_cast(r, e->dtype);
    mm_tensor_release(r);
    r = c;
  }
  return r;
}

typedef struct { mm_node **v; size_t n, cap; } node_vec;
static int vec_push(node_vec *s, mm_node *n) {
  if (s->n == s->cap) {
    size_t c = s->cap ? 2 * s->cap : 256;
    mm_node **v = realloc(s->v, c * sizeof *v);
    if (!v) { mm_set_error("out of memory sorting the autograd graph"); return -1; }
    s->v = v;
    s->cap = c;
  }
  s->v[s->n++] = n;
  return 0;
}

/* ---- hooks ------------------------------------------------------------------ */

static uint64_t next_hook_id = 1;

uint64_t mm_register_hook(mm_tensor *t, mm_grad_hook_fn fn, void *ctx, void (*free_ctx)(void *)) {
  if (!t->requires_grad) {
    mm_set_error("register_hook: the tensor does not require grad (a hook would never run)");
    return 0;
  }
  if (stale_view(t) && refresh_view(t) < 0) return 0;
  mm_hook *h = calloc(1, sizeof *h);
  if (!h) {
    mm_set_error("register_hook: out of memory");
    return 0;
  }
  *h = (mm_hook){fn, ctx, free_ctx, next_hook_id++, NULL};
  mm_hook **list = t->grad_fn ? &t->grad_fn->hooks : &t->hooks;
  while (*list) list = &(*list)->next;   /* hooks run in the order they were registered */
  *list = h;
  return h->id;
}

static int remove_from(mm_hook **list, uint64_t id) {
  for (; *list; list = &(*list)->next)
    if ((*list)->id == id) {
      mm_hook *h = *list;
      *list = h->next;
      h->next = NULL;
      mm_hooks_free(h);
      return 0;
    }
  return -1;
}

int mm_remove_hook(mm_tensor *t, uint64_t id) {
  if (remove_from(&t->hooks, id) == 0) return 0;
  return t->grad_fn ? remove_from(&t->grad_fn->hooks, id) : -1;
}

/* Runs a hook list on *g (a reference the caller owns, replaced when a hook
 * returns a new gradient). */
static int run_hooks(mm_hook *h, mm_tensor **g) {
  char b1[160], b2[160];
  for (; h; h = h->next) {
    int failed = 0;
    mm_tensor *r = h->fn(h->ctx, *g, &failed);
    if (failed) {
      mm_tensor_release(r);
      return -1;
    }
    if (!r) continue;
    if (r->ndim != (*g)->ndim || memcmp(r->shape, (*g)->shape, sizeof(int64_t) * (size_t)r->ndim)) {
      mm_set_error("hook: the hook returned a gradient of shape %s for one of shape %s",
                   mm_shape_str(r->ndim, r->shape, b1, sizeof b1),
                   mm_shape_str((*g)->ndim, (*g)->shape, b2, sizeof b2));
      mm_tensor_release(r);
      return -1;
    }
    mm_tensor_release(*g);
    *g = r;
  }
  return 0;
}

/* ---- the engine ---------------------------------------------------------------
 * One sweep serves backward (gradients accumulate into leaves' .grad) and
 * mm_grad (gradients of the asked-for inputs are captured and no .grad is
 * touched). */
typedef struct {
  int n;                       /* 0: backward; else mm_grad's inputs */
  mm_tensor *const *inputs;
  mm_tensor **grads;
} capture;

static bool in_engine;

static int capture_add(mm_tensor **slot, mm_tensor *g) {
  if (*slot) return accumulate(slot, g, false);
  return (*slot = mm_raw_clone(g)) ? 0 : -1;   /* never alias the engine's buffers */
}

/* A gradient reaching leaf t: its hooks, then .grad, or the capture. */
static int deliver_leaf(mm_tensor *t, mm_tensor *g, int64_t held, const capture *cap) {
  int rc = 0;
  mm_tensor_retain(g);
  if (t->hooks) {
    mm_tensor *before = g;
    if (run_hooks(t->hooks, &g) < 0) { mm_tensor_release(g); return -1; }
    if (g != before) held = 1;
  } else {
    held++;
  }
  if (cap->n) {
    for (int i = 0; i < cap->n && rc == 0; i++)
      if (cap->inputs[i] == t) rc = capture_add(&cap->grads[i], g);
  } else {
    rc = accumulate_leaf(t, g, held);
  }
  mm_tensor_release(g);
  return rc;
}

static int engine(int nroots, mm_tensor *const *roots, mm_tensor *const *seeds, bool retain_graph,
                  const capture *cap) {
  if (in_engine) {
    mm_set_error("backward: called again from inside a backward (from a hook?); compute what "
                 "you need after the outer backward returns");
    return -1;
  }
  in_engine = true;
  bool saved_off = grad_off;
  grad_off = true;
  int rc = -1;
  node_vec order = {0}, stack = {0};

  /* Pass 1: iterative DFS collecting every reachable node once and counting,
   * for each node, how many reachable consumers will send it a gradient. */
  uint64_t gen = ++visit_gen;
  for (int r = 0; r < nroots; r++) {
    mm_node *root = roots[r]->grad_fn;
    if (!root || root->visit == gen) continue;
    root->visit = gen;
    root->pending = 0;
    if (vec_push(&stack, root) < 0) goto done;
    while (stack.n) {
      mm_node *n = stack.v[--stack.n];
      if (vec_push(&order, n) < 0) goto done;
      for (int i = 0; i < n->ninputs; i++) {
        mm_node *m = n->edges[i].node;
        if (!m) continue;
        if (m->visit != gen) {
          m->visit = gen;
          m->pending = 0;
          if (vec_push(&stack, m) < 0) goto done;
        }
        m->pending++;
      }
    }
  }
  /* Refuse before touching any gradient: a released graph or a saved tensor
   * modified in place would give a silently wrong answer. */
  for (size_t k = 0; k < order.n; k++) {
    mm_node *n = order.v[k];
    if (n->released) {
      mm_set_error("backward: trying to backward through the graph a second time (%s's saved "
                   "tensors were freed by the first backward); use backward{retain_graph = true} "
                   "the first time", n->name);
      goto done;
    }
    for (int i = 0; i < n->nsaved; i++)
      if (n->saved[i] && n->saved[i]->storage->version != n->saved_version[i]) {
        mm_set_error("backward: a tensor needed by %s was modified by an in-place operation "
                     "(saved at version %llu, now at version %llu); use an out-of-place op or "
                     "clone() it first", n->name, (unsigned long long)n->saved_version[i],
                     (unsigned long long)n->saved[i]->storage->version);
        goto done;
      }
  }

  /* Seeds: into the roots' nodes, or straight to a root that is a leaf. */
  for (int r = 0; r < nroots; r++) {
    mm_tensor *t = roots[r];
    if (t->grad_fn) {
      if (accumulate(&t->grad_fn->grad_acc, seeds[r], false) < 0) goto done;
    } else if (deliver_leaf(t, seeds[r], 0, cap) < 0) {
      goto done;
    }
  }

  /* Pass 2: Kahn's order — a node runs once all its consumers have run. */
  stack.n = 0;
  for (int r = 0; r < nroots; r++) {
    mm_node *root = roots[r]->grad_fn;
    if (root && root->pending == 0 && root->grad_acc && root->visit == gen) {
      root->visit = gen + 1;   /* pushed once even if several roots share it */
      if (vec_push(&stack, root) < 0) goto done;
    }
  }
  visit_gen++;
  while (stack.n) {
    mm_node *n = stack.v[--stack.n];
    mm_tensor *gout = n->grad_acc;
    n->grad_acc = NULL;
    if (n->hooks && run_hooks(n->hooks, &gout) < 0) { mm_tensor_release(gout); goto done; }
    if (stats_enabled) record_stats(n, gout);
    if (cap->n) {
      int crc = 0;
      for (int i = 0; i < cap->n && crc == 0; i++)
        if (cap->inputs[i]->grad_fn == n) crc = capture_add(&cap->grads[i], gout);
      if (crc < 0) { mm_tensor_release(gout); goto done; }
    } else if (n->output && n->output->retains_grad) {
      if (accumulate(&n->output->grad, gout, false) < 0) { mm_tensor_release(gout); goto done; }
    }
    mm_tensor *gin_inline[4] = {0}, **gin = gin_inline;
    if (n->ninputs > 4 && !(gin = calloc((size_t)n->ninputs, sizeof *gin))) {
      mm_set_error("out of memory in backward");
      mm_tensor_release(gout);
      goto done;
    }
    int brc = n->backward(n, gout, gin);
    mm_tensor_release(gout);
    for (int i = 0; i < n->ninputs && brc == 0; i++) {
      mm_edge *e = &n->edges[i];
      if (!e->needs_grad || !gin[i]) continue;
      mm_tensor *fit = fit_to_edge(gin[i], e);
      if (!fit) { brc = -1; break; }
      if (e->node) brc = accumulate(&e->node->grad_acc, fit, false);
      else if (e->leaf) brc = deliver_leaf(e->leaf, fit, 1 + (fit == gin[i]), cap);
      mm_tensor_release(fit);
    }
    for (int i = 0; i < n->ninputs; i++) mm_tensor_release(gin[i]);
    if (gin != gin_inline) free(gin);
    if (brc < 0) goto done;
    for (int i = 0; i < n->ninputs; i++) {
      mm_node *m = n->edges[i].node;
      if (m && n->edges[i].needs_grad && --m->pending == 0 && m->grad_acc) vec_push(&stack, m);
    }
    if (!retain_graph) {
      mm_node_release_saved(n);
      n->released = true;
    }
  }
  rc = 0;
done:
  /* Drop any gradient left in flight by an error. */
  for (size_t k = 0; k < order.n; k++)
    if (order.v[k]->grad_acc) {
      mm_tensor_release(order.v[k]->grad_acc);
      order.v[k]->grad_acc = NULL;
    }
  free(order.v);
  free(stack.v);
  grad_off = saved_off;
  in_engine = false;
  return rc;
}

/* The gradient a backward from t starts with: g (checked, in t's dtype), or
 * 1 for a one-element t.  New reference, or NULL with a message. */
static mm_tensor *make_seed(mm_tensor *t, mm_tensor *g, const char *where) {
  char b1[160], b2[160];
  if (stale_view(t) && refresh_view(t) < 0) return NULL;
  if (!t->requires_grad) {
    mm_set_error("%s: the tensor does not require grad and has no grad_fn "
                 "(did you forget requires_grad = true, or build it under no_grad?)", where);
    return NULL;
  }
  if (g) {
    if (g->ndim != t->ndim || memcmp(g->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim)) {
      mm_set_error("%s: gradient has shape %s but the tensor has shape %s", where,
                   mm_shape_str(g->ndim, g->shape, b1, sizeof b1),
                   mm_shape_str(t->ndim, t->shape, b2, sizeof b2));
      return NULL;
    }
    return mm_raw_cast(g, t->dtype);
  }
  if (mm_numel(t) != 1) {
    mm_set_error("%s: grad can be implicitly created only for one-element tensors, "
                 "got shape %s; pass a gradient: t:backward(g)", where,
                 mm_shape_str(t->ndim, t->shape, b1, sizeof b1));
    return NULL;
  }
  return mm_tensor_full(t->dtype, t->ndim, t->shape, 1.0);
}

int mm_backward(mm_tensor *t, mm_tensor *g, bool retain_graph) {
  mm_tensor *seed = make_seed(t, g, "backward");
  if (!seed) return -1;
  capture none = {0, NULL, NULL};
  int rc = engine(1, &t, &seed, retain_graph, &none);
  mm_tensor_release(seed);
  return rc;
}

int mm_grad(int nout, mm_tensor *const *outputs, mm_tensor *const *grad_outputs, int nin,
            mm_tensor *const *inputs, bool retain_graph, bool allow_unused, mm_tensor **result) {
  for (int i = 0; i < nin; i++) result[i] = NULL;
  if (nout < 1 || nin < 1) {
    mm_set_error("grad: expected at least one output and one input, got %d and %d", nout, nin);
    return -1;
  }
  for (int i = 0; i < nin; i++) {
    if (stale_view(inputs[i]) && refresh_view(inputs[i]) < 0) return -1;
    if (!inputs[i]->requires_grad) {
      mm_set_error("grad: input %d does not require grad", i + 1);
      return -1;
    }
  }
  mm_tensor **seeds = calloc((size_t)nout, sizeof *seeds);
  if (!seeds) {
    mm_set_error("grad: out of memory");
    return -1;
  }
  int rc = 0;
  for (int k = 0; k < nout && rc == 0; k++) {
    char where[48];
    snprintf(where, sizeof where, "grad (output %d)", k + 1);
    if (!(seeds[k] = make_seed(outputs[k], grad_outputs ? grad_outputs[k] : NULL, where))) rc = -1;
  }
  capture cap = {nin, inputs, result};
  if (rc == 0) rc = engine(nout, outputs, seeds, retain_graph, &cap);
  for (int k = 0; k < nout; k++) mm_tensor_release(seeds[k]);
  free(seeds);
  for (int i = 0; rc == 0 && !allow_unused && i < nin; i++)
    if (!result[i]) {
      mm_set_error("grad: input %d was not used to compute the outputs (pass allow_unused = "
                   "true to get nil for it)", i + 1);
      rc = -1;
    }
  if (rc < 0)
    for (int i = 0; i < nin; i++) {
      mm_tensor_release(result[i]);
      result[i] = NULL;
    }
  return rc;
}

/* ---- requires_grad, retain_grad, .grad: the policy lives here, not in the
 * bindings, so a C caller gets the same checks. */

int mm_set_requires_grad(mm_tensor *t, bool on, const char *where) {
  if (on && !mm_dtype_is_float(t->dtype)) {
    mm_set_error("%s: only float32/float64 tensors can require gradients, got %s", where,
                 mm_dtype_name(t->dtype));
    return -1;
  }
  if (t->grad_fn) {
    if (on) return 0;   /* a non-leaf already requires grad */
    mm_set_error("%s: only leaf tensors can stop requiring grad (use :detach())", where);
    return -1;
  }
  t->requires_grad = on;
  return 0;
}

int mm_retain_grad(mm_tensor *t) {
  if (!t->requires_grad) {
    mm_set_error("retain_grad: the tensor does not require grad");
    return -1;
  }
  if (t->grad_fn) t->retains_grad = true;
  return 0;
}

int mm_set_grad(mm_tensor *t, mm_tensor *g) {
  char b1[160], b2[160];
  if (g && (g->ndim != t->ndim || memcmp(g->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim))) {
    mm_set_error("grad: assigned gradient has shape %s but the tensor has shape %s",
                 mm_shape_str(g->ndim, g->shape, b1, sizeof b1),
                 mm_shape_str(t->ndim, t->shape, b2, sizeof b2));
    return -1;
  }
  if (g && !mm_dtype_is_float(g->dtype)) {
    mm_set_error("grad: expected a float32/float64 gradient, got %s", mm_dtype_name(g->dtype));
    return -1;
  }
  if (g) mm_tensor_retain(g);
  mm_tensor_release(t->grad);
  t->grad = g;
  return 0;
}

const char *mm_grad_fn_name(const mm_tensor *t) { return t->grad_fn ? t->grad_fn->name : NULL; }

void mm_detach_(mm_tensor *t) {
  if (t->grad_fn) mm_autograd_detach_output(t);
  t->requires_grad = false;
  t->retains_grad = false;
}
