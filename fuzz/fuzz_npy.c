/* fuzz_npy.c — libFuzzer harness for the .npy parser.
 * Build and run: see fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>

#include "microml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mm_tensor *t = mm_npy_parse(data, size, "<fuzz>");
  if (t) {
    volatile double sink = 0;
    for (int64_t i = 0, n = mm_numel(t); i < n; i++) sink += mm_get_flat(t, i);
    (void)sink;
    mm_tensor_release(t);
  }
  return 0;
}
