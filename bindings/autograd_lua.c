/* autograd_lua.c — backward, grad mode, detach and retain_grad for Lua. */
#include "lua_helpers.h"

/* t:backward([grad] [, {retain_graph = bool}]) */
static int m_backward(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  mm_tensor *g = NULL;
  int opts = 2;
  if (mm_lua_test(L, 2)) { g = mm_lua_check(L, 2); opts = 3; }
  else if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2)) luaL_typeerror(L, 2, "Tensor or options table");
  bool retain = mm_lua_opt_bool(L, opts, "retain_graph", false);
  if (mm_backward(t, g, retain) < 0) return mm_lua_error(L);
  return 0;
}

static int m_detach(lua_State *L) { return mm_lua_push(L, mm_detach(mm_lua_check(L, 1))); }

static int m_detach_(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  mm_detach_(t);
  lua_settop(L, 1);
  return 1;
}

static int m_retain_grad(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (mm_retain_grad(t) < 0) return mm_lua_error(L);
  lua_settop(L, 1);
  return 1;
}

static int m_requires_grad_(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  bool v = lua_isnoneornil(L, 2) ? true : lua_toboolean(L, 2);
  if (mm_set_requires_grad(t, v, "requires_grad_") < 0) return mm_lua_error(L);
  lua_settop(L, 1);
  return 1;
}

static int l_is_grad_enabled(lua_State *L) { lua_pushboolean(L, mm_grad_enabled()); return 1; }
static int l_set_grad_enabled(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, mm_grad_enabled());
  mm_set_grad_enabled(lua_toboolean(L, 1));
  return 1;   /* the previous mode, so callers can restore it */
}

/* Restores grad mode whatever fn does (error or not), then re-raises. */
/* A to-be-closed guard that restores grad mode: `local _ <close> =
 * mm.no_grad()` turns it off for the rest of the block, whatever way the
 * block ends. */
#define GRAD_GUARD_MT "microml.grad_mode_guard"
static int guard_close(lua_State *L) {
  bool *prev = luaL_checkudata(L, 1, GRAD_GUARD_MT);
  if (prev[1]) {   /* restore once, also if closed twice */
    mm_set_grad_enabled(prev[0]);
    prev[1] = false;
  }
  return 0;
}
static int push_guard(lua_State *L, bool prev) {
  bool *g = lua_newuserdatauv(L, 2 * sizeof(bool), 0);
  g[0] = prev;
  g[1] = true;
  if (luaL_newmetatable(L, GRAD_GUARD_MT)) {
    lua_pushcfunction(L, guard_close);
    lua_setfield(L, -2, "__close");
    lua_pushstring(L, "grad mode guard: use it as `local _ <close> = mm.no_grad()`");
    lua_setfield(L, -2, "__name");
  }
  lua_setmetatable(L, -2);
  return 1;
}

/* mm.no_grad(fn, ...) / mm.enable_grad(fn, ...): fn(...) with grad mode set,
 * restored whatever fn does; without fn, a to-be-closed guard. */
static int with_grad_mode(lua_State *L, bool on, const char *name) {
  bool prev = mm_grad_enabled();
  if (lua_isnone(L, 1)) {
    mm_set_grad_enabled(on);
    return push_guard(L, prev);
  }
  if (lua_type(L, 1) != LUA_TFUNCTION)
    return luaL_error(L, "%s: expected a function (or no argument, for `local _ <close> = mm.%s()`), "
                      "got %s", name, name, luaL_typename(L, 1));
  mm_set_grad_enabled(on);
  int n = lua_gettop(L);
  int rc = lua_pcall(L, n - 1, LUA_MULTRET, 0);
  mm_set_grad_enabled(prev);
  if (rc != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}
static int l_no_grad(lua_State *L) { return with_grad_mode(L, false, "no_grad"); }
static int l_enable_grad(lua_State *L) { return with_grad_mode(L, true, "enable_grad"); }

/* mm._autograd_stats(on) -> previous setting; with no argument, just reads it. */
static int l_autograd_stats(lua_State *L) {
  lua_pushboolean(L, mm_autograd_stats_enabled());
  if (!lua_isnone(L, 1)) mm_autograd_set_stats(lua_toboolean(L, 1));
  return 1;
}

void mm_lua_open_autograd(lua_State *L, int module, int methods) {
  static const luaL_Reg meths[] = {
    {"backward", m_backward}, {"detach", m_detach}, {"detach_", m_detach_},
    {"retain_grad", m_retain_grad}, {"requires_grad_", m_requires_grad_}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
    {"is_grad_enabled", l_is_grad_enabled}, {"set_grad_enabled", l_set_grad_enabled},
    {"no_grad", l_no_grad}, {"enable_grad", l_enable_grad}, {"_autograd_stats", l_autograd_stats}, {NULL, NULL}};
  mm_lua_register(L, module, methods, meths, false, true);
  mm_lua_register(L, module, methods, fns, true, false);
  lua_getfield(L, module, "detach");
  lua_pop(L, 1);
}
