/* optim_lua.c — low-level bindings of the fused optimizer kernels
 * (runtime/optim.c) for lua/microml/optim.lua.  They are positional and
 * prefixed with an underscore because people use optim.SGD/Adam/AdamW; the
 * optimizers validate hyper-parameters and own the state buffers.
 *
 *   mm._sgd_step(p, g, buf_or_nil, lr, momentum, dampening, weight_decay, nesterov, first_step)
 *   mm._adam_step(p, g, m, v, vmax_or_nil, lr, beta1, beta2, eps, weight_decay, step)
 *   mm._adamw_step(p, g, m, v, vmax_or_nil, lr, beta1, beta2, eps, weight_decay, step)
 *   mm._adam_multi(decoupled, params, grads, exp_avgs, exp_avg_sqs, max_sqs_or_nil, steps,
 *                  lr, beta1, beta2, eps, weight_decay [, states])
 *       one step of every parameter in the list (tables of equal length; steps
 *       holds each parameter's new step count), as one parallel loop; with
 *       states (their state tables), sets states[i].step = steps[i] too
 *   mm._norm_accumulate(t, p) -> sum |t|^p as a number (max |t| for p = math.huge)
 *
 * The step functions update p and the state in place and return nothing. */
#include "lua_helpers.h"

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

/* The i-th entry of the table at idx, which must be a tensor. */
static mm_tensor *list_tensor(lua_State *L, int idx, lua_Integer i, const char *list) {
  lua_rawgeti(L, idx, i);
  mm_tensor *t = mm_lua_test(L, -1);
  if (!t)
    luaL_error(L, "adam_step: expected a Tensor as %s[%d], got %s", list, (int)i,
               luaL_typename(L, -1));
  lua_pop(L, 1);   /* the table keeps it alive */
  return t;
}

static int l_adam_multi(lua_State *L) {
  lua_settop(L, 13);   /* the scratch userdata below goes to 14, after the optional states */
  bool decoupled = lua_toboolean(L, 1);
  static const char *lists[] = {"params", "grads", "exp_avgs", "exp_avg_sqs", "max_sqs", "steps"};
  bool amsgrad = !lua_isnoneornil(L, 6);
  for (int k = 2; k <= 7; k++)
    if (k != 6 || amsgrad) luaL_checktype(L, k, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  for (int k = 3; k <= 7; k++) {
    if (k == 6 && !amsgrad) continue;
    if ((lua_Integer)lua_rawlen(L, k) != n)
      return luaL_error(L, "adam_step: expected %s to have %d entries like params, got %d",
                        lists[k - 2], (int)n, (int)lua_rawlen(L, k));
  }
  mm_adam_opts o = {
    .lr = luaL_checknumber(L, 8), .beta1 = luaL_checknumber(L, 9),
    .beta2 = luaL_checknumber(L, 10), .eps = luaL_checknumber(L, 11),
    .weight_decay = luaL_checknumber(L, 12), .decoupled = decoupled, .amsgrad = amsgrad,
  };
  /* Scratch as a userdata: the collector frees it even when a check below
   * raises an error. */
  mm_adam_item *items = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *items, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    mm_adam_item *it = &items[i - 1];
    it->param = list_tensor(L, 2, i, "params");
    it->grad = list_tensor(L, 3, i, "grads");
    it->exp_avg = list_tensor(L, 4, i, "exp_avgs");
    it->exp_avg_sq = list_tensor(L, 5, i, "exp_avg_sqs");
    it->max_sq = amsgrad ? list_tensor(L, 6, i, "max_sqs") : NULL;
    lua_rawgeti(L, 7, i);
    int isint;
    it->step = (int64_t)lua_tointegerx(L, -1, &isint);
    if (!isint)
      return luaL_error(L, "adam_step: expected an integer as steps[%d], got %s", (int)i,
                        luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  /* states (optional): each parameter's state table, whose `step` is set to
   * steps[i] here, in the same C call as the update, so an interrupt (which
   * Lua delivers between instructions) can never fall between the two. */
  bool states = !lua_isnoneornil(L, 13);
  if (states) {
    luaL_checktype(L, 13, LUA_TTABLE);
    if ((lua_Integer)lua_rawlen(L, 13) != n)
      return luaL_error(L, "adam_step: expected states to have %d entries like params, got %d",
                        (int)n, (int)lua_rawlen(L, 13));
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_rawgeti(L, 13, i) != LUA_TTABLE)
        return luaL_error(L, "adam_step: expected a table as states[%d], got %s", (int)i,
                          luaL_typename(L, -1));
      lua_pop(L, 1);
    }
  }
  if (mm_adam_step_multi((int64_t)n, items, &o) < 0) return mm_lua_error(L);
  for (lua_Integer i = 1; states && i <= n; i++) {
    lua_rawgeti(L, 13, i);
    lua_pushliteral(L, "step");
    lua_pushinteger(L, (lua_Integer)items[i - 1].step);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  return 0;
}

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
    {"_adam_multi", l_adam_multi},
    {"_norm_accumulate", l_norm_accumulate}, {NULL, NULL}};
  mm_lua_register(L, module, methods, fns, true, false);
}
