/* reduce_lua.c — Lua bindings of the reductions (runtime/reduce.h), each as
 * mm.f(t, ...) and t:f(...):
 *
 *   sum, mean, prod        ([dim [, keepdim]])
 *   var, std               ([dim [, unbiased = true [, keepdim]]])
 *   max, min               ()                  -> 0-dim tensor
 *                          (dim [, keepdim])   -> values, indices (int64, 1-based)
 *                          (other_tensor)      -> elementwise maximum/minimum
 *   argmax, argmin         ([dim [, keepdim]]) -> int64, 1-based
 *   logsumexp              (dim [, keepdim])
 *   norm                   ([p = 2 [, dim [, keepdim]]]), p = 1, 2, math.huge, ...
 *
 * A missing or nil dim reduces every element.  Dims are 1-based (negative
 * from the end); keepdim and unbiased must be booleans when given, so that a
 * misplaced number is an error rather than a silent "true". */
#include "lua_helpers.h"

static bool opt_boolean(lua_State *L, int idx, bool def) {
  if (lua_isnoneornil(L, idx)) return def;
  luaL_checktype(L, idx, LUA_TBOOLEAN);
  return lua_toboolean(L, idx);
}

static int opt_dim(lua_State *L, int idx, const mm_tensor *t) {
  return lua_isnoneornil(L, idx) ? MM_ALL_DIMS : mm_lua_check_dim(L, idx, t->ndim);
}

static int l_sum(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d = opt_dim(L, 2, t);
  return mm_lua_push(L, mm_sum(t, d, opt_boolean(L, 3, false)));
}

static int l_mean(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d = opt_dim(L, 2, t);
  return mm_lua_push(L, mm_mean(t, d, opt_boolean(L, 3, false)));
}

static int l_prod(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d = opt_dim(L, 2, t);
  return mm_lua_push(L, mm_prod(t, d, opt_boolean(L, 3, false)));
}

static int var_std(lua_State *L, bool is_std) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d = opt_dim(L, 2, t);
  bool unbiased = opt_boolean(L, 3, true), keep = opt_boolean(L, 4, false);
  return mm_lua_push(L, is_std ? mm_std(t, d, unbiased, keep) : mm_var(t, d, unbiased, keep));
}
static int l_var(lua_State *L) { return var_std(L, false); }
static int l_std(lua_State *L) { return var_std(L, true); }

static int maxmin(lua_State *L, bool is_max) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (luaL_testudata(L, 2, MM_TENSOR_MT))   /* (a freed tensor fails in mm_lua_check) */
    return mm_lua_push(L, mm_binary(is_max ? MM_OP_MAXIMUM : MM_OP_MINIMUM, t, mm_lua_check(L, 2)));
  if (lua_isnoneornil(L, 2))
    return mm_lua_push(L, is_max ? mm_max(t, MM_ALL_DIMS, false, 1, NULL)
                                 : mm_min(t, MM_ALL_DIMS, false, 1, NULL));
  int d = mm_lua_check_dim(L, 2, t->ndim);
  bool keep = opt_boolean(L, 3, false);
  mm_tensor *idx = NULL;
  mm_tensor *v = is_max ? mm_max(t, d, keep, 1, &idx) : mm_min(t, d, keep, 1, &idx);
  if (!v) return mm_lua_error(L);
  mm_lua_push(L, v);
  mm_lua_push(L, idx);
  return 2;
}
static int l_max(lua_State *L) { return maxmin(L, true); }
static int l_min(lua_State *L) { return maxmin(L, false); }

static int argmaxmin(lua_State *L, bool is_max) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d = opt_dim(L, 2, t);
  bool keep = opt_boolean(L, 3, false);
  return mm_lua_push(L, is_max ? mm_argmax(t, d, keep, 1) : mm_argmin(t, d, keep, 1));
}
static int l_argmax(lua_State *L) { return argmaxmin(L, true); }
static int l_argmin(lua_State *L) { return argmaxmin(L, false); }

static int l_logsumexp(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d = mm_lua_check_dim(L, 2, t->ndim);
  return mm_lua_push(L, mm_logsumexp(t, d, opt_boolean(L, 3, false)));
}

static int l_norm(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  double p = luaL_optnumber(L, 2, 2.0);
  int d = opt_dim(L, 3, t);
  return mm_lua_push(L, mm_norm(t, p, d, opt_boolean(L, 4, false)));
}

void mm_lua_open_reduce(lua_State *L, int module, int methods) {
  static const luaL_Reg fns[] = {
    {"sum", l_sum}, {"mean", l_mean}, {"prod", l_prod}, {"var", l_var}, {"std", l_std},
    {"max", l_max}, {"min", l_min}, {"argmax", l_argmax}, {"argmin", l_argmin},
    {"logsumexp", l_logsumexp}, {"norm", l_norm}, {NULL, NULL}};
  mm_lua_register(L, module, methods, fns, true, true);
}
