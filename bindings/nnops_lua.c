/* nnops_lua.c — Lua bindings of the fused NN ops (runtime/nnops.h):
 *
 *   mm.softmax(x, dim), mm.log_softmax(x, dim)       (also x:softmax(dim), ...)
 *   mm.cross_entropy(logits, labels [, {reduction = "mean"|"sum"|"none",
 *                                        label_smoothing = 0, ignore_index = nil}])
 *   mm.nll_loss(logp, labels [, {reduction =, ignore_index =}])
 *   mm.mse_loss(a, b [, {reduction =}])
 *   mm.binary_cross_entropy_with_logits(x, y [, {reduction =}])
 *   mm.layer_norm(x, normalized_shape, weight_or_nil, bias_or_nil [, eps = 1e-5])
 *   mm.dropout(x [, p = 0.5 [, training = true]])
 *
 * Labels and ignore_index are 1-based class numbers, as everywhere in Lua.
 * Options tables are checked for unknown keys, so a typo such as
 * {reductoin = "sum"} is an error instead of a silently ignored option. */
#include <string.h>

#include "lua_helpers.h"

static int l_softmax(lua_State *L) {
  mm_tensor *x = mm_lua_check(L, 1);
  return mm_lua_push(L, mm_softmax(x, mm_lua_check_dim(L, 2, x->ndim)));
}

static int l_log_softmax(lua_State *L) {
  mm_tensor *x = mm_lua_check(L, 1);
  return mm_lua_push(L, mm_log_softmax(x, mm_lua_check_dim(L, 2, x->ndim)));
}

enum { OPT_REDUCTION = 1, OPT_SMOOTHING = 2, OPT_IGNORE = 4 };

/* Reads an options table at idx, accepting the keys in `allowed` (OPT_*
 * bits); `names` lists them for the error message. */
static void loss_opts(lua_State *L, int idx, const char *fname, int allowed, const char *names,
                      mm_loss_opts *o) {
  o->reduction = MM_REDUCTION_MEAN;
  o->label_smoothing = 0;
  o->has_ignore_index = false;
  o->ignore_index = 0;
  mm_lua_check_arity(L, fname, idx);
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  {
    const char *known[4];
    int n = 0;
    if (allowed & OPT_REDUCTION) known[n++] = "reduction";
    if (allowed & OPT_SMOOTHING) known[n++] = "label_smoothing";
    if (allowed & OPT_IGNORE) known[n++] = "ignore_index";
    known[n] = NULL;
    /* PyTorch's per-class weights (and BCE's pos_weight): not yet. */
    static const char *const weights[] = {"weight", "pos_weight", NULL};
    mm_lua_check_options_ex(L, idx, fname, known, weights);
  }
  (void)names;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    int which = strcmp(k, "reduction") == 0 ? OPT_REDUCTION
              : strcmp(k, "label_smoothing") == 0 ? OPT_SMOOTHING
              : strcmp(k, "ignore_index") == 0 ? OPT_IGNORE : 0;
    if (!(which & allowed))
      luaL_error(L, "%s: unknown option '%s' (expected %s)", fname,
                 lua_type(L, -2) == LUA_TSTRING ? k : luaL_typename(L, -2), names);
    if (strcmp(k, "reduction") == 0) {
      const char *r = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
      if (r && strcmp(r, "mean") == 0) o->reduction = MM_REDUCTION_MEAN;
      else if (r && strcmp(r, "sum") == 0) o->reduction = MM_REDUCTION_SUM;
      else if (r && strcmp(r, "none") == 0) o->reduction = MM_REDUCTION_NONE;
      else
        luaL_error(L, "%s: expected reduction 'mean', 'sum' or 'none', got %s%s%s", fname,
                   r ? "'" : "", r ? r : luaL_typename(L, -1), r ? "'" : "");
    } else if (strcmp(k, "label_smoothing") == 0) {
      if (lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "%s: expected label_smoothing to be a number, got %s", fname,
                   luaL_typename(L, -1));
      o->label_smoothing = lua_tonumber(L, -1);
    } else if (strcmp(k, "ignore_index") == 0) {
      int ok;
      lua_Integer v = lua_tointegerx(L, -1, &ok);
      if (!ok)
        luaL_error(L, "%s: expected ignore_index to be an integer label, got %s", fname,
                   lua_type(L, -1) == LUA_TNUMBER ? lua_pushfstring(L, "%f", lua_tonumber(L, -1))
                                                  : luaL_typename(L, -1));
      o->has_ignore_index = true;
      o->ignore_index = (int64_t)v;
    }
    lua_pop(L, 1);
  }
}

static int l_cross_entropy(lua_State *L) {
  mm_tensor *x = mm_lua_check(L, 1), *y = mm_lua_check(L, 2);
  mm_loss_opts o;
  loss_opts(L, 3, "cross_entropy", OPT_REDUCTION | OPT_SMOOTHING | OPT_IGNORE,
            "reduction, label_smoothing, ignore_index", &o);
  return mm_lua_push(L, mm_cross_entropy(x, y, &o, 1));
}

static int l_nll_loss(lua_State *L) {
  mm_tensor *x = mm_lua_check(L, 1), *y = mm_lua_check(L, 2);
  mm_loss_opts o;
  loss_opts(L, 3, "nll_loss", OPT_REDUCTION | OPT_IGNORE, "reduction, ignore_index", &o);
  return mm_lua_push(L, mm_nll_loss(x, y, &o, 1));
}

static int l_mse_loss(lua_State *L) {
  mm_tensor *a = mm_lua_check(L, 1), *b = mm_lua_check(L, 2);
  mm_loss_opts o;
  loss_opts(L, 3, "mse_loss", OPT_REDUCTION, "reduction", &o);
  return mm_lua_push(L, mm_mse_loss(a, b, o.reduction));
}

static int l_bce_with_logits(lua_State *L) {
  mm_tensor *x = mm_lua_check(L, 1), *y = mm_lua_check(L, 2);
  mm_loss_opts o;
  loss_opts(L, 3, "binary_cross_entropy_with_logits", OPT_REDUCTION, "reduction", &o);
  return mm_lua_push(L, mm_binary_cross_entropy_with_logits(x, y, o.reduction));
}

/* Tensor argument that may be nil. */
static mm_tensor *opt_tensor(lua_State *L, int idx) {
  return lua_isnoneornil(L, idx) ? NULL : mm_lua_check(L, idx);
}

static int l_layer_norm(lua_State *L) {
  mm_lua_check_arity(L, "layer_norm", 5);
  mm_tensor *x = mm_lua_check(L, 1);
  int64_t shape[MM_MAX_DIMS];
  int nd;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    shape[0] = mm_lua_check_int(L, 2);
    nd = 1;
  } else if (lua_istable(L, 2)) {
    nd = mm_lua_check_shape(L, 2, shape, NULL);
  } else {
    return luaL_typeerror(L, 2, "integer or table of sizes (normalized_shape)");
  }
  mm_tensor *w = opt_tensor(L, 3), *b = opt_tensor(L, 4);
  double eps = luaL_optnumber(L, 5, 1e-5);
  return mm_lua_push(L, mm_layer_norm(x, nd, shape, w, b, eps));
}

static int l_dropout(lua_State *L) {
  mm_lua_check_arity(L, "dropout", 3);
  mm_tensor *x = mm_lua_check(L, 1);
  double p = luaL_optnumber(L, 2, 0.5);
  bool training = true;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TBOOLEAN);
    training = lua_toboolean(L, 3);
  }
  return mm_lua_push(L, mm_dropout(x, p, training));
}

void mm_lua_open_nnops(lua_State *L, int module, int methods) {
  static const luaL_Reg shared[] = {
    {"softmax", l_softmax}, {"log_softmax", l_log_softmax}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
    {"cross_entropy", l_cross_entropy}, {"nll_loss", l_nll_loss}, {"mse_loss", l_mse_loss},
    {"binary_cross_entropy_with_logits", l_bce_with_logits}, {"layer_norm", l_layer_norm},
    {"dropout", l_dropout}, {NULL, NULL}};
  mm_lua_register(L, module, methods, shared, true, true);
  mm_lua_register(L, module, methods, fns, true, false);
}
