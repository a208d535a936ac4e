/* fuzz_idx.c — libFuzzer harness for the IDX parser (plain and gzip).
 * The first byte picks the requested dtype, the rest is the file.
 * Build and run: see fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>

#include "microml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  mm_dtype dt = (mm_dtype)(data[0] % 3);
  mm_tensor *t = mm_idx_parse(data + 1, size - 1, dt, "<fuzz>");
  if (t) {
    /* Touch every element so a wrong size shows up under ASan. */
    volatile double sink = 0;
    for (int64_t i = 0, n = mm_numel(t); i < n; i++) sink += mm_get_flat(t, i);
    (void)sink;
    mm_tensor_release(t);
  }
  return 0;
}
