/* lua_helpers.c — the helpers every binding file uses (lua_helpers.h):
 * recognising and pushing tensors, raising runtime errors, dims, integers,
 * shapes, option tables and registration.  Calls only the runtime's public
 * API and Lua.
 *
 * Every new storage is reported to Lua's collector as debt when its tensor is
 * pushed, so tensor bytes it cannot see still pace its cycles. */
#include "lua_helpers.h"

#include <string.h>

int mm_lua_error(lua_State *L) { return luaL_error(L, "%s", mm_error()); }

/* Recognising a tensor is on every op's path, several times per call.
 * luaL_testudata finds the metatable by name (a string lookup with a
 * strcmp) each time; instead the address of the Tensor metatable, cached
 * when the module opens, is compared with the value's metatable — about a
 * fifth of the cost of a one-element `a + b` before.  A second Lua state
 * that opened the module has its own metatable and takes the named lookup;
 * the cache is cleared when its state closes (module.c's pool guard). */
const void *mm_lua_tensor_mt;
static int tensor_mt_ref = LUA_NOREF;

void mm_lua_set_tensor_metatable(lua_State *L, int idx) {
  mm_lua_tensor_mt = lua_topointer(L, idx);
  lua_pushvalue(L, idx);
  tensor_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void mm_lua_forget_tensor_metatable(lua_State *L) {
  luaL_getmetatable(L, MM_TENSOR_MT);
  if (lua_topointer(L, -1) == mm_lua_tensor_mt) mm_lua_tensor_mt = NULL;   /* this state's: about to go */
  lua_pop(L, 1);
}

/* A Tensor of another Lua state (whose metatable is not the cached one). */
mm_lua_box *mm_lua_test_box_named(lua_State *L, int idx) {
  return luaL_testudata(L, idx, MM_TENSOR_MT);
}

/* Collector pacing: storages are invisible to Lua's allocator, so report
 * them in batches as if Lua had allocated them itself. */
static void report_debt(lua_State *L) {
  static uint64_t pending;
  pending += mm_take_alloc_debt();
  if (pending >= (1u << 20)) {
    lua_gc(L, LUA_GCSTEP, (int)(pending >> 10 > 1u << 30 ? 1u << 30 : pending >> 10));
    pending = 0;
  }
}

int mm_lua_push(lua_State *L, mm_tensor *t) {
  if (!t) return mm_lua_error(L);
  mm_lua_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = NULL;
  if (lua_rawgeti(L, LUA_REGISTRYINDEX, tensor_mt_ref) == LUA_TTABLE &&
      lua_topointer(L, -1) == mm_lua_tensor_mt) {
    lua_setmetatable(L, -2);
  } else {   /* another state: the ref may name something else there */
    lua_pop(L, 1);
    luaL_setmetatable(L, MM_TENSOR_MT);
  }
  b->t = t;
  report_debt(L);
  return 1;
}

int64_t mm_lua_check_int(lua_State *L, int idx) {
  int ok;
  lua_Integer v = lua_tointegerx(L, idx, &ok);
  if (!ok) {
    if (lua_type(L, idx) == LUA_TNUMBER)
      luaL_argerror(L, idx, lua_pushfstring(L, "expected an integer, got %f", lua_tonumber(L, idx)));
    luaL_typeerror(L, idx, "integer");
  }
  return (int64_t)v;
}

int mm_lua_check_dim(lua_State *L, int idx, int ndim) {
  int64_t d = mm_lua_check_int(L, idx);
  int n = ndim > 0 ? ndim : 1;
  if (d == 0 || d > n || d < -n)
    luaL_argerror(L, idx, lua_pushfstring(L, "dimension out of range (expected 1..%d or -%d..-1, got %d)",
                                          n, n, (int)(d > INT32_MAX || d < INT32_MIN ? 0 : d)));
  return d > 0 ? (int)d - 1 : (int)d + n;
}

int mm_lua_opt_dim(lua_State *L, int idx, int ndim, int def) {
  return lua_isnoneornil(L, idx) ? def : mm_lua_check_dim(L, idx, ndim);
}

bool mm_lua_is_sequence(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return false;
  lua_rawgeti(L, idx, 1);
  bool seq = !lua_isnil(L, -1);
  lua_pop(L, 1);
  return seq || lua_rawlen(L, idx) > 0 || (lua_pushnil(L), lua_next(L, idx) == 0 ? true : (lua_pop(L, 2), false));
}

int mm_lua_check_shape(lua_State *L, int idx, int64_t *shape, int *next_idx) {
  int nd = 0;
  if (lua_istable(L, idx) && mm_lua_is_sequence(L, idx)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n > MM_MAX_DIMS)
      luaL_argerror(L, idx, lua_pushfstring(L, "expected at most %d sizes, got %d", MM_MAX_DIMS, (int)n));
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      int ok;
      lua_Integer v = lua_tointegerx(L, -1, &ok);
      if (!ok)
        luaL_argerror(L, idx, lua_pushfstring(L, "size %d must be an integer, got %s", (int)i,
                                              lua_type(L, -1) == LUA_TNUMBER
                                                  ? lua_pushfstring(L, "%f", lua_tonumber(L, -1))
                                                  : luaL_typename(L, -1)));
      if (v < 0)
        luaL_argerror(L, idx, lua_pushfstring(L, "size %d must be >= 0, got %I", (int)i, v));
      shape[nd++] = v;
      lua_pop(L, 1);
    }
    if (next_idx) *next_idx = idx + 1;
    return nd;
  }
  int top = lua_gettop(L);
  while (idx <= top && lua_type(L, idx) == LUA_TNUMBER) {
    if (nd == MM_MAX_DIMS) luaL_argerror(L, idx, "too many dimensions");
    int64_t v = mm_lua_check_int(L, idx);
    if (v < 0) luaL_argerror(L, idx, lua_pushfstring(L, "expected a size >= 0, got %I", (lua_Integer)v));
    shape[nd++] = v;
    idx++;
  }
  if (next_idx) *next_idx = idx;
  return nd;
}

/* An options table is only ever an actual argument: idx outside the
 * arguments means "no options". */
static bool has_opts(lua_State *L, int idx) {
  return idx > 0 && idx <= lua_gettop(L) && lua_istable(L, idx);
}

mm_dtype mm_lua_opt_dtype(lua_State *L, int idx, mm_dtype def) {
  if (!has_opts(L, idx)) return def;
  lua_getfield(L, idx, "dtype");
  mm_dtype dt = def;
  if (!lua_isnil(L, -1)) {
    const char *name = lua_tostring(L, -1);
    if (!name || mm_dtype_from_name(name, &dt) < 0)
      luaL_error(L, "unknown dtype '%s' (expected float32, float64 or int64)",
                 name ? name : luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return dt;
}

bool mm_lua_opt_bool(lua_State *L, int idx, const char *field, bool def) {
  if (!has_opts(L, idx)) return def;
  lua_getfield(L, idx, field);
  bool v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

mm_tensor *mm_lua_check_tensor_or_number(lua_State *L, int idx, const mm_tensor *like) {
  mm_tensor *t = mm_lua_test(L, idx);
  if (t) {
    if (!t) luaL_argerror(L, idx, "tensor has been freed");
    mm_tensor_retain(t);
    return t;
  }
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_typeerror(L, idx, "Tensor or number");
  mm_dtype dt = like ? like->dtype : MM_FLOAT32;
  if (lua_isinteger(L, idx) == 0 && dt == MM_INT64) dt = MM_FLOAT32;
  mm_tensor *s = mm_tensor_scalar(dt, lua_tonumber(L, idx));
  if (!s) mm_lua_error(L);
  return s;
}

void mm_lua_register(lua_State *L, int module_idx, int methods_idx, const luaL_Reg *fns,
                     bool as_function, bool as_method) {
  for (; fns->name; fns++) {
    if (as_function) {
      lua_pushcfunction(L, fns->func);
      lua_setfield(L, module_idx, fns->name);
    }
    if (as_method) {
      lua_pushcfunction(L, fns->func);
      lua_setfield(L, methods_idx, fns->name);
    }
  }
}

/* The key at the top of the stack as the error message shows it. */
static const char *key_name(lua_State *L) {
  if (lua_type(L, -1) == LUA_TSTRING) return lua_pushfstring(L, "'%s'", lua_tostring(L, -1));
  return lua_pushfstring(L, "[%s] (a %s key)", luaL_tolstring(L, -1, NULL), luaL_typename(L, -2));
}

void mm_lua_check_options(lua_State *L, int idx, const char *where, const char *const *known) {
  mm_lua_check_options_ex(L, idx, where, known, NULL);
}

void mm_lua_check_options_ex(lua_State *L, int idx, const char *where, const char *const *known,
                             const char *const *unsupported) {
  if (!has_opts(L, idx)) return;
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    bool ok = false;
    for (int i = 0; k && known[i]; i++) ok = ok || strcmp(k, known[i]) == 0;
    if (ok) continue;
    for (int i = 0; k && unsupported && unsupported[i]; i++)
      if (strcmp(k, unsupported[i]) == 0)
        luaL_error(L, "%s: option '%s' is not supported yet (PyTorch's %s; got %s, only nil works)",
                   where, k, k, luaL_typename(L, (lua_getfield(L, idx, k), -1)));
    luaL_Buffer b;
    const char *key = key_name(L);
    luaL_buffinit(L, &b);
    for (int i = 0; known[i]; i++) {
      if (i) luaL_addstring(&b, ", ");
      luaL_addstring(&b, known[i]);
    }
    if (!known[0]) luaL_addstring(&b, "none");
    luaL_pushresult(&b);
    luaL_error(L, "%s: unknown option %s (accepted: %s)", where, key, lua_tostring(L, -1));
  }
}

void mm_lua_check_arity(lua_State *L, const char *where, int max) {
  int n = lua_gettop(L);
  if (n > max)
    luaL_error(L, "%s: expected at most %d argument%s, got %d", where, max, max == 1 ? "" : "s", n);
}
