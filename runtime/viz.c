/* viz.c — owns the autograd graph's export to Graphviz DOT (mm_graph_dot)
 * and the norm statistics that both the export and the Lua gradient report
 * use (mm_tensor_norm_stats).
 *
 * The export runs in four steps, none of them recursive:
 *   1. walk: breadth-first from the root's node, giving every op node and
 *      every leaf an index in discovery order.  Indices, not addresses or
 *      creation ids, name the DOT nodes, so two identical graphs print the
 *      same bytes whatever the allocator or earlier runs did.  Addresses are
 *      only used as hash keys to find an already-seen node.
 *   2. collapse: assign items to the requested module prefixes (rules in
 *      viz.h), using a topological order and two reachability sweeps.
 *   3. cap: count what would be drawn and refuse beyond max_nodes.
 *   4. emit: nodes, modules, edges and the legend, into a growing buffer. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"

/* ---- norm statistics ------------------------------------------------------ */

static double value_at(const mm_tensor *t, const void *base, int64_t i) {
  if (!base) return mm_get_flat(t, i);
  switch (t->dtype) {
  case MM_FLOAT32: return ((const float *)base)[i];
  case MM_FLOAT64: return ((const double *)base)[i];
  default: return (double)((const int64_t *)base)[i];
  }
}

/* Two passes (max, then the sum of squares scaled by it) so that large but
 * finite gradients, the ones a report most needs to show, cannot overflow. */
void mm_tensor_norm_stats(const mm_tensor *t, mm_norm_stats *out) {
  memset(out, 0, sizeof *out);
  int64_t n = mm_numel(t);
  if (n == 0) return;
  const void *base = mm_is_contiguous(t) ? mm_data_ptr(t) : NULL;
  double mx = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = value_at(t, base, i);
    if (isnan(v)) out->nan_count++;
    else if (isinf(v)) out->inf_count++;
    else if (fabs(v) > mx) mx = fabs(v);
  }
  out->maxabs = mx;
  if (mx == 0) return;
  double ss = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = value_at(t, base, i);
    if (isfinite(v)) ss += (v / mx) * (v / mx);
  }
  out->norm = mx * sqrt(ss);
}

/* ---- a growing text buffer -------------------------------------------------- */

typedef struct { char *s; size_t n, cap; bool oom; } sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  while (!b->oom) {
    size_t room = b->cap - b->n;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->s ? b->s + b->n : NULL, room, fmt, ap);
    va_end(ap);
    if (k < 0) { b->oom = true; return; }
    if ((size_t)k < room) { b->n += (size_t)k; return; }
    size_t cap = b->cap ? b->cap : 8192;
    while (cap - b->n <= (size_t)k) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) { b->oom = true; return; }
    b->s = s;
    b->cap = cap;
  }
}

/* A user-supplied string inside a double-quoted DOT string: quotes and
 * backslashes escaped, control characters (which would break the line or
 * the label) shown as spaces. */
static void sb_escaped(sbuf *b, const char *str) {
  for (const unsigned char *p = (const unsigned char *)str; *p; p++) {
    if (*p == '"' || *p == '\\') sb_printf(b, "\\%c", *p);
    else if (*p < 0x20 || *p == 0x7f) sb_printf(b, " ");
    else sb_printf(b, "%c", *p);
  }
}

static void sb_shape(sbuf *b, int ndim, const int64_t *shape, mm_dtype dt) {
  sb_printf(b, "[");
  for (int d = 0; d < ndim; d++) sb_printf(b, d ? ", %lld" : "%lld", (long long)shape[d]);
  sb_printf(b, "] %s", mm_dtype_name(dt));
}

/* ---- an address -> index map (open addressing; key 0 means empty) ---------- */

typedef struct { uint64_t *keys; int64_t *vals; size_t cap, n; } keymap;

static size_t slot_of(uint64_t k, size_t cap) {
  k ^= k >> 33;                          /* mix the low, aligned bits of addresses */
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return (size_t)k & (cap - 1);
}

static int64_t km_get(const keymap *m, uint64_t key) {
  if (!m->cap) return -1;
  for (size_t s = slot_of(key, m->cap);; s = (s + 1) & (m->cap - 1)) {
    if (m->keys[s] == key) return m->vals[s];
    if (!m->keys[s]) return -1;
  }
}

static int km_put(keymap *m, uint64_t key, int64_t val) {
  if (2 * (m->n + 1) > m->cap) {
    size_t cap = m->cap ? 2 * m->cap : 256;
    uint64_t *keys = calloc(cap, sizeof *keys);
    int64_t *vals = malloc(cap * sizeof *vals);
    if (!keys || !vals) { free(keys); free(vals); return -1; }
    for (size_t i = 0; i < m->cap; i++) {
      if (!m->keys[i]) continue;
      size_t s = slot_of(m->keys[i], cap);
      while (keys[s]) s = (s + 1) & (cap - 1);
      keys[s] = m->keys[i];
      vals[s] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
  }
  size_t s = slot_of(key, m->cap);
  while (m->keys[s] && m->keys[s] != key) s = (s + 1) & (m->cap - 1);
  if (!m->keys[s]) m->n++;
  m->keys[s] = key;
  m->vals[s] = val;
  return 0;
}

static void km_free(keymap *m) { free(m->keys); free(m->vals); }

/* ---- the graph as drawn ------------------------------------------------------ */

typedef struct {
  mm_node *node;      /* an op, or NULL for a leaf */
  mm_tensor *leaf;
  int name;           /* index into names[], or -1 */
  int group;          /* index into collapse[], or -1 */
} vitem;

typedef struct {
  vitem *items;
  int64_t n, cap;
  int64_t *src, *dst;     /* data-flow edges: input item -> consumer item */
  int64_t ne, ecap;
  keymap index;           /* node or leaf address -> item */
  /* compressed adjacency, built after the walk */
  int64_t *out_start, *out_list, *in_start, *in_list;
} vgraph;

static void vgraph_free(vgraph *g) {
  free(g->items);
  free(g->src);
  free(g->dst);
  km_free(&g->index);
  free(g->out_start);
  free(g->out_list);
  free(g->in_start);
  free(g->in_list);
}

static int64_t item_for(vgraph *g, mm_node *node, mm_tensor *leaf) {
  uint64_t key = node ? (uint64_t)(uintptr_t)node : (uint64_t)(uintptr_t)leaf;
  int64_t k = km_get(&g->index, key);
  if (k >= 0) return k;
  if (g->n == g->cap) {
    int64_t cap = g->cap ? 2 * g->cap : 256;
    vitem *v = realloc(g->items, (size_t)cap * sizeof *v);
    if (!v) return -1;
    g->items = v;
    g->cap = cap;
  }
  if (km_put(&g->index, key, g->n) < 0) return -1;
  g->items[g->n] = (vitem){node, leaf, -1, -1};
  return g->n++;
}

static int add_edge(vgraph *g, int64_t from, int64_t to) {
  if (g->ne == g->ecap) {
    int64_t cap = g->ecap ? 2 * g->ecap : 256;
    int64_t *s = realloc(g->src, (size_t)cap * sizeof *s);
    if (!s) return -1;
    g->src = s;
    int64_t *d = realloc(g->dst, (size_t)cap * sizeof *d);
    if (!d) return -1;
    g->dst = d;
    g->ecap = cap;
  }
  g->src[g->ne] = from;
  g->dst[g->ne] = to;
  g->ne++;
  return 0;
}

/* The items array doubles as the BFS queue: item i's inputs are appended as
 * they are discovered, in edge order. */
static int walk(vgraph *g, mm_tensor *root) {
  if (item_for(g, root->grad_fn, root->grad_fn ? NULL : root) < 0) return -1;
  for (int64_t i = 0; i < g->n; i++) {
    mm_node *n = g->items[i].node;
    if (!n) continue;
    for (int k = 0; k < n->ninputs; k++) {
      mm_edge *e = &n->edges[k];
      if (!e->node && !e->leaf) continue;   /* a constant input: not part of the graph */
      int64_t j = item_for(g, e->node, e->node ? NULL : e->leaf);
      if (j < 0 || add_edge(g, j, i) < 0) return -1;
    }
  }
  return 0;
}

static int build_adjacency(vgraph *g) {
  size_t sz = (size_t)(g->n + 1) * sizeof(int64_t), esz = (size_t)(g->ne ? g->ne : 1) * sizeof(int64_t);
  g->out_start = calloc(1, sz);
  g->in_start = calloc(1, sz);
  g->out_list = malloc(esz);
  g->in_list = malloc(esz);
  int64_t *fill = calloc(1, sz);
  if (!g->out_start || !g->in_start || !g->out_list || !g->in_list || !fill) { free(fill); return -1; }
  for (int64_t e = 0; e < g->ne; e++) {
    g->out_start[g->src[e] + 1]++;
    g->in_start[g->dst[e] + 1]++;
  }
  for (int64_t i = 0; i < g->n; i++) {
    g->out_start[i + 1] += g->out_start[i];
    g->in_start[i + 1] += g->in_start[i];
  }
  /* Lists keep edge order, so everything derived from them is deterministic. */
  for (int64_t e = 0; e < g->ne; e++) g->out_list[g->out_start[g->src[e]] + fill[g->src[e]]++] = g->dst[e];
  memset(fill, 0, sz);
  for (int64_t e = 0; e < g->ne; e++) g->in_list[g->in_start[g->dst[e]] + fill[g->dst[e]]++] = g->src[e];
  free(fill);
  return 0;
}

/* "MulBackward" -> "Mul" (also drops a PyTorch-style "Backward0"). */
static void op_label(const char *name, char *buf, size_t n) {
  snprintf(buf, n, "%s", name ? name : "?");
  char *p = strstr(buf, "Backward");
  if (p && p != buf) {
    const char *q = p + 8;
    while (*q >= '0' && *q <= '9') q++;
    if (!*q) *p = '\0';
  }
}

/* Ops that only re-present a tensor: applied to a parameter alone, their
 * result still "is" that parameter (w:t() inside a linear layer). */
static bool is_view_op(const char *name) {
  static const char *const views[] = {"View", "Reshape", "Permute", "Transpose", "T", "Narrow",
                                      "Select", "Expand", "Squeeze", "Unsqueeze", "ToCopy",
                                      "Clone", "Contiguous"};
  char base[64];
  op_label(name, base, sizeof base);
  for (size_t i = 0; i < sizeof views / sizeof *views; i++)
    if (!strcmp(base, views[i])) return true;
  return false;
}

static bool prefix_matches(const char *name, const char *p) {
  size_t k = strlen(p);
  if (k == 0 || strncmp(name, p, k)) return false;
  return p[k - 1] == '.' || name[k] == '\0' || name[k] == '.';
}

/* Marks everything reachable from the marked items along the lists. */
static void sweep(const vgraph *g, const int64_t *start, const int64_t *list, unsigned char *mark,
                  int64_t *queue) {
  int64_t head = 0, tail = 0;
  for (int64_t i = 0; i < g->n; i++)
    if (mark[i]) queue[tail++] = i;
  while (head < tail) {
    int64_t i = queue[head++];
    for (int64_t k = start[i]; k < start[i + 1]; k++)
      if (!mark[list[k]]) {
        mark[list[k]] = 1;
        queue[tail++] = list[k];
      }
  }
}

static int assign_groups(vgraph *g, const char *const *names, const char *const *prefixes, int np) {
  /* Parameters first: the longest matching prefix names the module. */
  for (int64_t i = 0; i < g->n; i++) {
    vitem *it = &g->items[i];
    if (it->node || it->name < 0) continue;
    size_t best = 0;
    for (int p = 0; p < np; p++)
      if (prefix_matches(names[it->name], prefixes[p]) && strlen(prefixes[p]) > best) {
        best = strlen(prefixes[p]);
        it->group = p;
      }
  }
  size_t n = (size_t)g->n;
  int64_t *order = malloc(n * sizeof *order), *queue = malloc(n * sizeof *queue);
  int64_t *indeg = malloc(n * sizeof *indeg);
  unsigned char *pure = malloc(n), *fwd = malloc(n), *bwd = malloc(n);
  int rc = -1;
  if (!order || !queue || !indeg || !pure || !fwd || !bwd) goto out;

  /* Kahn's order, inputs before consumers, ties broken by index. */
  int64_t head = 0, tail = 0;
  for (int64_t i = 0; i < g->n; i++) {
    indeg[i] = g->in_start[i + 1] - g->in_start[i];
    if (!indeg[i]) order[tail++] = i;
  }
  while (head < tail) {
    int64_t i = order[head++];
    for (int64_t k = g->out_start[i]; k < g->out_start[i + 1]; k++)
      if (--indeg[g->out_list[k]] == 0) order[tail++] = g->out_list[k];
  }

  for (int p = 0; p < np; p++) {
    /* pure: the module's parameter, or a view of pure values only.
     * seed (fwd = bwd = 1): a parameter of the module, or a free op fed by
     * a pure value. */
    memset(fwd, 0, n);
    for (int64_t k = 0; k < tail; k++) {
      int64_t i = order[k];
      vitem *it = &g->items[i];
      if (!it->node) {
        pure[i] = fwd[i] = it->group == p;
        continue;
      }
      bool any = false, all = true, free_or_mine = it->group < 0 || it->group == p;
      for (int64_t e = g->in_start[i]; e < g->in_start[i + 1]; e++) {
        if (pure[g->in_list[e]]) any = true;
        else all = false;
      }
      pure[i] = free_or_mine && all && g->in_start[i + 1] > g->in_start[i] && is_view_op(it->node->name);
      fwd[i] = free_or_mine && any;
    }
    memcpy(bwd, fwd, n);
    /* Everything both downstream and upstream of the seeds lies between two
     * of them: the module's inner activations. */
    sweep(g, g->out_start, g->out_list, fwd, queue);
    sweep(g, g->in_start, g->in_list, bwd, queue);
    for (int64_t i = 0; i < g->n; i++)
      if (fwd[i] && bwd[i] && g->items[i].group < 0) g->items[i].group = p;
  }
  rc = 0;
out:
  free(order);
  free(queue);
  free(indeg);
  free(pure);
  free(fwd);
  free(bwd);
  return rc;
}

/* ---- colours ------------------------------------------------------------------- */

/* Gradient norms bucketed by powers of ten (a ColorBrewer RdYlBu ramp, cold
 * for vanishing, warm for large); red is kept for NaN/inf alone. */
static const struct { double below; const char *fill, *font, *text; } scale[] = {
  {1e-6, "#4575b4", "white", "&lt; 1e-6 (vanishing)"},
  {1e-4, "#91bfdb", "black", "1e-6 .. 1e-4"},
  {1e-2, "#e0f3f8", "black", "1e-4 .. 1e-2"},
  {1e0, "#ffffbf", "black", "1e-2 .. 1"},
  {1e2, "#fee090", "black", "1 .. 1e2"},
  {INFINITY, "#fc8d59", "black", "&gt;= 1e2 (large)"},
};
#define NSCALE ((int)(sizeof scale / sizeof *scale))
#define ZERO_FILL "#bdbdbd"
#define BAD_FILL "red"

typedef struct { bool has; double norm, maxabs; bool bad; } gstats;

static void sb_fill(sbuf *b, const gstats *s) {
  if (!s->has) return;
  if (s->bad) { sb_printf(b, ", fillcolor=\"" BAD_FILL "\", fontcolor=\"white\""); return; }
  if (s->norm == 0) { sb_printf(b, ", fillcolor=\"" ZERO_FILL "\""); return; }
  int k = 0;
  while (k < NSCALE - 1 && !(s->norm < scale[k].below)) k++;
  sb_printf(b, ", fillcolor=\"%s\", fontcolor=\"%s\"", scale[k].fill, scale[k].font);
}

static void sb_stats_line(sbuf *b, const char *what, const gstats *s) {
  if (!s->has) return;
  if (s->bad) sb_printf(b, "\\n%sgrad NaN/inf", what);
  else sb_printf(b, "\\n%s|g| %.3g, max|g| %.3g", what, s->norm, s->maxabs);
}

static gstats leaf_stats(const mm_tensor *leaf) {
  gstats s = {0};
  if (!leaf->grad) return s;
  mm_norm_stats ns;
  mm_tensor_norm_stats(leaf->grad, &ns);
  s.has = true;
  s.norm = ns.norm;
  s.maxabs = ns.maxabs;
  s.bad = ns.nan_count || ns.inf_count;
  return s;
}

static gstats node_stats(const mm_node *n) {
  gstats s = {n->has_stats, n->grad_norm, n->grad_maxabs, n->grad_nonfinite};
  return s;
}

static void emit_legend(sbuf *b) {
  sb_printf(b, "  subgraph cluster_legend {\n"
               "    label=\"legend\"; fontsize=10; style=dashed; color=\"gray50\";\n"
               "    legend [shape=plaintext, style=\"\", label=<<TABLE BORDER=\"0\" CELLBORDER=\"1\" "
               "CELLSPACING=\"0\" CELLPADDING=\"3\">\n"
               "      <TR><TD COLSPAN=\"2\"><B>gradient L2 norm |g|</B></TD></TR>\n"
               "      <TR><TD BGCOLOR=\"white\" WIDTH=\"18\"> </TD><TD ALIGN=\"LEFT\">no statistics</TD></TR>\n"
               "      <TR><TD BGCOLOR=\"" ZERO_FILL "\"> </TD><TD ALIGN=\"LEFT\">0 (no gradient)</TD></TR>\n");
  for (int k = 0; k < NSCALE; k++)
    sb_printf(b, "      <TR><TD BGCOLOR=\"%s\"> </TD><TD ALIGN=\"LEFT\">%s</TD></TR>\n", scale[k].fill,
              scale[k].text);
  sb_printf(b, "      <TR><TD BGCOLOR=\"" BAD_FILL "\"> </TD><TD ALIGN=\"LEFT\">NaN or inf</TD></TR>\n"
               "      <TR><TD COLSPAN=\"2\" ALIGN=\"LEFT\">ellipse: op   box: tensor<BR ALIGN=\"LEFT\"/>"
               "box3d: collapsed module   double border: output<BR ALIGN=\"LEFT\"/></TD></TR>\n"
               "    </TABLE>>];\n"
               "  }\n");
}

/* ---- export ------------------------------------------------------------------------ */

typedef struct {
  int64_t ops, params, outputs, out_item;
  bool root, has_grad, bad;
  double ss;          /* sum of squared parameter-gradient norms */
} group_info;

char *mm_graph_dot(mm_tensor *root, const mm_tensor *const *named, const char *const *names,
                   int nnamed, const mm_dot_options *opts) {
  static const mm_dot_options defaults = {0};
  if (!opts) opts = &defaults;
  if (!root) { mm_set_error("graph_dot: expected a tensor, got NULL"); return NULL; }
  if (!root->requires_grad) {
    mm_set_error("graph_dot: expected a tensor that is part of an autograd graph (requires_grad, "
                 "or computed from tensors that require grad), got one that does not require grad");
    return NULL;
  }
  int np = opts->collapse ? opts->ncollapse : 0;
  for (int p = 0; p < np; p++)
    if (!opts->collapse[p] || !opts->collapse[p][0]) {
      mm_set_error("graph_dot: collapse prefix %d is empty; expected a parameter-name prefix such as \"fc1\"", p + 1);
      return NULL;
    }
  int64_t max_nodes = opts->max_nodes > 0 ? opts->max_nodes : MM_DOT_DEFAULT_MAX_NODES;

  vgraph g = {0};
  keymap byname = {0};
  group_info *gi = NULL;
  keymap seen = {0};
  sbuf b = {0};
  char *result = NULL;

  if (walk(&g, root) < 0 || build_adjacency(&g) < 0) goto oom;
  for (int i = 0; i < nnamed; i++)   /* first name given wins */
    if (named[i] && names[i] && km_get(&byname, (uint64_t)(uintptr_t)named[i]) < 0 &&
        km_put(&byname, (uint64_t)(uintptr_t)named[i], i) < 0)
      goto oom;
  for (int64_t i = 0; i < g.n; i++)
    if (g.items[i].leaf) g.items[i].name = (int)km_get(&byname, (uint64_t)(uintptr_t)g.items[i].leaf);
  if (np && assign_groups(&g, names, opts->collapse, np) < 0) goto oom;

  gi = calloc((size_t)np + 1, sizeof *gi);
  if (!gi) goto oom;
  int64_t drawn = 0;
  for (int64_t i = 0; i < g.n; i++) {
    vitem *it = &g.items[i];
    if (it->group < 0) { drawn++; continue; }
    group_info *G = &gi[it->group];
    if (!G->ops && !G->params) drawn++;
    if (it->node) G->ops++;
    else G->params++;
  }
  if (drawn > max_nodes) {
    mm_set_error("graph_dot: the graph has %lld nodes to draw, more than max_nodes = %lld; raise "
                 "max_nodes or collapse modules into single nodes (collapse = {prefixes})",
                 (long long)drawn, (long long)max_nodes);
    goto done;
  }

  /* Module summaries: outputs are members read by a non-member (or the root). */
  for (int64_t i = 0; i < g.n; i++) {
    vitem *it = &g.items[i];
    if (it->group < 0) continue;
    group_info *G = &gi[it->group];
    bool exported = i == 0;
    for (int64_t k = g.out_start[i]; k < g.out_start[i + 1]; k++)
      if (g.items[g.out_list[k]].group != it->group) exported = true;
    if (exported) { G->outputs++; G->out_item = i; }
    if (i == 0) G->root = true;
    gstats s = it->node ? node_stats(it->node) : leaf_stats(it->leaf);
    if (s.bad) G->bad = true;
    if (!it->node && s.has) { G->has_grad = true; G->ss += s.norm * s.norm; }
  }

  sb_printf(&b, "digraph microml {\n"
                "  graph [rankdir=TB, nodesep=0.25, ranksep=0.35");
  if (opts->title) {
    sb_printf(&b, ", labelloc=t, label=\"");
    sb_escaped(&b, opts->title);
    sb_printf(&b, "\"");
  }
  sb_printf(&b, "];\n"
                "  node [style=filled, fillcolor=\"white\", fontsize=10, height=0.3];\n"
                "  edge [arrowsize=0.6, color=\"gray30\"];\n");

  /* Reverse discovery order puts inputs roughly before their consumers. */
  for (int64_t i = g.n - 1; i >= 0; i--) {
    vitem *it = &g.items[i];
    if (it->group >= 0) continue;
    gstats s;
    sb_printf(&b, "  n%lld [label=\"", (long long)i);
    if (it->node) {
      char base[64];
      op_label(it->node->name, base, sizeof base);
      sb_escaped(&b, base);
      sb_printf(&b, "\\n");
      sb_shape(&b, it->node->out_ndim, it->node->out_shape, it->node->out_dtype);
      s = node_stats(it->node);
      sb_stats_line(&b, "", &s);
      sb_printf(&b, "\", shape=ellipse");
    } else {
      sb_escaped(&b, it->name >= 0 ? names[it->name] : "tensor");
      sb_printf(&b, "\\n");
      sb_shape(&b, it->leaf->ndim, it->leaf->shape, it->leaf->dtype);
      s = leaf_stats(it->leaf);
      sb_stats_line(&b, "", &s);
      sb_printf(&b, "\", shape=box");
    }
    sb_fill(&b, &s);
    if (i == 0) sb_printf(&b, ", peripheries=2");
    sb_printf(&b, "];\n");
  }
  for (int p = 0; p < np; p++) {
    group_info *G = &gi[p];
    if (!G->ops && !G->params) continue;
    sb_printf(&b, "  m%d [label=\"", p);
    sb_escaped(&b, opts->collapse[p]);
    sb_printf(&b, "\\n%lld op%s, %lld param%s", (long long)G->ops, G->ops == 1 ? "" : "s",
              (long long)G->params, G->params == 1 ? "" : "s");
    if (G->outputs == 1) {
      vitem *o = &g.items[G->out_item];
      sb_printf(&b, "\\nout ");
      if (o->node) sb_shape(&b, o->node->out_ndim, o->node->out_shape, o->node->out_dtype);
      else sb_shape(&b, o->leaf->ndim, o->leaf->shape, o->leaf->dtype);
    } else if (G->outputs > 1) {
      sb_printf(&b, "\\n%lld outputs", (long long)G->outputs);
    }
    /* Colour by the module's parameter gradients: that is what an optimizer
     * sees; any non-finite gradient inside turns it red. */
    gstats s = {G->has_grad || G->bad, sqrt(G->ss), 0, G->bad};
    if (s.bad) sb_printf(&b, "\\ngrad NaN/inf inside");
    else if (s.has) sb_printf(&b, "\\nparams |g| %.3g", s.norm);
    sb_printf(&b, "\", shape=box3d");
    sb_fill(&b, &s);
    if (G->root) sb_printf(&b, ", peripheries=2");
    sb_printf(&b, "];\n");
  }

  /* Edges: a parameter used twice by one op shows twice; edges touching a
   * module are merged, or its inner wiring would show as a fan of arrows. */
  int64_t ids = g.n + np;
  for (int64_t e = 0; e < g.ne; e++) {
    int gs = g.items[g.src[e]].group, gd = g.items[g.dst[e]].group;
    int64_t s = gs >= 0 ? g.n + gs : g.src[e], d = gd >= 0 ? g.n + gd : g.dst[e];
    if (s == d) continue;
    if (gs >= 0 || gd >= 0) {
      uint64_t key = (uint64_t)s * (uint64_t)ids + (uint64_t)d + 1;
      if (km_get(&seen, key) >= 0) continue;
      if (km_put(&seen, key, 1) < 0) goto oom;
    }
    sb_printf(&b, "  %c%lld -> %c%lld;\n", gs >= 0 ? 'm' : 'n', (long long)(gs >= 0 ? gs : s),
              gd >= 0 ? 'm' : 'n', (long long)(gd >= 0 ? gd : d));
  }
  if (!opts->hide_legend) emit_legend(&b);
  sb_printf(&b, "}\n");
  if (b.oom) goto oom;
  result = b.s;
  b.s = NULL;
  goto done;

oom:
  mm_set_error("graph_dot: out of memory exporting a graph of %lld nodes", (long long)g.n);
done:
  free(b.s);
  free(gi);
  km_free(&seen);
  km_free(&byname);
  vgraph_free(&g);
  return result;
}
