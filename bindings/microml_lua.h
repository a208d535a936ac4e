/* microml_lua.h — shared by the binding files: the Tensor userdata and the
 * argument helpers.  The bindings are the only code that includes Lua.
 *
 * Conventions: a binding checks its arguments (luaL_* messages name the
 * argument and function), converts 1-based/negative Lua dims to the C API's
 * 0-based ones, calls the runtime, and raises mm_error() as a Lua error when
 * the runtime refuses. */
#ifndef MICROML_LUA_H
#define MICROML_LUA_H

#include <lauxlib.h>
#include <lua.h>

#include "microml.h"

#define MM_TENSOR_MT "microml.Tensor"

int luaopen_microml_core(lua_State *L);

/* The tensor at idx (error if not a tensor, or freed). */
mm_tensor *mm_lua_check(lua_State *L, int idx);
/* The tensor at idx, or NULL if the value is not a tensor. */
mm_tensor *mm_lua_test(lua_State *L, int idx);
/* Tensor at idx, or a number turned into a 0-dim tensor of like's dtype
   (float32 when like is NULL).  Returns a NEW reference. */
mm_tensor *mm_lua_check_tensor_or_number(lua_State *L, int idx, const mm_tensor *like);
/* Pushes t as a new userdata, taking over the reference.  t == NULL raises
   mm_error() as a Lua error. */
int mm_lua_push(lua_State *L, mm_tensor *t);
/* Raises the runtime's last error. */
int mm_lua_error(lua_State *L);
/* A Lua dim (1-based, negative from the end) at idx -> 0-based, checked
   against ndim. */
int mm_lua_check_dim(lua_State *L, int idx, int ndim);
int mm_lua_opt_dim(lua_State *L, int idx, int ndim, int def);
/* An integer argument that must be a whole number (2.0 ok, 2.5 not). */
int64_t mm_lua_check_int(lua_State *L, int idx);
/* Shape from varargs or one table starting at idx; returns ndim.  Stops at
   the first table that is an options table (non-sequence) when varargs. */
int mm_lua_check_shape(lua_State *L, int idx, int64_t *shape, int *next_idx);
/* Reads the dtype field of an options table at idx (or def). */
mm_dtype mm_lua_opt_dtype(lua_State *L, int idx, mm_dtype def);
bool mm_lua_opt_bool(lua_State *L, int idx, const char *field, bool def);
/* Adds functions to the module table and/or the Tensor methods table.
   The module table and methods table must be at module_idx / methods_idx. */
void mm_lua_register(lua_State *L, int module_idx, int methods_idx, const luaL_Reg *fns,
                     bool as_function, bool as_method);

/* Registration of the other binding files. */
void mm_lua_open_autograd(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_ops(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_pointwise(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_reduce(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_nnops(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_linalg(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_combine(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_io(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_optim(lua_State *L, int module_idx, int methods_idx);
void mm_lua_open_viz(lua_State *L, int module_idx, int methods_idx);

#endif
