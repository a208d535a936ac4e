/* fuzz_safetensors.c — libFuzzer harness for the safetensors parser
 * (header length, the strict JSON reader, offset and tiling checks).
 * Build and run: see fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "microml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mm_checkpoint ck;
  if (mm_safetensors_parse(data, size, &ck, "<fuzz>") == 0) {
    volatile size_t sink = 0;
    for (size_t i = 0; i < ck.ntensors; i++) {
      sink += strlen(ck.tensors[i].name);
      for (int64_t k = 0, n = mm_numel(ck.tensors[i].tensor); k < n; k++)
        sink += (size_t)mm_get_flat(ck.tensors[i].tensor, k);
    }
    for (size_t i = 0; i < ck.nmeta; i++) sink += strlen(ck.meta[i].key) + strlen(ck.meta[i].value);
    (void)sink;
    mm_checkpoint_free(&ck);
  }
  return 0;
}
