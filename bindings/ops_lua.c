/* ops_lua.c — registers the op families, one binding file each. */
#include "microml_lua.h"

void mm_lua_open_ops(lua_State *L, int module, int methods) {
  mm_lua_open_pointwise(L, module, methods);
  mm_lua_open_reduce(L, module, methods);
  mm_lua_open_nnops(L, module, methods);
  mm_lua_open_linalg(L, module, methods);
  mm_lua_open_combine(L, module, methods);
  mm_lua_open_io(L, module, methods);
  mm_lua_open_optim(L, module, methods);
  mm_lua_open_viz(L, module, methods);
}
