/* linalg_lua.c — the Lua face of runtime/linalg.h:
 *   mm.matmul(a, b) and a:matmul(b)
 *   mm.linear(x, w [, b])                          w is [out, in] as in PyTorch
 *   mm.conv2d(x, w [, b [, stride=1 [, padding=0]]])
 *   mm.max_pool2d(x, kernel [, stride=kernel [, padding=0]])
 *   mm.avg_pool2d(x, kernel [, stride=kernel [, padding=0]])
 * Window sizes (kernel, stride, padding) are a number for both spatial dims
 * or a table {h, w}.  Range checks are the runtime's, so C callers get the
 * same messages. */
#include "lua_helpers.h"

/* A tensor argument that may be nil (the optional biases). */
static mm_tensor *opt_tensor(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return NULL;
  if (!mm_lua_test(L, idx)) luaL_typeerror(L, idx, "Tensor or nil");
  return mm_lua_check(L, idx);
}

/* A window size: n means {n, n}; nil means def. */
static void check_pair(lua_State *L, int idx, const char *what, const int64_t def[2],
                       int64_t out[2]) {
  if (lua_isnoneornil(L, idx)) {
    out[0] = def[0], out[1] = def[1];
    return;
  }
  if (lua_type(L, idx) == LUA_TNUMBER) {
    out[0] = out[1] = mm_lua_check_int(L, idx);
    return;
  }
  if (lua_istable(L, idx) && lua_rawlen(L, idx) == 2) {
    for (int i = 0; i < 2; i++) {
      lua_rawgeti(L, idx, i + 1);
      int ok;
      out[i] = (int64_t)lua_tointegerx(L, -1, &ok);
      if (!ok)
        luaL_argerror(L, idx, lua_pushfstring(L, "%s {h, w}: entry %d must be an integer, got %s",
                                              what, i + 1, luaL_typename(L, -1)));
      lua_pop(L, 1);
    }
    return;
  }
  luaL_argerror(L, idx, lua_pushfstring(L, "%s: expected an integer or a table {h, w}, got %s",
                                        what, luaL_typename(L, idx)));
}

static int l_matmul(lua_State *L) {
  mm_tensor *a = mm_lua_check(L, 1), *b = mm_lua_check(L, 2);
  return mm_lua_push(L, mm_matmul(a, b));
}

static int l_linear(lua_State *L) {
  mm_lua_check_arity(L, "linear", 3);
  mm_tensor *x = mm_lua_check(L, 1), *w = mm_lua_check(L, 2), *b = opt_tensor(L, 3);
  return mm_lua_push(L, mm_linear(x, w, b));
}

static int l_conv2d(lua_State *L) {
  if (lua_gettop(L) > 5)
    return luaL_error(L, "conv2d: expected at most 5 arguments (x, w, b, stride, padding), got %d "
                      "(PyTorch's dilation and groups are not supported yet)", lua_gettop(L));
  mm_tensor *x = mm_lua_check(L, 1), *w = mm_lua_check(L, 2), *b = opt_tensor(L, 3);
  static const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
  int64_t stride[2], padding[2];
  check_pair(L, 4, "stride", one, stride);
  check_pair(L, 5, "padding", zero, padding);
  return mm_lua_push(L, mm_conv2d(x, w, b, stride, padding));
}

static int pool(lua_State *L, bool is_max) {
  if (lua_gettop(L) > 4)
    return luaL_error(L, "%s: expected at most 4 arguments (x, kernel, stride, padding), got %d "
                      "(PyTorch's %s are not supported yet)", is_max ? "max_pool2d" : "avg_pool2d",
                      lua_gettop(L), is_max ? "dilation, ceil_mode and return_indices"
                                            : "ceil_mode, count_include_pad and divisor_override");
  mm_tensor *x = mm_lua_check(L, 1);
  static const int64_t zero[2] = {0, 0};
  int64_t kernel[2], stride[2], padding[2];
  if (lua_isnoneornil(L, 2)) luaL_argerror(L, 2, "kernel: expected an integer or a table {h, w}");
  check_pair(L, 2, "kernel", zero, kernel);
  check_pair(L, 3, "stride", kernel, stride);
  check_pair(L, 4, "padding", zero, padding);
  return mm_lua_push(L, is_max ? mm_max_pool2d(x, kernel, stride, padding)
                               : mm_avg_pool2d(x, kernel, stride, padding));
}
static int l_max_pool2d(lua_State *L) { return pool(L, true); }
static int l_avg_pool2d(lua_State *L) { return pool(L, false); }

void mm_lua_open_linalg(lua_State *L, int module, int methods) {
  static const luaL_Reg shared[] = {{"matmul", l_matmul}, {NULL, NULL}};
  static const luaL_Reg functions[] = {
    {"linear", l_linear}, {"conv2d", l_conv2d}, {"max_pool2d", l_max_pool2d},
    {"avg_pool2d", l_avg_pool2d}, {NULL, NULL}};
  mm_lua_register(L, module, methods, shared, true, true);
  mm_lua_register(L, module, methods, functions, true, false);
}
