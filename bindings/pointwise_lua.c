/* pointwise_lua.c — the Lua bindings of every unary pointwise op, made by a
 * loop over the table (runtime/pointwise.def, read through mm_unary_info):
 * each op is mm.<name>(x, ...) and t:<name>(...).  Parameters come
 * positionally, mm.leaky_relu(x, 0.2), or from an options table with
 * PyTorch's names, mm.leaky_relu(x, {negative_slope = 0.2}); nil or absent
 * means the default.  Nothing here names an op except gelu, whose
 * `approximate` string picks one of two table ops (gelu, gelu_tanh). */
#include <string.h>

#include "lua_helpers.h"

/* Reads parameter i of op d from the value at idx into *out: nil keeps the
 * default (returns false), a number is taken, anything else is an error
 * naming the op, the parameter, and what was expected and given. */
static bool read_param(lua_State *L, const mm_unary_desc *d, int i, int idx, double *out) {
  if (lua_isnoneornil(L, idx)) return false;
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: expected %s to be a number or nil, got %s", d->name, d->param_names[i],
               luaL_typename(L, idx));
  *out = lua_tonumber(L, idx);
  return true;
}

/* upvalue 1: the op (an mm_unary_op) */
static int l_pointwise(lua_State *L) {
  mm_unary_op op = (mm_unary_op)lua_tointeger(L, lua_upvalueindex(1));
  const mm_unary_desc *d = mm_unary_info(op);
  mm_tensor *x = mm_lua_check(L, 1);
  double p[MM_POINTWISE_MAX_PARAMS];
  int given = 0;
  bool opts = d->nparams > 0 && lua_istable(L, 2) && !mm_lua_test(L, 2);
  if (opts) {
    const char *known[MM_POINTWISE_MAX_PARAMS + 1];
    for (int i = 0; i < d->nparams; i++) known[i] = d->param_names[i];
    known[d->nparams] = NULL;
    mm_lua_check_options(L, 2, d->name, known);
  }
  mm_lua_check_arity(L, d->name, opts ? 2 : 1 + d->nparams);
  for (int i = 0; i < d->nparams; i++) {
    p[i] = d->param_defaults[i];
    int idx = 2 + i;
    if (opts) {
      lua_getfield(L, 2, d->param_names[i]);
      idx = lua_gettop(L);
    }
    given += read_param(L, d, i, idx, &p[i]);
    if (opts) lua_pop(L, 1);
  }
  if (d->need_one && given == 0)
    luaL_error(L, "%s: expected at least one of %s and %s, got neither", d->name,
               d->param_names[0], d->param_names[1]);
  return mm_lua_push(L, mm_pointwise(op, x, p));
}

/* gelu(x [, approximate]) — approximate = "tanh" for the tanh form (the
 * table op gelu_tanh), as torch's F.gelu. */
static int l_gelu(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  const char *approx = luaL_optstring(L, 2, "none");
  if (strcmp(approx, "tanh") && strcmp(approx, "none"))
    luaL_argerror(L, 2, lua_pushfstring(L, "expected 'none' or 'tanh', got '%s'", approx));
  return mm_lua_push(L, mm_unary(strcmp(approx, "tanh") ? MM_OP_GELU : MM_OP_GELU_TANH, t));
}

/* mm._pointwise_ops(): the table as Lua sees it, one entry per op:
 * {name =, node = (nil: not differentiable), int64 = bool, need_one = bool,
 *  params = {{name =, default =}, ...}}, in enum order.  nn.lua and the
 * specs walk it, so a new table line is covered without naming it. */
static int l_pointwise_ops(lua_State *L) {
  lua_createtable(L, MM_UNARY_COUNT, 0);
  for (int op = 0; op < MM_UNARY_COUNT; op++) {
    const mm_unary_desc *d = mm_unary_info((mm_unary_op)op);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, d->name);
    lua_setfield(L, -2, "name");
    if (d->node) {
      lua_pushstring(L, d->node);
      lua_setfield(L, -2, "node");
    }
    lua_pushboolean(L, d->int64_ok);
    lua_setfield(L, -2, "int64");
    lua_pushboolean(L, d->need_one);
    lua_setfield(L, -2, "need_one");
    lua_createtable(L, d->nparams, 0);
    for (int i = 0; i < d->nparams; i++) {
      lua_createtable(L, 0, 2);
      lua_pushstring(L, d->param_names[i]);
      lua_setfield(L, -2, "name");
      lua_pushnumber(L, d->param_defaults[i]);
      lua_setfield(L, -2, "default");
      lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "params");
    lua_rawseti(L, -2, op + 1);
  }
  return 1;
}

void mm_lua_open_pointwise(lua_State *L, int module, int methods) {
  for (int op = 0; op < MM_UNARY_COUNT; op++) {
    const char *name = mm_unary_info((mm_unary_op)op)->name;
    lua_pushinteger(L, op);
    lua_pushcclosure(L, l_pointwise, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, module, name);
    lua_setfield(L, methods, name);
  }
  static const luaL_Reg special[] = {{"gelu", l_gelu}, {NULL, NULL}};
  mm_lua_register(L, module, methods, special, true, true);   /* replaces the plain gelu */
  lua_pushcfunction(L, l_pointwise_ops);
  lua_setfield(L, module, "_pointwise_ops");
}
