/* module.h — the entry of the Lua module `microml.core` (module.c), for
 * programs that embed it (bindings/main.c). */
#ifndef MICROML_LUA_MODULE_H
#define MICROML_LUA_MODULE_H

#include <lua.h>

int luaopen_microml_core(lua_State *L);

#endif
