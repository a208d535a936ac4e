/* test_capi.c — the runtime used from C alone, through microml.h: a C
 * program builds tensors, broadcasts, backpropagates, sees errors as
 * NULL + message, and gets every byte back. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microml/microml.h>  /* as installed: make install, pkg-config */

#include "check.h"

int main(void) {
  mm_memory_stats st0;
  mm_memory_stats_get(&st0);
  {
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s4[1] = {4};
    mm_tensor *a = mm_tensor_full(MM_FLOAT64, 2, s23, 2.0);
    mm_tensor *b = mm_arange(MM_FLOAT64, 1, 4, 1);               /* [1, 2, 3] */
    a->requires_grad = true;
    b->requires_grad = true;
    mm_tensor *c = mm_binary(MM_OP_MUL, a, b);                   /* (2,3) * (3) */
    CHECK(c && c->ndim == 2 && c->shape[0] == 2 && c->shape[1] == 3, "broadcast shape");
    CHECK(c && mm_get_flat(c, 5) == 6.0, "broadcast value");
    mm_tensor *s = mm_sum(c, MM_ALL_DIMS, false);
    CHECK(s && mm_get_flat(s, 0) == 2 * 2 * (1 + 2 + 3), "sum");
    CHECK(mm_backward(s, NULL, false) == 0, "backward runs");
    CHECK(a->grad && mm_get_flat(a->grad, 4) == 2.0, "d sum(a*b) / da = b");
    CHECK(b->grad && b->grad->ndim == 1 && mm_get_flat(b->grad, 0) == 4.0,
          "broadcast input's gradient is summed to its shape");
    CHECK(mm_backward(s, NULL, false) < 0 && strstr(mm_error(), "second time"),
          "second backward through a freed graph is an error");

    mm_tensor *z4 = mm_tensor_zeros(MM_FLOAT64, 1, s4);
    mm_tensor *bad = mm_binary(MM_OP_ADD, b, z4);
    CHECK(bad == NULL && strstr(mm_error(), "(3) and (4) cannot broadcast"),
          "mismatch returns NULL and names both shapes");
    mm_tensor_release(z4);
    (void)s3;
    int64_t huge[2] = {1000000, 1000000};
    mm_tensor *h = mm_tensor_empty(MM_FLOAT32, 2, huge);
    CHECK(h == NULL && strstr(mm_error(), "4000000000000 bytes"), "impossible allocation is an error");

    mm_tensor *v = mm_transpose(a, 0, 1);
    CHECK(v && !mm_is_contiguous(v) && v->storage == a->storage, "transpose is a view");
    char *txt = mm_tensor_format(v);
    CHECK(txt && strstr(txt, "shape=[3, 2]"), "format");
    free(txt);
    mm_tensor_release(v);
    mm_tensor_release(s);
    mm_tensor_release(c);
    mm_tensor_release(a);
    mm_tensor_release(b);
  }
  mm_memory_stats st1;
  mm_memory_stats_get(&st1);
  CHECK(st1.bytes_live == st0.bytes_live, "every storage returned, error paths included");
  printf("test_capi: %d passed, %d failed\n", passed, failed);
  return failed != 0;
}
