/* optim_lua.c — low-level bindings of the fused optimizer kernels
 * (runtime/optim.c) for lua/microml/optim.lua.  They are positional and
 * prefixed with an underscore because people use optim.SGD/Adam/AdamW; the
 * optimizers validate hyper-parameters and own the state buffers.
 *
 *   mm._sgd_step(p, g, buf_or_nil, lr, momentum, dampening, weight_decay, nesterov, first_step)
 *   mm._adam_step(p, g, m, v, vmax_or_nil, lr, beta1, beta2, eps, weight_decay, step)
 *   mm._adamw_step(p, g, m, v, vmax_or_nil, lr, beta1, beta2, eps, weight_decay, step)
 *   mm._norm_accumulate(t, p) -> sum |t|^p as a number (max |t| for p = math.huge)
 *
 * The step functions update p and the state in place and return nothing. */
#include "microml_lua.h"

static mm_tensor *opt_tensor(lua_State *L, int idx) {
  return lua_isnoneornil(L, idx) ? NULL : mm_lua_check(L, idx);
}

static int l_sgd_step(lua_State *L) {
  mm_tensor *p = mm_lua_check(L, 1), *g = mm_lua_check(L, 2), *buf = opt_tensor(L, 3);
  mm_sgd_opts o = {
    .lr = luaL_checknumber(L, 4), .momentum = luaL_checknumber(L, 5),
    .dampening = luaL_checknumber(L, 6), .weight_decay = luaL_checknumber(L, 7),
    .nesterov = lua_toboolean(L, 8), .first_step = lua_toboolean(L, 9),
  };
  if (mm_sgd_step(p, g, buf, &o) < 0) return mm_lua_error(L);
  return 0;
}

static int adam_common(lua_State *L, bool decoupled) {
  mm_tensor *p = mm_lua_check(L, 1), *g = mm_lua_check(L, 2);
  mm_tensor *m = mm_lua_check(L, 3), *v = mm_lua_check(L, 4), *vmax = opt_tensor(L, 5);
  mm_adam_opts o = {
    .lr = luaL_checknumber(L, 6), .beta1 = luaL_checknumber(L, 7),
    .beta2 = luaL_checknumber(L, 8), .eps = luaL_checknumber(L, 9),
    .weight_decay = luaL_checknumber(L, 10), .step = mm_lua_check_int(L, 11),
    .decoupled = decoupled, .amsgrad = vmax != NULL,
  };
  if (mm_adam_step(p, g, m, v, vmax, &o) < 0) return mm_lua_error(L);
  return 0;
}
static int l_adam_step(lua_State *L) { return adam_common(L, false); }
static int l_adamw_step(lua_State *L) { return adam_common(L, true); }

static int l_norm_accumulate(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  double out;
  if (mm_norm_accumulate(t, luaL_optnumber(L, 2, 2.0), &out) < 0) return mm_lua_error(L);
  lua_pushnumber(L, out);
  return 1;
}

void mm_lua_open_optim(lua_State *L, int module, int methods) {
  static const luaL_Reg fns[] = {
    {"_sgd_step", l_sgd_step}, {"_adam_step", l_adam_step}, {"_adamw_step", l_adamw_step},
    {"_norm_accumulate", l_norm_accumulate}, {NULL, NULL}};
  mm_lua_register(L, module, methods, fns, true, false);
}
