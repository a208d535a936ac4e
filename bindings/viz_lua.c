/* viz_lua.c — (placeholder; its owner fills it in). */
#include "microml_lua.h"

void mm_lua_open_viz(lua_State *L, int module, int methods) { (void)L, (void)module, (void)methods; }
