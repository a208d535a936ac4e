/* autograd_lua.c — backward, grad mode, detach and retain_grad for Lua. */
#include "lua_helpers.h"

#include <stdlib.h>
#include <string.h>

/* Higher-order gradients need differentiable backward functions throughout
 * (the engine's own accumulation included); until then, say so. */
static void refuse_create_graph(lua_State *L, int opts, const char *where) {
  if (mm_lua_opt_bool(L, opts, "create_graph", false))
    luaL_error(L, "%s: create_graph = true (higher-order gradients) is not supported yet", where);
}

/* The state a Lua hook runs in: the thread that called backward (set for
 * the duration of the call), so hooks run in the caller's coroutine. */
static lua_State *backward_L;

/* t:backward([grad] [, {retain_graph = bool}]) */
static int m_backward(lua_State *L) {
  static const char *const known[] = {"retain_graph", "create_graph", NULL};
  mm_tensor *t = mm_lua_check(L, 1);
  mm_tensor *g = NULL;
  int opts = 2;
  if (mm_lua_test(L, 2)) { g = mm_lua_check(L, 2); opts = 3; }
  else if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2)) luaL_typeerror(L, 2, "Tensor or options table");
  mm_lua_check_options(L, opts, "backward", known);
  mm_lua_check_arity(L, "backward", opts);
  refuse_create_graph(L, opts, "backward");
  bool retain = mm_lua_opt_bool(L, opts, "retain_graph", false);
  lua_State *prev = backward_L;
  backward_L = L;
  int rc = mm_backward(t, g, retain);
  backward_L = prev;
  if (rc < 0) return mm_lua_error(L);
  return 0;
}

/* A list of tensors (a tensor alone counts as a list of one) at idx, as an
 * array of borrowed pointers (the Lua values keep them alive) in a userdata
 * left on the stack: an error raised on the way frees nothing by hand. */
static mm_tensor **tensor_list(lua_State *L, int idx, const char *what, int *n, bool nil_entries) {
  idx = lua_absindex(L, idx);
  if (mm_lua_test(L, idx)) {
    mm_tensor **v = lua_newuserdatauv(L, sizeof *v, 0);
    v[0] = mm_lua_check(L, idx);
    *n = 1;
    return v;
  }
  if (!lua_istable(L, idx))
    luaL_error(L, "grad: expected a Tensor or a list of Tensors as %s, got %s", what,
               luaL_typename(L, idx));
  int k = (int)lua_rawlen(L, idx);
  mm_tensor **v = lua_newuserdatauv(L, (size_t)(k ? k : 1) * sizeof *v, 0);
  for (int i = 1; i <= k; i++) {
    lua_rawgeti(L, idx, i);
    v[i - 1] = mm_lua_test(L, -1);
    if (!v[i - 1] && !(nil_entries && lua_isnil(L, -1)))
      luaL_error(L, "grad: expected a Tensor as %s[%d], got %s", what, i, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  *n = k;
  return v;
}

/* mm._autograd_grad(outputs, inputs, grad_outputs_or_nil, retain_graph, allow_unused)
 * -> a list of gradients (nil for unused inputs).  mm.autograd.grad checks
 * the options table in Lua. */
static int l_autograd_grad(lua_State *L) {
  lua_settop(L, 5);
  int nout, nin, ngo = 0;
  mm_tensor **outs = tensor_list(L, 1, "outputs", &nout, false);
  if (lua_isnil(L, 2)) return luaL_error(L, "grad: expected inputs as argument 2");
  mm_tensor **ins = tensor_list(L, 2, "inputs", &nin, false);
  mm_tensor **gos = lua_isnil(L, 3) ? NULL : tensor_list(L, 3, "grad_outputs", &ngo, true);
  if (gos && ngo != nout)
    return luaL_error(L, "grad: expected %d grad_outputs (one per output), got %d", nout, ngo);
  mm_tensor **res = lua_newuserdatauv(L, (size_t)(nin ? nin : 1) * sizeof *res, 0);
  lua_State *prev = backward_L;
  backward_L = L;
  int rc = mm_grad(nout, outs, gos, nin, ins, lua_toboolean(L, 4), lua_toboolean(L, 5), res);
  backward_L = prev;
  if (rc < 0) return mm_lua_error(L);
  lua_createtable(L, nin, 0);
  for (int i = 0; i < nin; i++) {
    if (res[i]) {
      mm_lua_push(L, res[i]);
      lua_rawseti(L, -2, i + 1);
    }
  }
  return 1;
}

/* ---- hooks: a Lua function per hook, kept in the registry ----------------- */
typedef struct { lua_State *main; int ref; } lua_hook;

static void lua_hook_free(void *ctx) {
  lua_hook *h = ctx;
  luaL_unref(h->main, LUA_REGISTRYINDEX, h->ref);
  free(h);
}

static int hook_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

static mm_tensor *lua_hook_call(void *ctx, mm_tensor *grad, int *failed) {
  lua_hook *h = ctx;
  lua_State *L = backward_L ? backward_L : h->main;
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 4)) {
    mm_set_error("hook: Lua stack overflow");
    *failed = 1;
    return NULL;
  }
  lua_pushcfunction(L, hook_traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref);
  mm_tensor_retain(grad);
  mm_lua_push(L, grad);
  mm_tensor *r = NULL;
  if (lua_pcall(L, 1, 1, top + 1) != LUA_OK) {
    mm_set_error("hook: %s", lua_tostring(L, -1));
    *failed = 1;
  } else if (!lua_isnil(L, -1)) {
    if ((r = mm_lua_test(L, -1))) mm_tensor_retain(r);
    else {
      mm_set_error("hook: expected the hook to return a Tensor or nil, got %s", luaL_typename(L, -1));
      *failed = 1;
    }
  }
  lua_settop(L, top);
  return r;
}

static int handle_remove(lua_State *L) {
  lua_getiuservalue(L, 1, 1);   /* the tensor */
  mm_tensor *t = mm_lua_test(L, -1);
  uint64_t *id = lua_touserdata(L, 1);
  if (t && *id) mm_remove_hook(t, *id);
  *id = 0;   /* removing twice is harmless */
  return 0;
}

/* t:register_hook(fn) -> handle with handle:remove().  fn(grad) may return
 * a replacement gradient of the same shape. */
static int m_register_hook(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_hook *h = malloc(sizeof *h);
  if (!h) return luaL_error(L, "register_hook: out of memory");
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  h->main = lua_tothread(L, -1);
  lua_pop(L, 1);
  lua_pushvalue(L, 2);
  h->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uint64_t id = mm_register_hook(t, lua_hook_call, h, lua_hook_free);
  if (!id) {
    lua_hook_free(h);
    return mm_lua_error(L);
  }
  uint64_t *box = lua_newuserdatauv(L, sizeof *box, 1);
  *box = id;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  if (luaL_newmetatable(L, "microml.hook_handle")) {
    lua_newtable(L);
    lua_pushcfunction(L, handle_remove);
    lua_setfield(L, -2, "remove");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  return 1;
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
    {"register_hook", m_register_hook},
    {"retain_grad", m_retain_grad}, {"requires_grad_", m_requires_grad_}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
    {"is_grad_enabled", l_is_grad_enabled}, {"set_grad_enabled", l_set_grad_enabled},
    {"no_grad", l_no_grad}, {"enable_grad", l_enable_grad}, {"_autograd_grad", l_autograd_grad}, {"_autograd_stats", l_autograd_stats}, {NULL, NULL}};
  mm_lua_register(L, module, methods, meths, false, true);
  mm_lua_register(L, module, methods, fns, true, false);
  lua_getfield(L, module, "detach");
  lua_pop(L, 1);
}
