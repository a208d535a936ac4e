/* io.h — tensors in and out of files: IDX (the MNIST format), NumPy .npy,
 * CSV of numbers, and safetensors checkpoints.  Included by microml.h.
 *
 * Every format has an in-memory parser (bytes + length -> new tensor, or
 * NULL with mm_error() set) that never reads past `len` and never trusts a
 * size it has not checked against the bytes present; the fuzz harnesses in
 * fuzz/ call these directly.  The file functions read the file and
 * call the parser, so the two cannot drift apart.  `name` only labels error
 * messages (a path, or something like "<memory>").  Files are read into
 * owned memory (not mapped), so one truncated while it is read gives an
 * error, not SIGBUS; the memory limit applies to that buffer too.
 *
 * Writers never leave a torn file where a good one was: they write a
 * temporary `.<hash of the name>.mmtmp.<pid>.<random>` in the same
 * directory (created exclusively, never through a symlink), fsync it,
 * rename(2) it over `path` and fsync the directory.  A failed save removes
 * its temporary; one left by a killed process is removed by the next save
 * of the same file once that process is gone.
 *
 * Strictness, chosen once for all readers: data shorter than its header
 * declares is an error, and so are bytes after the declared data (a file
 * longer than its header says usually has a wrong header, and silently
 * ignoring the rest would hide that). */
#ifndef MICROML_IO_H
#define MICROML_IO_H

#include "tensor.h"

/* ---- IDX -----------------------------------------------------------------
 * Magic 0x00 0x00 <type> <ndim>, ndim big-endian uint32 sizes, then the
 * data big-endian.  Types: 0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32,
 * 0x0D float32, 0x0E float64.  gzip-compressed input (magic 1f 8b) is
 * inflated transparently.  Values are converted to `dt` unscaled (ubyte
 * pixels stay 0..255); float data cannot be read as int64. */
mm_tensor *mm_idx_parse(const void *buf, size_t len, mm_dtype dt, const char *name);
mm_tensor *mm_read_idx(const char *path, mm_dtype dt);

/* ---- NumPy .npy ----------------------------------------------------------
 * Versions 1.0, 2.0 and 3.0.  Dtypes read: f4 -> float32, f8 -> float64,
 * i8 and i4 -> int64, u1 -> float32 (images, like IDX), in either byte
 * order ('<', '>', '=', '|').  C order only: fortran_order True is refused
 * for 2 or more dimensions (for 0 or 1 the layouts are identical).
 * Writing produces version 1.0 with '<f4', '<f8' or '<i8'. */
mm_tensor *mm_npy_parse(const void *buf, size_t len, const char *name);
mm_tensor *mm_load_npy(const char *path);
int mm_save_npy(const char *path, mm_tensor *t);

/* ---- CSV of numbers --------------------------------------------------------
 * One row per line (\n or \r\n; blank lines skipped), fields separated by
 * `delimiter`, optional surrounding spaces and double quotes, numbers as
 * strtod reads them (nan and inf included).  Result: float32 [rows, cols].
 * Ragged rows, empty fields and non-numbers are errors naming the line and
 * column (both 1-based). */
typedef struct mm_csv_options {
  char delimiter;   /* ',' by default; never one a number can contain (digits, letters, . + - _ ( )) */
  bool header;      /* skip the first non-blank line */
} mm_csv_options;
mm_tensor *mm_csv_parse(const char *buf, size_t len, const mm_csv_options *opt, const char *name);
mm_tensor *mm_read_csv(const char *path, const mm_csv_options *opt);

/* ---- safetensors -----------------------------------------------------------
 * 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...,
 *    "__metadata__": {"key": "value"}}
 * then the raw little-endian bytes.  Written: F32, F64, I64, names sorted,
 * header padded with spaces to a multiple of 8.  Read: also F16 and BF16
 * (as float32) and I32, I16, I8, U8, BOOL (as int64), since other tools
 * write them.  Loading checks that the header fits the file, the JSON is
 * well-formed UTF-8 (a strict parser for the subset, no external library),
 * every size and offset is consistent, and the tensors tile the data area
 * exactly: no overlap, no hole, nothing past the end. */
typedef struct mm_named_tensor {
  char *name;
  mm_tensor *tensor;
} mm_named_tensor;

typedef struct mm_string_pair {
  char *key;
  char *value;
} mm_string_pair;

/* A checkpoint: named tensors plus string metadata.  What mm_safetensors_*
 * load fills is owned by the checkpoint (free it with mm_checkpoint_free);
 * what mm_safetensors_save reads is only borrowed. */
typedef struct mm_checkpoint {
  size_t ntensors;
  mm_named_tensor *tensors;    /* sorted by name (bytewise) after a load */
  size_t nmeta;
  mm_string_pair *meta;        /* sorted by key after a load */
} mm_checkpoint;

int mm_safetensors_parse(const void *buf, size_t len, mm_checkpoint *out, const char *name);
int mm_safetensors_load(const char *path, mm_checkpoint *out);
/* Names must be distinct, valid UTF-8, without NUL, and not "__metadata__". */
int mm_safetensors_save(const char *path, const mm_checkpoint *ck);
void mm_checkpoint_free(mm_checkpoint *ck);   /* safe on a zeroed checkpoint */

/* ---- checkpoint metadata (format 2) -----------------------------------------
 * The non-tensor part of a checkpoint (microml.checkpoint) is stored in
 * the safetensors metadata as JSON data, never as code:
 *
 *   value  := true | false | integer | string
 *           | {"f": "<float>"} | {"t": [[key, value], ...]} | {"tensor": "<name>"}
 *   key    := integer | string
 *
 * Integers are JSON digits covering all of int64 (no fraction, exponent or
 * leading zero).  Floats are strings, "%a" hex floats ("-0x1.8p+1",
 * "-0x0p+0") or "nan", "inf", "-inf", so every double round-trips bit for
 * bit (NaN's sign and payload excepted).  Strings are byte strings: the
 * writer escapes every byte outside printable ASCII as \u00XX, and the
 * reader accepts only printable ASCII and escapes up to \u00FF.  The top
 * value is a table; keys within a table are distinct (integer 7 and
 * string "7" are different keys); tables nest at most MM_META_MAX_DEPTH
 * deep.  Memory is linear in the metadata's length and so is time. */
#define MM_META_MAX_DEPTH 64
typedef enum {
  MM_META_BOOL, MM_META_INT, MM_META_FLOAT, MM_META_STRING, MM_META_TABLE, MM_META_TENSOR
} mm_meta_type;
typedef struct mm_meta_value {
  mm_meta_type type;
  union {
    bool b;
    int64_t i;
    double f;
    struct { char *s; size_t len; } str;     /* STRING and TENSOR (its name); NUL-terminated too */
    struct { struct mm_meta_value *items; size_t n; } table;   /* n pairs: items[2k] key, [2k+1] value */
  } u;
} mm_meta_value;
/* Parses metadata text into *out (free with mm_meta_value_free, also safe
 * after a failure).  0, or -1 with an error naming `name` and the byte. */
int mm_checkpoint_meta_parse(const void *buf, size_t len, mm_meta_value *out, const char *name);
void mm_meta_value_free(mm_meta_value *v);

#endif
