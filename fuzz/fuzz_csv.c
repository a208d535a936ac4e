/* fuzz_csv.c — libFuzzer harness for the CSV parser.
 * The first byte picks the options (header on/off, one of four
 * delimiters, including the whitespace ones that merge runs); the rest is
 * the file.  Build and run: see fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>

#include "microml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static const char delims[4] = {',', ';', '\t', ' '};
  mm_csv_options opt = {delims[data[0] & 3], (data[0] & 4) != 0};
  mm_tensor *t = mm_csv_parse((const char *)data + 1, size - 1, &opt, "<fuzz>");
  if (t) {
    volatile double sink = 0;
    for (int64_t i = 0, n = mm_numel(t); i < n; i++) sink += mm_get_flat(t, i);
    (void)sink;
    mm_tensor_release(t);
  }
  return 0;
}
