/* families.h — the open functions of the binding files, one per family.
 * Included only by module.c (the module entry), which calls them in order;
 * the family files themselves include only lua_helpers.h. */
#ifndef MICROML_LUA_FAMILIES_H
#define MICROML_LUA_FAMILIES_H

#include <lua.h>

/* Each adds its functions to the module table at `module` and its methods to
   the Tensor methods table at `methods`. */
void mm_lua_open_tensor(lua_State *L, int module, int methods);   /* tensor_class.c */
void mm_lua_open_autograd(lua_State *L, int module, int methods);
void mm_lua_open_pointwise(lua_State *L, int module, int methods);   /* the op table */
void mm_lua_open_reduce(lua_State *L, int module, int methods);
void mm_lua_open_nnops(lua_State *L, int module, int methods);
void mm_lua_open_linalg(lua_State *L, int module, int methods);
void mm_lua_open_combine(lua_State *L, int module, int methods);
void mm_lua_open_io(lua_State *L, int module, int methods);
void mm_lua_open_optim(lua_State *L, int module, int methods);
void mm_lua_open_viz(lua_State *L, int module, int methods);

#endif
