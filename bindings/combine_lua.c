/* combine_lua.c — Lua bindings for combine.h: cat, stack, split, chunk,
 * pad, index_select, gather, scatter_add, embedding,
 * one_hot.
 *
 * Lua conventions applied here: dims are 1-based (negative from the end),
 * index tensors hold 1-based positions (base 1 in the C calls), lists of
 * tensors are plain Lua sequences, and split/chunk return a sequence of
 * views. */
#include <stdlib.h>

#include "lua_helpers.h"

/* A Lua dim for an op whose tensor count or rank the C side resolves
 * (cat/stack): 1-based to 0-based, negatives passed through; the runtime
 * checks the range and names it in its error. */
static int raw_dim(lua_State *L, int idx, const char *op) {
  if (lua_isnoneornil(L, idx)) return 0;
  int64_t d = mm_lua_check_int(L, idx);
  if (d == 0 || d > MM_MAX_DIMS + 1 || d < -(MM_MAX_DIMS + 1))
    luaL_argerror(L, idx, lua_pushfstring(L, "%s: dimension out of range (dims are 1-based, "
                                          "negative from the end), got %I", op, (lua_Integer)d));
  return d > 0 ? (int)d - 1 : (int)d;
}

/* The tensors of the sequence at idx, in a buffer the collector owns (so an
 * error raised half-way leaks nothing).  The table keeps them alive. */
static mm_tensor **list_arg(lua_State *L, int idx, const char *op, int *n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer len = (lua_Integer)lua_rawlen(L, idx);
  if (len > 1 << 20) luaL_argerror(L, idx, lua_pushfstring(L, "%s: too many tensors (%I)", op, len));
  mm_tensor **ts = lua_newuserdatauv(L, (size_t)(len ? len : 1) * sizeof *ts, 0);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_rawgeti(L, idx, i);
    if (!luaL_testudata(L, -1, MM_TENSOR_MT))
      luaL_error(L, "%s: expected a tensor at position %I of the list, got %s", op, i,
                 luaL_typename(L, -1));
    if (!(ts[i - 1] = mm_lua_test(L, -1)))
      luaL_error(L, "%s: the tensor at position %I of the list has been freed", op, i);
    lua_pop(L, 1);
  }
  *n = (int)len;
  return ts;   /* the buffer stays on the stack until the binding returns */
}

/* mm.cat(list [, dim=1]) */
static int l_cat(lua_State *L) {
  int dim = raw_dim(L, 2, "cat"), n;
  lua_settop(L, 2);   /* the list buffer goes above the arguments */
  mm_tensor **ts = list_arg(L, 1, "cat", &n);
  return mm_lua_push(L, mm_cat(n, ts, dim));
}

/* mm.stack(list [, dim=1]) — dim 1..ndim+1 */
static int l_stack(lua_State *L) {
  int dim = raw_dim(L, 2, "stack"), n;
  lua_settop(L, 2);   /* the list buffer goes above the arguments */
  mm_tensor **ts = list_arg(L, 1, "stack", &n);
  return mm_lua_push(L, mm_stack(n, ts, dim));
}

/* Pushes the pieces as a sequence, taking over their references. */
static int push_pieces(lua_State *L, mm_tensor **pieces, int64_t n) {
  if (!pieces) return mm_lua_error(L);
  lua_createtable(L, n < 1 << 20 ? (int)n : 0, 0);
  for (int64_t i = 0; i < n; i++) {
    mm_lua_push(L, pieces[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  free(pieces);
  return 1;
}

/* Dim for split/chunk: the tensor must have one. */
static int piece_dim(lua_State *L, mm_tensor *t, int idx, const char *op) {
  if (t->ndim == 0)
    luaL_error(L, "%s: expected a tensor with at least 1 dimension, got a 0-dimensional tensor", op);
  return mm_lua_opt_dim(L, idx, t->ndim, 0);
}

/* t:split(size [, dim=1]) or t:split({s1, s2, ...} [, dim=1]) -> {views} */
static int m_split(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int dim = piece_dim(L, t, 3, "split");
  int64_t n = 0;
  if (lua_istable(L, 2)) {
    lua_Integer k = (lua_Integer)lua_rawlen(L, 2);
    if (k > 1 << 24) luaL_argerror(L, 2, "too many sizes");
    int64_t *sizes = lua_newuserdatauv(L, (size_t)(k ? k : 1) * sizeof *sizes, 0);
    for (lua_Integer i = 1; i <= k; i++) {
      lua_rawgeti(L, 2, i);
      int ok;
      sizes[i - 1] = (int64_t)lua_tointegerx(L, -1, &ok);
      if (!ok)
        luaL_argerror(L, 2, lua_pushfstring(L, "split: size %I must be an integer, got %s", i,
                                            luaL_typename(L, -1)));
      lua_pop(L, 1);
    }
    return push_pieces(L, mm_split_sizes(t, k, sizes, dim), k);
  }
  if (lua_type(L, 2) != LUA_TNUMBER) luaL_typeerror(L, 2, "integer or table of sizes");
  mm_tensor **pieces = mm_split(t, mm_lua_check_int(L, 2), dim, &n);
  return push_pieces(L, pieces, n);
}

/* t:chunk(n [, dim=1]) -> {views} */
static int m_chunk(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int64_t chunks = mm_lua_check_int(L, 2);
  int dim = piece_dim(L, t, 3, "chunk");
  int64_t n = 0;
  mm_tensor **pieces = mm_chunk(t, chunks, dim, &n);
  return push_pieces(L, pieces, n);
}

/* mm.pad(x, {left, right [, top, bottom, ...]} [, value=0]) */
static int l_pad(lua_State *L) {
  mm_tensor *x = mm_lua_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer k = (lua_Integer)lua_rawlen(L, 2);
  if (k > 2 * MM_MAX_DIMS)
    luaL_argerror(L, 2, lua_pushfstring(L, "pad: expected at most %d padding amounts, got %I",
                                        2 * MM_MAX_DIMS, k));
  int64_t pads[2 * MM_MAX_DIMS];
  for (lua_Integer i = 1; i <= k; i++) {
    lua_rawgeti(L, 2, i);
    int ok;
    pads[i - 1] = (int64_t)lua_tointegerx(L, -1, &ok);
    if (!ok)
      luaL_argerror(L, 2, lua_pushfstring(L, "pad: amount %I must be an integer, got %s", i,
                                          luaL_typename(L, -1)));
    lua_pop(L, 1);
  }
  double value = luaL_optnumber(L, 3, 0.0);
  return mm_lua_push(L, mm_pad(x, (int)k, pads, value));
}

/* Index ops take (t, dim, idx ...): dims are checked here against t. */
static int index_dim(lua_State *L, mm_tensor *t, const char *op) {
  if (t->ndim == 0)
    luaL_error(L, "%s: expected a tensor with at least 1 dimension, got a 0-dimensional tensor", op);
  return mm_lua_check_dim(L, 2, t->ndim);
}

/* t:index_select(dim, idx) — idx 1-D int64 of 1-based positions */
static int m_index_select(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int dim = index_dim(L, t, "index_select");
  return mm_lua_push(L, mm_index_select(t, dim, mm_lua_check(L, 3), 1));
}

/* Background gathers for DataLoader (see mm_index_select_start):
 *   h = mm._index_select_start({t1, t2, ...}, idx)   -- idx 1-based
 *   t1, t2, ... = mm._index_select_finish(h)          -- once; h is spent after
 * The handle is a userdata whose __gc abandons a gather never finished. */
#define BG_GATHER_MT "microml.BackgroundGather"

typedef struct { mm_bg_gather *g; } bg_box;

static int bg_gc(lua_State *L) {
  bg_box *b = luaL_checkudata(L, 1, BG_GATHER_MT);
  mm_bg_gather_free(b->g);
  b->g = NULL;
  return 0;
}

static int l_index_select_start(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  mm_tensor *idx = mm_lua_check(L, 2);
  int n = (int)lua_rawlen(L, 1);
  if (n < 1 || n > MM_BG_GATHER_MAX)
    return luaL_error(L, "index_select_start: expected a list of 1 to %d tensors, got %d entries",
                      MM_BG_GATHER_MAX, n);
  mm_tensor *xs[MM_BG_GATHER_MAX];
  for (int k = 0; k < n; k++) {
    lua_rawgeti(L, 1, k + 1);
    xs[k] = mm_lua_test(L, -1);
    if (!xs[k])
      return luaL_error(L, "index_select_start: expected a Tensor as entry %d, got %s", k + 1,
                        luaL_typename(L, -1));
    lua_pop(L, 1);   /* the list keeps it alive */
  }
  bg_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->g = NULL;
  luaL_setmetatable(L, BG_GATHER_MT);
  b->g = mm_index_select_start(n, xs, idx, 1);
  if (!b->g) return mm_lua_error(L);
  return 1;
}

static int l_index_select_finish(lua_State *L) {
  bg_box *b = luaL_checkudata(L, 1, BG_GATHER_MT);
  if (!b->g) return luaL_error(L, "index_select_finish: this gather was already collected");
  mm_bg_gather *g = b->g;
  b->g = NULL;
  mm_tensor *out[MM_BG_GATHER_MAX];
  int n = mm_bg_gather_count(g);
  mm_index_select_finish(g, out);
  for (int k = 0; k < n; k++) mm_lua_push(L, out[k]);
  return n;
}

/* t:gather(dim, idx) — idx int64 with t's ndim */
static int m_gather(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int dim = index_dim(L, t, "gather");
  return mm_lua_push(L, mm_gather(t, dim, mm_lua_check(L, 3), 1));
}

/* t:scatter_add(dim, idx, src) — out of place */
static int m_scatter_add(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int dim = index_dim(L, t, "scatter_add");
  mm_tensor *idx = mm_lua_check(L, 3), *src = mm_lua_check(L, 4);
  return mm_lua_push(L, mm_scatter_add(t, dim, idx, src, 1));
}

/* mm.embedding(weight [V, D], idx int64 of any shape) -> [..., D] */
static int l_embedding(lua_State *L) {
  mm_tensor *w = mm_lua_check(L, 1), *idx = mm_lua_check(L, 2);
  return mm_lua_push(L, mm_embedding(w, idx, 1));
}

/* mm.one_hot(idx [, num_classes]) — num_classes inferred when absent */
static int l_one_hot(lua_State *L) {
  mm_tensor *idx = mm_lua_check(L, 1);
  int64_t c = -1;
  if (!lua_isnoneornil(L, 2)) {
    c = mm_lua_check_int(L, 2);
    if (c < 0)
      luaL_argerror(L, 2, lua_pushfstring(L, "one_hot: expected num_classes >= 0, got %I",
                                          (lua_Integer)c));
  }
  return mm_lua_push(L, mm_one_hot(idx, c, 1));
}

void mm_lua_open_combine(lua_State *L, int module, int methods) {
  if (luaL_newmetatable(L, BG_GATHER_MT)) {
    lua_pushcfunction(L, bg_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  static const luaL_Reg functions[] = {
    {"cat", l_cat}, {"stack", l_stack}, {"embedding", l_embedding}, {"one_hot", l_one_hot},
    {"_index_select_start", l_index_select_start}, {"_index_select_finish", l_index_select_finish},
    {NULL, NULL}};
  static const luaL_Reg shared[] = {
    {"split", m_split}, {"chunk", m_chunk}, {"pad", l_pad},
    {"index_select", m_index_select}, {"gather", m_gather},
    {"scatter_add", m_scatter_add}, {NULL, NULL}};
  mm_lua_register(L, module, methods, functions, true, false);
  mm_lua_register(L, module, methods, shared, true, true);
}
