/* io.c — the I/O layer's shared machinery (whole-file reads, crash-safe
 * writes, raw element conversion) and two of its formats: IDX (MNIST,
 * plain or gzip) and CSV of numbers.  .npy lives in io_npy.c and
 * safetensors in io_safetensors.c.
 *
 * Parsers work on (bytes, length) and check every size against the bytes
 * present before allocating, so a hostile header cannot make them read out
 * of bounds or reserve memory the input does not justify.  That is also
 * why gzip input is inflated into a buffer that grows with what actually
 * comes out, rather than being sized from the header's claims. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "autograd.h"
#include "io_internal.h"

/* ---- whole files ------------------------------------------------------------ */

/* Whether `need` more bytes fit under the memory limit (mm_set_memory_limit
 * or MICROML_MAX_BYTES) next to the tensors already live.  Buffers that
 * the readers hold only while parsing (file bytes, inflated gzip data) are
 * checked against it before they are allocated, so a limit also bounds
 * what one read may take at its peak, not only the tensors it returns. */
int mm_io_check_memory(size_t need, const char *where, const char *name, const char *what) {
  mm_memory_stats st;
  mm_memory_stats_get(&st);
  if (st.bytes_limit && (need > st.bytes_limit || st.bytes_live > st.bytes_limit - need)) {
    mm_set_error("%s: '%s': %s needs %zu bytes, which with %llu bytes live exceeds the memory "
                 "limit of %llu bytes", where, name, what, need,
                 (unsigned long long)st.bytes_live, (unsigned long long)st.bytes_limit);
    return -1;
  }
  return 0;
}

/* The whole file is read into memory the reader owns.  It used to be
 * mmapped, which costs no copy but dies with SIGBUS when another process
 * truncates the file while it is parsed; owned bytes cannot change under
 * the parser.  The size from fstat only sizes the first buffer: the read
 * goes on to end of file, so a file that shrank between the stat and the
 * read is noticed (and reported) instead of trusted. */
int mm_io_open_file(const char *path, mm_io_file *f, const char *where) {
  memset(f, 0, sizeof *f);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    mm_set_error("%s: cannot open '%s': %s", where, path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    mm_set_error("%s: cannot stat '%s': %s", where, path, strerror(errno));
    close(fd);
    return -1;
  }
  if (S_ISDIR(st.st_mode)) {
    mm_set_error("%s: cannot read '%s': %s", where, path, strerror(EISDIR));
    close(fd);
    return -1;
  }
  size_t expect = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size : 0;
  if (mm_io_check_memory(expect, where, path, "reading the file") < 0) {
    close(fd);
    return -1;
  }
  /* One spare byte, so a file read to its stat size needs no second
   * buffer to find out that it ends there. */
  size_t cap = expect ? expect + 1 : 1 << 16, n = 0;
  unsigned char *buf = malloc(cap);
  for (;;) {
    if (!buf) {
      mm_set_error("%s: out of memory reading '%s'", where, path);
      close(fd);
      return -1;
    }
    if (n == cap) {
      if (mm_io_check_memory(cap * 2, where, path, "reading the file") < 0) {
        free(buf);
        close(fd);
        return -1;
      }
      unsigned char *nb = cap > ((size_t)1 << 40) ? NULL : realloc(buf, cap * 2);
      if (!nb) { free(buf); buf = NULL; continue; }
      buf = nb;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      mm_set_error("%s: cannot read '%s': %s", where, path, strerror(errno));
      free(buf);
      close(fd);
      return -1;
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (n < expect) {
    mm_set_error("%s: '%s' shrank while it was read (expected %zu bytes from its size, got %zu; "
                 "is another process writing it?)", where, path, expect, n);
    free(buf);
    return -1;
  }
  f->heap = buf;
  f->data = buf;
  f->len = n;
  return 0;
}

void mm_io_close_file(mm_io_file *f) {
  free(f->heap);
  memset(f, 0, sizeof *f);
}

/* ---- crash-safe writes --------------------------------------------------------- */

/* Temporaries live in the destination's directory (rename(2) must not
 * cross filesystems) under a short name of their own, never derived by
 * appending to the destination's name, which could push a long valid
 * name past NAME_MAX:
 *
 *     .<16 hex: FNV-1a of the file name>.mmtmp.<pid>.<8 hex random>
 *
 * The hash ties a temporary to the file it will replace, the pid lets a
 * later save of the same file tell whether its writer is still alive, and
 * the random part makes the name unpredictable.  The file is created with
 * O_CREAT|O_EXCL|O_NOFOLLOW, so a symlink or file planted at that name
 * makes the open fail (and a new name is tried) instead of being followed
 * or truncated. */
#define TMP_TAG ".mmtmp."

static uint64_t fnv1a(const char *s) {
  uint64_t h = 14695981039346656037ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static uint32_t random32(void) {
  uint32_t r;
  if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r) return r;
  /* No entropy yet (early boot): still unique per attempt, and O_EXCL,
   * not secrecy, is what keeps the open safe. */
  static _Atomic uint32_t counter;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint32_t)ts.tv_nsec ^ (uint32_t)getpid() << 16 ^ ++counter * 2654435761u;
}

/* Removes temporaries for `base` left in `dir` by writers that no longer
 * exist (killed with -9, power loss before the rename).  A temporary of a
 * live process, this one included, is kept: it may be a save in progress.
 * A recycled pid only keeps a stale file a while longer. */
static void remove_stale_temporaries(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  if (!d) return;
  size_t pl = strlen(prefix);
  int dfd = dirfd(d);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, prefix, pl) != 0) continue;
    char *end;
    errno = 0;
    long pid = strtol(e->d_name + pl, &end, 10);
    if (errno || pid <= 0 || *end != '.' || pid == (long)getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
    unlinkat(dfd, e->d_name, 0);
  }
  closedir(d);
}

int mm_io_writer_open(mm_io_writer *w, const char *path, const char *where) {
  memset(w, 0, sizeof *w);
  w->where = where;
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;   /* with its '/' */
  char *dir = slash ? strndup(path, slash == path ? 1 : dirlen - 1) : strdup(".");
  char prefix[64];
  snprintf(prefix, sizeof prefix, ".%016llx" TMP_TAG, (unsigned long long)fnv1a(base));
  size_t n = dirlen + sizeof prefix + 32;
  w->tmp_path = malloc(n);
  w->path = strdup(path);
  if (!w->tmp_path || !w->path || !dir) {
    free(w->tmp_path);
    free(w->path);
    free(dir);
    w->tmp_path = w->path = NULL;
    mm_set_error("%s: out of memory", where);
    return -1;
  }
  remove_stale_temporaries(dir, prefix);
  free(dir);
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
    snprintf(w->tmp_path, n, "%.*s%s%ld.%08x", (int)dirlen, path, prefix, (long)getpid(),
             (unsigned)random32());
    fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  FILE *fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (!fp) {
    mm_set_error("%s: cannot create a temporary file '%s' for '%s': %s", where, w->tmp_path, path,
                 strerror(errno));
    if (fd >= 0) {
      close(fd);
      unlink(w->tmp_path);
    }
    free(w->tmp_path);
    free(w->path);
    w->tmp_path = w->path = NULL;
    return -1;
  }
  w->fp = fp;
  return 0;
}

int mm_io_write(mm_io_writer *w, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, w->fp) != n) {
    mm_set_error("%s: cannot write '%s': %s", w->where, w->tmp_path, strerror(errno));
    return -1;
  }
  return 0;
}

static bool host_is_little_endian(void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

int mm_io_write_tensor_le(mm_io_writer *w, mm_tensor *t) {
  /* Detached first, so making a strided view contiguous records nothing. */
  mm_tensor *d = mm_detach(t);
  mm_tensor *c = d ? mm_contiguous(d) : NULL;
  mm_tensor_release(d);
  if (!c) return -1;
  size_t es = mm_dtype_size(c->dtype), n = (size_t)mm_numel(c) * es;
  const unsigned char *p = mm_data_ptr(c);
  int rc = 0;
  if (host_is_little_endian()) {
    rc = mm_io_write(w, p, n);
  } else {
    unsigned char chunk[4096];
    for (size_t off = 0; off < n && rc == 0;) {
      size_t k = n - off < sizeof chunk ? n - off : sizeof chunk;
      for (size_t i = 0; i < k; i += es)
        for (size_t b = 0; b < es; b++) chunk[i + b] = p[off + i + es - 1 - b];
      rc = mm_io_write(w, chunk, k);
      off += k;
    }
  }
  mm_tensor_release(c);
  return rc;
}

/* fsync of the directory makes the rename itself durable; filesystems that
 * refuse it lose nothing but that guarantee, so its failure is ignored. */
static void sync_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir) return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(dir);
}

static void writer_free(mm_io_writer *w) {
  free(w->tmp_path);
  free(w->path);
  w->tmp_path = w->path = NULL;
  w->fp = NULL;
}

int mm_io_writer_commit(mm_io_writer *w) {
  FILE *fp = w->fp;
  int err = 0;
  if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) err = errno;
  if (fclose(fp) != 0 && !err) err = errno;
  w->fp = NULL;
  if (err) {
    mm_set_error("%s: cannot write '%s': %s", w->where, w->tmp_path, strerror(err));
    unlink(w->tmp_path);
    writer_free(w);
    return -1;
  }
  if (rename(w->tmp_path, w->path) != 0) {
    mm_set_error("%s: cannot rename '%s' to '%s': %s", w->where, w->tmp_path, w->path,
                 strerror(errno));
    unlink(w->tmp_path);
    writer_free(w);
    return -1;
  }
  sync_parent_dir(w->path);
  writer_free(w);
  return 0;
}

void mm_io_writer_abort(mm_io_writer *w) {
  if (w->fp) fclose(w->fp);
  if (w->tmp_path) unlink(w->tmp_path);
  writer_free(w);
}

/* ---- raw element conversion ------------------------------------------------------ */

size_t mm_io_type_size(mm_io_type rt) {
  switch (rt) {
  case MM_IO_U8: case MM_IO_I8: case MM_IO_BOOL: return 1;
  case MM_IO_I16: case MM_IO_F16: case MM_IO_BF16: return 2;
  case MM_IO_I32: case MM_IO_F32: return 4;
  case MM_IO_I64: case MM_IO_F64: return 8;
  }
  return 1;
}

/* The k-byte unsigned integer at p in the given byte order. */
static inline uint64_t load_uint(const unsigned char *p, int k, bool big) {
  uint64_t v = 0;
  if (big)
    for (int i = 0; i < k; i++) v = v << 8 | p[i];
  else
    for (int i = k - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static float half_to_float(uint16_t h) {
  int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0) v = ldexpf((float)m, -24);                    /* zero / subnormal */
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = ldexpf((float)(m | 0x400), e - 25);
  return sign ? -v : v;
}

static float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static double bits_to_double(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/* Element i of the source, as a double (exact for every integer type here
 * except int64 beyond 2^53, which the int64 destination path avoids). */
static inline double raw_get(const unsigned char *p, mm_io_type rt, bool big) {
  switch (rt) {
  case MM_IO_U8: return p[0];
  case MM_IO_BOOL: return p[0] != 0;
  case MM_IO_I8: return (int8_t)p[0];
  case MM_IO_I16: return (int16_t)load_uint(p, 2, big);
  case MM_IO_I32: return (int32_t)load_uint(p, 4, big);
  case MM_IO_I64: return (double)(int64_t)load_uint(p, 8, big);
  case MM_IO_F16: return half_to_float((uint16_t)load_uint(p, 2, big));
  case MM_IO_BF16: return bits_to_float((uint32_t)load_uint(p, 2, big) << 16);
  case MM_IO_F32: return bits_to_float((uint32_t)load_uint(p, 4, big));
  case MM_IO_F64: return bits_to_double(load_uint(p, 8, big));
  }
  return 0;
}

void mm_io_convert(mm_tensor *t, const unsigned char *src, int64_t n, mm_io_type rt,
                    bool big_endian) {
  size_t k = mm_io_type_size(rt);
  void *dst = mm_data_ptr(t);
  bool native = big_endian != host_is_little_endian();
  if (native && ((rt == MM_IO_F32 && t->dtype == MM_FLOAT32) ||
                 (rt == MM_IO_F64 && t->dtype == MM_FLOAT64) ||
                 (rt == MM_IO_I64 && t->dtype == MM_INT64))) {
    memcpy(dst, src, (size_t)n * k);
    return;
  }
  switch (t->dtype) {
  case MM_FLOAT32: {
    float *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = (float)raw_get(src + (size_t)i * k, rt, big_endian);
    break;
  }
  case MM_FLOAT64: {
    double *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = raw_get(src + (size_t)i * k, rt, big_endian);
    break;
  }
  case MM_INT64: {
    int64_t *d = dst;
    if (rt == MM_IO_I64)   /* through double would round above 2^53 */
      for (int64_t i = 0; i < n; i++) d[i] = (int64_t)load_uint(src + (size_t)i * 8, 8, big_endian);
    else
      for (int64_t i = 0; i < n; i++) d[i] = (int64_t)raw_get(src + (size_t)i * k, rt, big_endian);
    break;
  }
  }
}

/* ---- gzip -------------------------------------------------------------------------- */

/* Inflates a gzip stream (possibly several concatenated members) until
 * `want` bytes have come out.  With `whole`, it then goes on to the end to
 * verify the checksum and to learn whether more data follows (*more).
 * The output buffer grows with what is produced, never from `want` —
 * unless the caller passes `into`, a buffer of `want` bytes it owns (and
 * keeps, success or not). */
static int gunzip(const unsigned char *in, size_t len, size_t want, bool whole, unsigned char *into,
                  unsigned char **out, size_t *outlen, bool *more, const char *where,
                  const char *name) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  *out = NULL;
  *outlen = 0;
  *more = false;
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
    mm_set_error("%s: '%s': cannot initialise zlib", where, name);
    return -1;
  }
  size_t cap = into ? want : 0, n = 0;
  unsigned char *buf = into, scratch[256];
  zs.next_in = (unsigned char *)in;
  zs.avail_in = len > UINT32_MAX ? UINT32_MAX : (uInt)len;
  size_t fed = zs.avail_in;
  int rc = Z_OK;
  bool ended = false;
  for (;;) {
    if (n < want && n == cap) {
      size_t nc = cap ? cap * 2 : 1 << 16;
      if (nc > want) nc = want;
      unsigned char *nb = realloc(buf, nc);
      if (!nb) {
        mm_set_error("%s: '%s': out of memory inflating gzip data", where, name);
        goto fail;
      }
      buf = nb;
      cap = nc;
    }
    if (n < want) {
      size_t room = cap - n;
      zs.next_out = buf + n;
      zs.avail_out = room > UINT32_MAX ? UINT32_MAX : (uInt)room;
    } else {
      if (!whole) break;
      zs.next_out = scratch;
      zs.avail_out = sizeof scratch;
    }
    uInt before_out = zs.avail_out;
    if (zs.avail_in == 0 && fed < len) {   /* inputs over 4 GiB come in slices */
      size_t rest = len - fed;
      zs.avail_in = rest > UINT32_MAX ? UINT32_MAX : (uInt)rest;
      fed += zs.avail_in;
    }
    rc = inflate(&zs, Z_NO_FLUSH);
    size_t produced = before_out - zs.avail_out;
    if (n < want) n += produced;
    else if (produced) { *more = true; break; }
    if (rc == Z_STREAM_END) {
      if (zs.avail_in == 0 && fed < len) {
        size_t rest = len - fed;
        zs.avail_in = rest > UINT32_MAX ? UINT32_MAX : (uInt)rest;
        fed += zs.avail_in;
      }
      /* Another gzip member may follow (as `cat a.gz b.gz` makes). */
      if (zs.avail_in == 0) { ended = true; break; }
      if (zs.avail_in >= 2 && zs.next_in[0] == 0x1f && zs.next_in[1] == 0x8b) {
        inflateReset(&zs);
        continue;
      }
      mm_set_error("%s: '%s': %zu bytes of trailing data after the gzip stream", where, name,
                   (size_t)zs.avail_in + (len - fed));
      goto fail;
    }
    if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR || rc == Z_MEM_ERROR) {
      mm_set_error("%s: '%s': corrupt gzip data (%s)", where, name, zs.msg ? zs.msg : "inflate failed");
      goto fail;
    }
    if (rc == Z_BUF_ERROR && produced == 0 && zs.avail_in == 0 && fed == len) break;  /* input ran out */
  }
  if (!ended && !*more && (whole || n < want)) {
    mm_set_error("%s: '%s': gzip data is truncated (the stream ends before its end marker)",
                 where, name);
    goto fail;
  }
  inflateEnd(&zs);
  *out = buf;
  *outlen = n;
  return 0;
fail:
  inflateEnd(&zs);
  if (!into) free(buf);
  return -1;
}

/* ---- IDX ----------------------------------------------------------------------------- */

static const struct { unsigned char code; const char *name; mm_io_type rt; } idx_types[] = {
  {0x08, "ubyte", MM_IO_U8}, {0x09, "sbyte", MM_IO_I8}, {0x0B, "short", MM_IO_I16},
  {0x0C, "int", MM_IO_I32}, {0x0D, "float", MM_IO_F32}, {0x0E, "double", MM_IO_F64},
};

/* Largest element count a tensor may have (mm_check_shape's limit). */
#define IO_MAX_NUMEL ((int64_t)1 << 50)

/* Validates the header in p[0..len) and computes shape and data size.
 * Returns the header length, or 0 after setting an error. */
static size_t idx_header(const unsigned char *p, size_t len, mm_dtype dt, const char *name,
                         int *ndim, int64_t *shape, int *ti, size_t *data_bytes) {
  if (len < 4) {
    mm_set_error("read_idx: '%s': truncated header (expected at least 4 bytes, got %zu)", name, len);
    return 0;
  }
  if (p[0] != 0 || p[1] != 0) {
    mm_set_error("read_idx: '%s': not an IDX file (expected magic bytes 00 00 <type> <ndim>, "
                 "got %02x %02x %02x %02x)", name, p[0], p[1], p[2], p[3]);
    return 0;
  }
  int t = -1;
  for (int i = 0; i < (int)(sizeof idx_types / sizeof idx_types[0]); i++)
    if (idx_types[i].code == p[2]) t = i;
  if (t < 0) {
    mm_set_error("read_idx: '%s': unsupported IDX data type 0x%02X (expected 0x08 ubyte, "
                 "0x09 sbyte, 0x0B short, 0x0C int, 0x0D float or 0x0E double)", name, p[2]);
    return 0;
  }
  if (dt == MM_INT64 && (idx_types[t].rt == MM_IO_F32 || idx_types[t].rt == MM_IO_F64)) {
    mm_set_error("read_idx: '%s': the file holds %s data (type 0x%02X), which cannot be read as "
                 "int64 (use dtype float32 or float64)", name, idx_types[t].name, p[2]);
    return 0;
  }
  int nd = p[3];
  if (nd < 1 || nd > MM_MAX_DIMS) {
    mm_set_error("read_idx: '%s': expected 1 to %d dimensions, got %d", name, MM_MAX_DIMS, nd);
    return 0;
  }
  size_t hdr = 4 + 4 * (size_t)nd;
  if (len < hdr) {
    mm_set_error("read_idx: '%s': truncated header (%d dimensions need %zu bytes, got %zu)", name,
                 nd, hdr, len);
    return 0;
  }
  int64_t numel = 1;
  bool overflow = false;
  for (int i = 0; i < nd; i++) {
    shape[i] = (int64_t)load_uint(p + 4 + 4 * i, 4, true);
    if (shape[i] && numel > IO_MAX_NUMEL / shape[i]) overflow = true;
    else numel *= shape[i];
  }
  if (overflow) {
    char b[200];
    mm_set_error("read_idx: '%s': the header's shape %s has more elements than a tensor can hold "
                 "(corrupt header?)", name, mm_shape_str(nd, shape, b, sizeof b));
    return 0;
  }
  *ndim = nd;
  *ti = t;
  *data_bytes = (size_t)numel * mm_io_type_size(idx_types[t].rt);
  return hdr;
}

static void idx_size_error(const char *name, int nd, const int64_t *shape, int ti, size_t data_bytes,
                           size_t present) {
  char b[200];
  mm_shape_str(nd, shape, b, sizeof b);
  if (present < data_bytes)
    mm_set_error("read_idx: '%s': truncated data (the header declares shape %s of %s = %zu bytes, "
                 "but only %zu bytes follow the header)", name, b, idx_types[ti].name, data_bytes,
                 present);
  else
    mm_set_error("read_idx: '%s': %zu bytes of trailing data after the %zu bytes that the header's "
                 "shape %s of %s declares", name, present - data_bytes, data_bytes, b,
                 idx_types[ti].name);
}

/* After inflating a gzipped IDX file: true (with the error set) unless the
 * stream held exactly the data_bytes the header declares.  With more output
 * still pending the exact excess is unknown, so the message names no count. */
static bool inflated_size_error(const char *name, int nd, const int64_t *shape, int ti,
                                size_t data_bytes, size_t hdr, size_t zn, bool more) {
  size_t got = zn > hdr ? zn - hdr : 0;
  if (got >= data_bytes && !more) return false;
  if (more) {
    char b[200];
    mm_set_error("read_idx: '%s': trailing data after the %zu bytes that the header's shape %s "
                 "of %s declares", name, data_bytes, mm_shape_str(nd, shape, b, sizeof b),
                 idx_types[ti].name);
  } else {
    idx_size_error(name, nd, shape, ti, data_bytes, got);
  }
  return true;
}

mm_tensor *mm_idx_parse(const void *buf, size_t len, mm_dtype dt, const char *name) {
  const unsigned char *p = buf;
  int nd, ti;
  int64_t shape[MM_MAX_DIMS];
  size_t data_bytes, hdr;
  unsigned char *z = NULL;
  if (!name) name = "<memory>";
  if (len >= 2 && p[0] == 0x1f && p[1] == 0x8b) {
    size_t zn;
    bool more;
    if (gunzip(p, len, 4 + 4 * MM_MAX_DIMS, false, NULL, &z, &zn, &more, "read_idx", name) < 0)
      return NULL;
    hdr = idx_header(z, zn, dt, name, &nd, shape, &ti, &data_bytes);
    free(z);
    if (!hdr) return NULL;
    /* Widening (bytes to float32, say): inflate straight into the tail of
     * the tensor and convert in place, front to back — element i is read
     * before it is written, and the write never reaches a later element
     * (they sit (n - i) * (width - raw width) bytes further on).  Loading
     * Fashion-MNIST's training images then peaks at the tensor (188 MB)
     * instead of tensor + inflated bytes (+47 MB).  Only for sizes deflate
     * could produce from this input (at most 1032:1), so a lying header
     * reserves no more than the input could justify, and the pages are
     * only touched as data actually comes out. */
    size_t rk = mm_io_type_size(idx_types[ti].rt), es = mm_dtype_size(dt);
    size_t numel = rk ? data_bytes / rk : 0;
    bool in_place = rk < es && data_bytes / 1032 <= len && numel * (es - rk) >= hdr;
    /* The memory limit is checked against the header's declared size
     * before anything is inflated: the result tensor plus, unless the data
     * is inflated into the tensor itself, the inflated bytes.  Otherwise a
     * small file that inflates to gigabytes would take them all before the
     * tensor allocation refused it.  gunzip never writes past the declared
     * size either (more output is an error), so peak memory stays at what
     * is checked here. */
    if (mm_io_check_memory(numel * es + (in_place ? 0 : hdr + data_bytes), "read_idx", name,
                           "inflating the gzip data into a tensor") < 0)
      return NULL;
    if (in_place) {
      mm_tensor *t = mm_tensor_empty(dt, nd, shape);
      if (!t) return NULL;
      unsigned char *tail = (unsigned char *)mm_data_ptr(t) + numel * (es - rk) - hdr;
      if (gunzip(p, len, hdr + data_bytes, true, tail, &z, &zn, &more, "read_idx", name) < 0) {
        mm_tensor_release(t);
        return NULL;
      }
      if (inflated_size_error(name, nd, shape, ti, data_bytes, hdr, zn, more)) {
        mm_tensor_release(t);
        return NULL;
      }
      mm_io_convert(t, tail + hdr, mm_numel(t), idx_types[ti].rt, true);
      return t;
    }
    if (gunzip(p, len, hdr + data_bytes, true, NULL, &z, &zn, &more, "read_idx", name) < 0)
      return NULL;
    if (inflated_size_error(name, nd, shape, ti, data_bytes, hdr, zn, more)) {
      free(z);
      return NULL;
    }
    p = z;
  } else {
    hdr = idx_header(p, len, dt, name, &nd, shape, &ti, &data_bytes);
    if (!hdr) return NULL;
    if (len - hdr != data_bytes) {
      idx_size_error(name, nd, shape, ti, data_bytes, len - hdr);
      return NULL;
    }
  }
  mm_tensor *t = mm_tensor_empty(dt, nd, shape);
  if (t) mm_io_convert(t, p + hdr, mm_numel(t), idx_types[ti].rt, true);
  free(z);
  return t;
}

mm_tensor *mm_read_idx(const char *path, mm_dtype dt) {
  mm_io_file f;
  if (mm_io_open_file(path, &f, "read_idx") < 0) return NULL;
  mm_tensor *t = mm_idx_parse(f.data, f.len, dt, path);
  mm_io_close_file(&f);
  return t;
}

/* ---- CSV ------------------------------------------------------------------------------- */

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

/* A field for an error message: at most 40 bytes, unprintables as '?'. */
static const char *field_excerpt(const char *s, size_t n, char *out, size_t cap) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 4 < cap && i < 40; i++)
    out[k++] = (s[i] >= 32 && s[i] < 127) ? s[i] : '?';
  if (n > 40 && k + 4 < cap) { memcpy(out + k, "...", 3); k += 3; }
  out[k] = 0;
  return out;
}

typedef struct {
  float *v;
  size_t n, cap;
} float_vec;

static int push_value(float_vec *fv, float x) {
  if (fv->n == fv->cap) {
    size_t nc = fv->cap ? fv->cap * 2 : 1024;
    float *nv = nc > ((size_t)1 << 48) ? NULL : realloc(fv->v, nc * sizeof *nv);
    if (!nv) return -1;
    fv->v = nv;
    fv->cap = nc;
  }
  fv->v[fv->n++] = x;
  return 0;
}

/* Parses one field [s, s+n) as a number into *out; 0 or an error. */
static int csv_number(const char *s, size_t n, const char *name, long line, long col, float *out) {
  char ex[64];
  while (n && is_blank(*s)) s++, n--;
  while (n && is_blank(s[n - 1])) n--;
  if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
    s++, n -= 2;
    while (n && is_blank(*s)) s++, n--;
    while (n && is_blank(s[n - 1])) n--;
  }
  if (n == 0) {
    mm_set_error("read_csv: '%s': line %ld, column %ld: empty field (expected a number)", name, line, col);
    return -1;
  }
  char tmp[128];
  if (n >= sizeof tmp) {
    mm_set_error("read_csv: '%s': line %ld, column %ld: expected a number, got a %zu-byte field '%s'",
                 name, line, col, n, field_excerpt(s, n, ex, sizeof ex));
    return -1;
  }
  memcpy(tmp, s, n);
  tmp[n] = 0;
  char *end;
  errno = 0;
  double d = strtod(tmp, &end);
  if (end != tmp + n) {
    mm_set_error("read_csv: '%s': line %ld, column %ld: expected a number, got '%s'", name, line, col,
                 field_excerpt(s, n, ex, sizeof ex));
    return -1;
  }
  float f = (float)d;
  if ((errno == ERANGE && fabs(d) > 1) || (isinf(f) && !isinf(d))) {
    mm_set_error("read_csv: '%s': line %ld, column %ld: %s is out of float32 range", name, line, col,
                 field_excerpt(s, n, ex, sizeof ex));
    return -1;
  }
  *out = f;
  return 0;
}

mm_tensor *mm_csv_parse(const char *buf, size_t len, const mm_csv_options *opt, const char *name) {
  char delim = opt && opt->delimiter ? opt->delimiter : ',';
  bool header = opt && opt->header;
  bool ws_delim = delim == ' ' || delim == '\t';   /* runs of blanks are one separator */
  if (!name) name = "<memory>";
  /* A delimiter must not be a character a number can contain: fields are
   * split before strtod sees them, so with 'e' as delimiter "1.5e3" would
   * silently become 1.5 and 3.  strtod reads digits, signs, '.', exponents
   * (e, p), hex (0x, a-f), inf/infinity and nan(chars): refusing every
   * letter and digit, '_' and the parentheses covers all of them. */
  unsigned char dc = (unsigned char)delim;
  if (delim == '"' || delim == '\n' || delim == '\r' || delim == '.' || delim == '-' ||
      delim == '+' || delim == '_' || delim == '(' || delim == ')' || (dc < 128 && isalnum(dc))) {
    mm_set_error("read_csv: delimiter '%c' can occur inside a number (digits, signs, '.', and "
                 "letters as in 1e5, 0x1p3, inf, nan), so it cannot separate numbers "
                 "(expected e.g. ',', ';' or a tab)", delim);
    return NULL;
  }
  float_vec fv = {0};
  long line = 0, first_row_line = 0;
  int64_t cols = -1, rows = 0;
  size_t pos = 0;
  while (pos < len) {
    size_t start = pos;
    const char *nl = memchr(buf + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - buf) : len;
    pos = nl ? end + 1 : len;
    line++;
    if (end > start && buf[end - 1] == '\r') end--;
    size_t k = start;
    while (k < end && is_blank(buf[k])) k++;
    if (k == end) continue;   /* blank line */
    if (header) { header = false; continue; }
    int64_t col = 0;
    size_t f = ws_delim ? k : start;
    for (;;) {
      size_t fe = f;
      while (fe < end && buf[fe] != delim && !(ws_delim && is_blank(buf[fe]))) fe++;
      float x;
      col++;
      if (csv_number(buf + f, fe - f, name, line, (long)col, &x) < 0) goto fail;
      if (cols >= 0 && col > cols) {
        mm_set_error("read_csv: '%s': line %ld has more than %lld fields, but line %ld has %lld "
                     "(ragged rows)", name, line, (long long)cols, first_row_line, (long long)cols);
        goto fail;
      }
      if (push_value(&fv, x) < 0) {
        mm_set_error("read_csv: '%s': out of memory at line %ld", name, line);
        goto fail;
      }
      if (ws_delim) {
        while (fe < end && is_blank(buf[fe])) fe++;
        if (fe == end) break;
        f = fe;
      } else {
        if (fe == end) break;
        f = fe + 1;
      }
    }
    if (cols < 0) {
      cols = col;
      first_row_line = line;
    } else if (col != cols) {
      mm_set_error("read_csv: '%s': line %ld has %lld fields, but line %ld has %lld (ragged rows)",
                   name, line, (long long)col, first_row_line, (long long)cols);
      goto fail;
    }
    rows++;
  }
  int64_t shape[2] = {rows, cols < 0 ? 0 : cols};
  mm_tensor *t = mm_tensor_empty(MM_FLOAT32, 2, shape);
  if (t && fv.n) memcpy(mm_data_ptr(t), fv.v, fv.n * sizeof(float));
  free(fv.v);
  return t;
fail:
  free(fv.v);
  return NULL;
}

mm_tensor *mm_read_csv(const char *path, const mm_csv_options *opt) {
  mm_io_file f;
  if (mm_io_open_file(path, &f, "read_csv") < 0) return NULL;
  mm_tensor *t = mm_csv_parse((const char *)f.data, f.len, opt, path);
  mm_io_close_file(&f);
  return t;
}
