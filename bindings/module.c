/* module.c — the entry of the Lua module `microml.core`: creates the module
 * table and the Tensor methods table, lets each binding family register
 * into them (families.h), and joins the runtime's worker threads when the
 * Lua state closes. */
#include "families.h"
#include "lua_helpers.h"
#include "module.h"

/* The worker threads live in this shared object.  When the Lua state
 * closes, the library may be unloaded while they wait on a condition
 * variable, so they are joined first by a finaliser set after the one that
 * unloads the library (Lua runs finalisers in reverse order of marking). */
static int pool_guard_gc(lua_State *L) {
  mm_lua_forget_tensor_metatable(L);
  mm_parallel_shutdown();
  /* The size-class cache lives in this object too: once it is unloaded the
   * cached blocks are unreachable (LeakSanitizer counts them), so hand them
   * back.  Every tensor box has been finalised by now. */
  mm_empty_cache();
  return 0;
}

static void anchor_pool_guard(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, "microml.pool_guard") != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_newuserdatauv(L, 1, 0);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, pool_guard_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "microml.pool_guard");
}

int luaopen_microml_core(lua_State *L) {
  /* A bad MICROML_MAX_BYTES / MICROML_NUM_THREADS fails `require` rather
   * than running with no limit or the wrong thread count. */
  const char *cfg = mm_config_error();
  if (cfg) return luaL_error(L, "microml: %s", cfg);
  anchor_pool_guard(L);
  lua_newtable(L);                         /* module */
  int module = lua_gettop(L);
  lua_newtable(L);                         /* methods */
  int meth = lua_gettop(L);
  /* In this order: a later family may replace an earlier one's name. */
  mm_lua_open_tensor(L, module, meth);     /* also creates the Tensor metatable */
  mm_lua_open_autograd(L, module, meth);
  mm_lua_open_pointwise(L, module, meth);
  mm_lua_open_reduce(L, module, meth);
  mm_lua_open_nnops(L, module, meth);
  mm_lua_open_linalg(L, module, meth);
  mm_lua_open_combine(L, module, meth);
  mm_lua_open_io(L, module, meth);
  mm_lua_open_optim(L, module, meth);
  mm_lua_open_viz(L, module, meth);
  lua_pushvalue(L, meth);
  lua_setfield(L, module, "Tensor");       /* so Lua code can add methods */
  lua_pushstring(L, MM_VERSION);
  lua_setfield(L, module, "version");
  lua_settop(L, module);
  return 1;
}
