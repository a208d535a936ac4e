/* fuzz_checkpoint_meta.c — libFuzzer harness for the checkpoint metadata
 * reader (format 2: JSON data, runtime/io_ckmeta.c).  Whatever the bytes,
 * the reader must return a tree or an error, within the depth limit, and
 * free everything.  Build and run: see fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "microml.h"

static size_t walk(const mm_meta_value *v, int depth) {
  size_t n = (size_t)v->type;
  if (depth > MM_META_MAX_DEPTH + 1) __builtin_trap();   /* the limit must hold */
  switch (v->type) {
  case MM_META_STRING:
  case MM_META_TENSOR:
    for (size_t i = 0; i < v->u.str.len; i++) n += (unsigned char)v->u.str.s[i];
    if (v->u.str.s[v->u.str.len] != 0) __builtin_trap();   /* NUL-terminated too */
    break;
  case MM_META_TABLE:
    for (size_t i = 0; i < 2 * v->u.table.n; i++) {
      if (i % 2 == 0 && v->u.table.items[i].type != MM_META_INT &&
          v->u.table.items[i].type != MM_META_STRING)
        __builtin_trap();   /* keys are integers or strings */
      n += walk(&v->u.table.items[i], depth + 1);
    }
    break;
  default:
    break;
  }
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mm_meta_value v;
  if (mm_checkpoint_meta_parse(data, size, &v, "<fuzz>") == 0) {
    volatile size_t sink = walk(&v, 0);
    (void)sink;
  }
  mm_meta_value_free(&v);
  return 0;
}
