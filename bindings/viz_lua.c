/* viz_lua.c — the C half of microml.viz: graph export and norm statistics.
 * Both are internal (underscore) functions; lua/microml/viz.lua is the
 * public face and normalises what users pass before calling them.
 *
 *   mm._graph_dot(root, params, opts) -> DOT string
 *       params: nil or a sequence of {name, tensor} pairs
 *       opts:   nil or {max_nodes = int >= 1, collapse = {prefix, ...},
 *                       legend = bool (default true), title = string}
 *   mm._norm_stats(t) -> norm, maxabs, nan_count, inf_count
 *       (norm and maxabs over the finite elements)
 *
 * Scratch arrays live in userdata so a Lua error raised while reading the
 * arguments leaks nothing; every check happens before the runtime call. */
#include <stdlib.h>

#include "lua_helpers.h"

static void *scratch(lua_State *L, size_t n, size_t size) {
  return lua_newuserdatauv(L, (n ? n : 1) * size, 0);
}

static int l_graph_dot(lua_State *L) {
  mm_tensor *root = mm_lua_check(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);

  int nnamed = lua_istable(L, 2) ? (int)luaL_len(L, 2) : 0;
  const mm_tensor **named = scratch(L, (size_t)nnamed, sizeof *named);
  const char **names = scratch(L, (size_t)nnamed, sizeof *names);
  for (int i = 0; i < nnamed; i++) {
    if (lua_rawgeti(L, 2, i + 1) != LUA_TTABLE)
      return luaL_argerror(L, 2, lua_pushfstring(L, "expected {name, tensor} pairs, got %s at position %d",
                                                 luaL_typename(L, -1), i + 1));
    int pair = lua_gettop(L);
    lua_rawgeti(L, pair, 1);
    lua_rawgeti(L, pair, 2);
    if (lua_type(L, -2) != LUA_TSTRING || !mm_lua_test(L, -1))
      return luaL_argerror(L, 2, lua_pushfstring(L, "pair %d: expected {string, Tensor}, got {%s, %s}", i + 1,
                                                 luaL_typename(L, -2), luaL_typename(L, -1)));
    /* The strings stay alive: the pair tables hold them and argument 2 holds the pairs. */
    names[i] = lua_tostring(L, -2);
    named[i] = mm_lua_check(L, -1);
    lua_settop(L, pair - 1);
  }

  mm_dot_options opts = {0};
  static const char *const known[] = {"max_nodes", "legend", "title", "collapse", NULL};
  mm_lua_check_options(L, 3, "graph_dot", known);
  if (lua_istable(L, 3)) {
    if (lua_getfield(L, 3, "max_nodes") != LUA_TNIL) {
      int ok;
      lua_Integer m = lua_tointegerx(L, -1, &ok);
      if (!ok || m < 1)
        return luaL_error(L, "graph_dot: max_nodes must be an integer >= 1, got %s",
                          luaL_tolstring(L, -1, NULL));
      opts.max_nodes = m;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 3, "legend") != LUA_TNIL) opts.hide_legend = !lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, 3, "title") != LUA_TNIL) {
      if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "graph_dot: title must be a string, got %s", luaL_typename(L, -1));
      opts.title = lua_tostring(L, -1);
    }
    lua_pop(L, 1);   /* still referenced by the options table */
    if (lua_getfield(L, 3, "collapse") != LUA_TNIL) {
      if (!lua_istable(L, -1))
        return luaL_error(L, "graph_dot: collapse must be a list of name prefixes, got %s", luaL_typename(L, -1));
      int tbl = lua_gettop(L);
      int np = (int)luaL_len(L, tbl);
      const char **pre = scratch(L, (size_t)np, sizeof *pre);
      for (int p = 0; p < np; p++) {
        if (lua_rawgeti(L, tbl, p + 1) != LUA_TSTRING)
          return luaL_error(L, "graph_dot: collapse[%d] must be a string prefix, got %s", p + 1,
                            luaL_typename(L, -1));
        pre[p] = lua_tostring(L, -1);
        lua_pop(L, 1);
      }
      opts.collapse = pre;
      opts.ncollapse = np;
      /* the table and the scratch stay on the stack until we return */
    } else {
      lua_pop(L, 1);
    }
  }

  char *dot = mm_graph_dot(root, named, names, nnamed, &opts);
  if (!dot) return mm_lua_error(L);
  lua_pushstring(L, dot);
  free(dot);
  return 1;
}

static int l_norm_stats(lua_State *L) {
  mm_norm_stats s;
  mm_tensor_norm_stats(mm_lua_check(L, 1), &s);
  lua_pushnumber(L, s.norm);
  lua_pushnumber(L, s.maxabs);
  lua_pushinteger(L, (lua_Integer)s.nan_count);
  lua_pushinteger(L, (lua_Integer)s.inf_count);
  return 4;
}

void mm_lua_open_viz(lua_State *L, int module, int methods) {
  static const luaL_Reg fns[] = {{"_graph_dot", l_graph_dot}, {"_norm_stats", l_norm_stats}, {NULL, NULL}};
  mm_lua_register(L, module, methods, fns, true, false);
}
