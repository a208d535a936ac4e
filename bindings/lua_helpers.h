/* lua_helpers.h — the argument, push and error helpers shared by every
 * binding file: the Tensor userdata box, recognising and pushing tensors,
 * dims, integers, shapes, option tables and function registration.  The
 * bindings are the only code that includes Lua; this header and the files
 * it serves see the runtime only through its public header, microml.h.
 *
 * Conventions: a binding checks its arguments (luaL_* messages name the
 * argument and function), converts 1-based/negative Lua dims to the C API's
 * 0-based ones, calls the runtime, and raises mm_error() as a Lua error when
 * the runtime refuses.
 *
 * Layering (tools/check_layers.sh, `make check-layers`): lua_helpers.c
 * calls only the runtime and Lua; tensor_class.c and the family files
 * (*_lua.c) call the helpers and the runtime, never each other; module.c
 * (the module entry) calls the families' open functions (families.h). */
#ifndef MICROML_LUA_HELPERS_H
#define MICROML_LUA_HELPERS_H

#include <lauxlib.h>
#include <lua.h>

#include "microml.h"

#define MM_TENSOR_MT "microml.Tensor"

/* The Tensor userdata: one reference to an mm_tensor, NULL once released
   (:free(), <close> or __gc). */
typedef struct { mm_tensor *t; } mm_lua_box;

/* The box at idx if the value is a Tensor userdata (freed or not), else
   NULL.  Compares the value's metatable with the cached Tensor metatable
   (mm_lua_set_tensor_metatable), falling back to the named lookup.  Inline,
   with mm_lua_test and mm_lua_check below: every op's binding recognises
   its operands this way, and a call into another file for each was a few
   percent of a one-element `a + b`. */
extern const void *mm_lua_tensor_mt;
mm_lua_box *mm_lua_test_box_named(lua_State *L, int idx);
static inline mm_lua_box *mm_lua_test_box(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return NULL;
  int ours = mm_lua_tensor_mt && lua_topointer(L, -1) == mm_lua_tensor_mt;
  lua_pop(L, 1);
  return ours ? (mm_lua_box *)lua_touserdata(L, idx) : mm_lua_test_box_named(L, idx);
}
/* Makes the table at idx the Tensor metatable that mm_lua_push sets and
   mm_lua_test_box recognises by address (the table must already be
   registered under MM_TENSOR_MT). */
void mm_lua_set_tensor_metatable(lua_State *L, int idx);
/* Drops the cached metatable address if it is this state's (called as the
   state closes). */
void mm_lua_forget_tensor_metatable(lua_State *L);

/* The tensor at idx (error if not a tensor, or freed). */
static inline mm_tensor *mm_lua_check(lua_State *L, int idx) {
  mm_lua_box *b = mm_lua_test_box(L, idx);
  if (!b) luaL_typeerror(L, idx, "Tensor");
  if (!b->t) luaL_argerror(L, idx, "tensor has been freed (used after :free() or <close>)");
  return b->t;
}
/* The tensor at idx, or NULL if the value is not a tensor. */
static inline mm_tensor *mm_lua_test(lua_State *L, int idx) {
  mm_lua_box *b = mm_lua_test_box(L, idx);
  if (b && !b->t) luaL_argerror(L, idx, "tensor has been freed (used after :free() or <close>)");
  return b ? b->t : NULL;
}
/* Tensor at idx, or a number turned into a 0-dim tensor of like's dtype
   (float32 when like is NULL).  Returns a NEW reference. */
mm_tensor *mm_lua_check_tensor_or_number(lua_State *L, int idx, const mm_tensor *like);
/* Pushes t as a new userdata, taking over the reference.  t == NULL raises
   mm_error() as a Lua error.  New storage is reported to Lua's collector as
   debt, so tensor bytes it cannot see still pace its cycles. */
int mm_lua_push(lua_State *L, mm_tensor *t);
/* Raises the runtime's last error. */
int mm_lua_error(lua_State *L);
/* A Lua dim (1-based, negative from the end) at idx -> 0-based, checked
   against ndim. */
int mm_lua_check_dim(lua_State *L, int idx, int ndim);
int mm_lua_opt_dim(lua_State *L, int idx, int ndim, int def);
/* An integer argument that must be a whole number (2.0 ok, 2.5 not). */
int64_t mm_lua_check_int(lua_State *L, int idx);
/* True if the value at idx is a table used as a sequence (a shape), false
   for an options table (non-empty, no array part). */
bool mm_lua_is_sequence(lua_State *L, int idx);
/* Shape from varargs or one table starting at idx; returns ndim.  Stops at
   the first table that is an options table (non-sequence) when varargs. */
int mm_lua_check_shape(lua_State *L, int idx, int64_t *shape, int *next_idx);
/* Reads the dtype field of an options table at idx (or def). */
mm_dtype mm_lua_opt_dtype(lua_State *L, int idx, mm_dtype def);
bool mm_lua_opt_bool(lua_State *L, int idx, const char *field, bool def);
/* Strict options: refuses any key of the options table at idx (when idx is
   an actual table argument) that is not in `known` (NULL-terminated),
   naming it and the accepted ones: "conv2d: unknown option 'bais'
   (accepted: ...)".  The _ex form also names `unsupported` keys (PyTorch
   options whose default is None) as "not supported yet". */
void mm_lua_check_options(lua_State *L, int idx, const char *where, const char *const *known);
void mm_lua_check_options_ex(lua_State *L, int idx, const char *where, const char *const *known,
                             const char *const *unsupported);
/* Refuses more than max arguments: "conv2d: expected at most 5 arguments, got 6". */
void mm_lua_check_arity(lua_State *L, const char *where, int max);
/* Adds functions to the module table and/or the Tensor methods table.
   The module table and methods table must be at module_idx / methods_idx. */
void mm_lua_register(lua_State *L, int module_idx, int methods_idx, const luaL_Reg *fns,
                     bool as_function, bool as_method);

#endif
