/* ops_lua.c — bindings of the op families beyond elementwise arithmetic:
 * reductions, matmul, shape combinators, indexing and the fused NN ops. */
#include "microml_lua.h"

void mm_lua_open_ops(lua_State *L, int module, int methods) {
  (void)L, (void)module, (void)methods;
}
