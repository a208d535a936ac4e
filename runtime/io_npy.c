/* io_npy.c — NumPy's .npy format: reader (versions 1.0, 2.0, 3.0) and
 * writer (1.0).
 *
 * A .npy file is the magic "\x93NUMPY", a version, a header length, and a
 * Python dict literal such as
 *     {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and a newline, followed by the raw array.  The header
 * is parsed by a small scanner that accepts exactly the literal NumPy
 * writes (strings, True/False, a tuple of integers), not general Python.
 *
 * Dtype mapping (documented in io.h): f2/f4 -> float32, f8 -> float64,
 * i1/i2/i4/i8 and b1 -> int64, u1 -> float32 (u1 arrays are nearly always
 * images; reading them as float32 matches read_idx). */
#include <stdio.h>
#include <string.h>

#include "io_internal.h"

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAX_NUMEL ((int64_t)1 << 50)

typedef struct {
  const char *s;
  size_t n, i;
  const char *name;
} scanner;

static void skip_ws(scanner *sc) {
  while (sc->i < sc->n && (sc->s[sc->i] == ' ' || sc->s[sc->i] == '\t' || sc->s[sc->i] == '\n' ||
                           sc->s[sc->i] == '\r'))
    sc->i++;
}

static int expect(scanner *sc, char c, const char *what) {
  skip_ws(sc);
  if (sc->i >= sc->n || sc->s[sc->i] != c) {
    if (sc->i >= sc->n)
      mm_set_error("load_npy: '%s': malformed header (expected %s, got the end of the header)",
                   sc->name, what);
    else
      mm_set_error("load_npy: '%s': malformed header (expected %s at byte %zu, got '%c')", sc->name,
                   what, sc->i, sc->s[sc->i] >= 32 && sc->s[sc->i] < 127 ? sc->s[sc->i] : '?');
    return -1;
  }
  sc->i++;
  return 0;
}

/* A quoted Python string without escapes, into out (NUL-terminated). */
static int scan_string(scanner *sc, char *out, size_t cap) {
  skip_ws(sc);
  if (sc->i < sc->n && sc->s[sc->i] == '[') {
    mm_set_error("load_npy: '%s': structured dtypes (a list descr) are not supported; expected one "
                 "of <f4 <f8 <i8 <i4 |u1", sc->name);
    return -1;
  }
  if (sc->i >= sc->n || (sc->s[sc->i] != '\'' && sc->s[sc->i] != '"'))
    return expect(sc, '\'', "a quoted string");
  char q = sc->s[sc->i++];
  size_t k = 0;
  while (sc->i < sc->n && sc->s[sc->i] != q) {
    char c = sc->s[sc->i++];
    if (c == '\\' || c == '\n' || k + 1 >= cap) {
      mm_set_error("load_npy: '%s': malformed header (unsupported or overlong string)", sc->name);
      return -1;
    }
    out[k++] = c;
  }
  if (sc->i >= sc->n) {
    mm_set_error("load_npy: '%s': malformed header (unterminated string)", sc->name);
    return -1;
  }
  sc->i++;
  out[k] = 0;
  return 0;
}

static bool scan_word(scanner *sc, const char *w) {
  size_t k = strlen(w);
  skip_ws(sc);
  if (sc->n - sc->i >= k && memcmp(sc->s + sc->i, w, k) == 0) {
    sc->i += k;
    return true;
  }
  return false;
}

/* (d0, d1, ...) with an optional trailing comma; Python 2 'L' suffixes ok. */
static int scan_shape(scanner *sc, int *ndim, int64_t *shape) {
  if (expect(sc, '(', "'(' starting the shape tuple") < 0) return -1;
  int nd = 0;
  int64_t numel = 1;
  for (;;) {
    skip_ws(sc);
    if (sc->i < sc->n && sc->s[sc->i] == ')') { sc->i++; break; }
    if (sc->i >= sc->n || sc->s[sc->i] < '0' || sc->s[sc->i] > '9')
      return expect(sc, '0', "a non-negative integer in the shape");
    int64_t v = 0;
    while (sc->i < sc->n && sc->s[sc->i] >= '0' && sc->s[sc->i] <= '9') {
      if (v > NPY_MAX_NUMEL) {
        mm_set_error("load_npy: '%s': shape has a size too large for a tensor", sc->name);
        return -1;
      }
      v = v * 10 + (sc->s[sc->i++] - '0');
    }
    if (sc->i < sc->n && sc->s[sc->i] == 'L') sc->i++;
    if (nd == MM_MAX_DIMS) {
      mm_set_error("load_npy: '%s': expected at most %d dimensions, got more", sc->name, MM_MAX_DIMS);
      return -1;
    }
    shape[nd++] = v;
    if (v && numel > NPY_MAX_NUMEL / v) {
      char b[200];
      mm_set_error("load_npy: '%s': shape %s has more elements than a tensor can hold", sc->name,
                   mm_shape_str(nd, shape, b, sizeof b));
      return -1;
    }
    numel *= v;
    skip_ws(sc);
    if (sc->i < sc->n && sc->s[sc->i] == ',') { sc->i++; continue; }
    if (expect(sc, ')', "',' or ')' in the shape tuple") < 0) return -1;
    break;
  }
  *ndim = nd;
  return 0;
}

/* descr such as '<f4' -> raw type, byte order and tensor dtype. */
static int parse_descr(const char *d, const char *name, mm_io_type *rt, bool *big, mm_dtype *dt) {
  static const struct { const char *code; mm_io_type rt; mm_dtype dt; } types[] = {
    {"f2", MM_IO_F16, MM_FLOAT32}, {"f4", MM_IO_F32, MM_FLOAT32}, {"f8", MM_IO_F64, MM_FLOAT64},
    {"i1", MM_IO_I8, MM_INT64},    {"i2", MM_IO_I16, MM_INT64},   {"i4", MM_IO_I32, MM_INT64},
    {"i8", MM_IO_I64, MM_INT64},   {"u1", MM_IO_U8, MM_FLOAT32},  {"b1", MM_IO_BOOL, MM_INT64},
  };
  char order = d[0];
  if (order == '<' || order == '>' || order == '=' || order == '|') d++;
  else order = '=';
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    if (strcmp(d, types[i].code) != 0) continue;
    if (order == '|' && mm_io_type_size(types[i].rt) > 1) break;   /* '|' means "no byte order" */
    const uint16_t one = 1;
    bool host_big = *(const unsigned char *)&one == 0;
    *rt = types[i].rt;
    *dt = types[i].dt;
    *big = order == '>' || (order == '=' && host_big);
    return 0;
  }
  mm_set_error("load_npy: '%s': unsupported dtype '%s%s' (expected <f4, <f8, <i8, <i4, |u1 "
               "or one of f2 i1 i2 b1, in either byte order)", name, order == '=' ? "" : (char[]){order, 0}, d);
  return -1;
}

mm_tensor *mm_npy_parse(const void *buf, size_t len, const char *name) {
  const unsigned char *p = buf;
  if (!name) name = "<memory>";
  if (len < 10 || memcmp(p, NPY_MAGIC, 6) != 0) {
    mm_set_error("load_npy: '%s': not a .npy file (expected the magic \\x93NUMPY%s)", name,
                 len < 10 ? " and a 10-byte preamble" : "");
    return NULL;
  }
  int major = p[6], minor = p[7];
  size_t hlen, hstart;
  if (major == 1 && minor == 0) {
    hlen = (size_t)p[8] | (size_t)p[9] << 8;
    hstart = 10;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (len < 12) {
      mm_set_error("load_npy: '%s': truncated preamble (version %d.0 needs 12 bytes, got %zu)", name,
                   major, len);
      return NULL;
    }
    hlen = (size_t)p[8] | (size_t)p[9] << 8 | (size_t)p[10] << 16 | (size_t)p[11] << 24;
    hstart = 12;
  } else {
    mm_set_error("load_npy: '%s': unsupported .npy version %d.%d (expected 1.0, 2.0 or 3.0)", name,
                 major, minor);
    return NULL;
  }
  if (hlen > len - hstart) {
    mm_set_error("load_npy: '%s': truncated header (declared %zu bytes, only %zu present)", name, hlen,
                 len - hstart);
    return NULL;
  }
  scanner sc = {(const char *)p + hstart, hlen, 0, name};
  char descr[32] = "", key[32];
  bool fortran = false, have_descr = false, have_fortran = false, have_shape = false;
  int nd = 0;
  int64_t shape[MM_MAX_DIMS];
  if (expect(&sc, '{', "'{'") < 0) return NULL;
  for (;;) {
    skip_ws(&sc);
    if (sc.i < sc.n && sc.s[sc.i] == '}') { sc.i++; break; }
    if (scan_string(&sc, key, sizeof key) < 0) return NULL;
    if (expect(&sc, ':', "':' after a key") < 0) return NULL;
    bool *seen = !strcmp(key, "descr") ? &have_descr : !strcmp(key, "fortran_order") ? &have_fortran
               : !strcmp(key, "shape") ? &have_shape : NULL;
    if (!seen) {
      mm_set_error("load_npy: '%s': unexpected key '%s' in the header (expected descr, "
                   "fortran_order and shape)", name, key);
      return NULL;
    }
    if (*seen) {
      mm_set_error("load_npy: '%s': key '%s' appears twice in the header", name, key);
      return NULL;
    }
    *seen = true;
    if (seen == &have_descr) {
      if (scan_string(&sc, descr, sizeof descr) < 0) return NULL;
    } else if (seen == &have_fortran) {
      if (scan_word(&sc, "True")) fortran = true;
      else if (scan_word(&sc, "False")) fortran = false;
      else {
        mm_set_error("load_npy: '%s': malformed header (fortran_order must be True or False)", name);
        return NULL;
      }
    } else if (scan_shape(&sc, &nd, shape) < 0) {
      return NULL;
    }
    skip_ws(&sc);
    if (sc.i < sc.n && sc.s[sc.i] == ',') { sc.i++; continue; }
    if (expect(&sc, '}', "',' or '}' after a value") < 0) return NULL;
    break;
  }
  skip_ws(&sc);
  if (sc.i != sc.n) {
    mm_set_error("load_npy: '%s': malformed header (unexpected bytes after the closing '}')", name);
    return NULL;
  }
  if (!have_descr || !have_fortran || !have_shape) {
    mm_set_error("load_npy: '%s': header lacks '%s' (expected descr, fortran_order and shape)", name,
                 !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
    return NULL;
  }
  mm_io_type rt;
  bool big;
  mm_dtype dt;
  if (parse_descr(descr, name, &rt, &big, &dt) < 0) return NULL;
  if (fortran && nd >= 2) {
    char b[200];
    mm_set_error("load_npy: '%s': the array of shape %s is stored in Fortran (column-major) order; "
                 "only C order is supported (save it with np.ascontiguousarray)", name,
                 mm_shape_str(nd, shape, b, sizeof b));
    return NULL;
  }
  int64_t numel = 1;
  for (int i = 0; i < nd; i++) numel *= shape[i];
  size_t data = hstart + hlen, need = (size_t)numel * mm_io_type_size(rt);
  if (len - data != need) {
    char b[200];
    mm_shape_str(nd, shape, b, sizeof b);
    if (len - data < need)
      mm_set_error("load_npy: '%s': truncated data (shape %s of '%s' needs %zu bytes, got %zu)", name,
                   b, descr, need, len - data);
    else
      mm_set_error("load_npy: '%s': %zu bytes of trailing data after the %zu bytes that shape %s of "
                   "'%s' needs", name, len - data - need, need, b, descr);
    return NULL;
  }
  mm_tensor *t = mm_tensor_empty(dt, nd, shape);
  if (t) mm_io_convert(t, p + data, numel, rt, big);
  return t;
}

mm_tensor *mm_load_npy(const char *path) {
  mm_io_file f;
  if (mm_io_open_file(path, &f, "load_npy") < 0) return NULL;
  mm_tensor *t = mm_npy_parse(f.data, f.len, path);
  mm_io_close_file(&f);
  return t;
}

int mm_save_npy(const char *path, mm_tensor *t) {
  const char *descr = t->dtype == MM_FLOAT32 ? "<f4" : t->dtype == MM_FLOAT64 ? "<f8" : "<i8";
  char hdr[512];
  int k = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
  for (int i = 0; i < t->ndim; i++)
    k += snprintf(hdr + k, sizeof hdr - (size_t)k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
  k += snprintf(hdr + k, sizeof hdr - (size_t)k, "%s), }", t->ndim == 1 ? "," : "");
  /* NumPy pads the preamble + header to a multiple of 64 so the data is
   * aligned when mapped, and ends the header with a newline. */
  int total = (10 + k + 1 + 63) / 64 * 64;
  while (10 + k + 1 < total) hdr[k++] = ' ';
  hdr[k++] = '\n';
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(k & 0xff),
                           (unsigned char)(k >> 8)};
  mm_io_writer w;
  if (mm_io_writer_open(&w, path, "save_npy") < 0) return -1;
  if (mm_io_write(&w, pre, sizeof pre) < 0 || mm_io_write(&w, hdr, (size_t)k) < 0 ||
      mm_io_write_tensor_le(&w, t) < 0) {
    mm_io_writer_abort(&w);
    return -1;
  }
  return mm_io_writer_commit(&w);
}
