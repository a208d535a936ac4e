/* io_internal.h — what the io*.c files share (not installed): whole-file
 * reads, crash-safe writes, element conversion from file types. */
#ifndef MICROML_IO_INTERNAL_H
#define MICROML_IO_INTERNAL_H
#include <stdbool.h>
#include "io.h"

/* ---- helpers the io_*.c files share ------------------------------------------ */

/* A whole file read into memory the reader owns (never mapped: a mapped
 * file truncated by another process kills the reader with SIGBUS). */
typedef struct mm_io_file {
  const unsigned char *data;
  size_t len;
  void *heap;      /* free() target */
} mm_io_file;
int mm_io_open_file(const char *path, mm_io_file *f, const char *where);
void mm_io_close_file(mm_io_file *f);
/* 0 if `need` more bytes fit under the memory limit next to the live
 * tensors, else -1 with an error naming `where`, `name` and `what`. */
int mm_io_check_memory(size_t need, const char *where, const char *name, const char *what);

/* Crash-safe replacement of a file: write to a temporary sibling (a short,
 * random name created with O_EXCL|O_NOFOLLOW; see io.c), then commit
 * (fflush + fsync + rename + fsync of the directory) or abort (which
 * removes the temporary).  Opening also removes the temporaries that dead
 * processes left for the same file. */
typedef struct mm_io_writer {
  void *fp;            /* FILE * */
  char *tmp_path;
  char *path;
  const char *where;
} mm_io_writer;
int mm_io_writer_open(mm_io_writer *w, const char *path, const char *where);
int mm_io_write(mm_io_writer *w, const void *p, size_t n);
/* The tensor's elements in row-major order, little-endian. */
int mm_io_write_tensor_le(mm_io_writer *w, mm_tensor *t);
int mm_io_writer_commit(mm_io_writer *w);
void mm_io_writer_abort(mm_io_writer *w);

/* Little-endian element copy from raw bytes into a new contiguous tensor's
 * data, converting each element from the file's type. */
typedef enum {
  MM_IO_U8, MM_IO_I8, MM_IO_I16, MM_IO_I32, MM_IO_I64,
  MM_IO_F16, MM_IO_BF16, MM_IO_F32, MM_IO_F64, MM_IO_BOOL
} mm_io_type;
size_t mm_io_type_size(mm_io_type rt);
/* n elements from src (byte order: big_endian or little) into t (contiguous,
 * n elements, any dtype). */
void mm_io_convert(mm_tensor *t, const unsigned char *src, int64_t n, mm_io_type rt,
                    bool big_endian);

#endif
