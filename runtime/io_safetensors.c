/* io_safetensors.c — checkpoints in the safetensors format, with the
 * strict little JSON reader and writer the header needs.
 *
 * Layout: u64 little-endian N, N bytes of JSON, then the tensor bytes.
 * The JSON maps each tensor name to {"dtype", "shape", "data_offsets"}
 * (offsets relative to the start of the data area) and may hold a
 * "__metadata__" object of string values.
 *
 * Loading treats the file as hostile: the header length is checked against
 * the file, the JSON parser is recursive descent with a depth limit, checks
 * UTF-8 and escapes, and refuses duplicate keys, and the tensors must tile
 * the data area exactly (no overlap, no hole, nothing past the end — the
 * format's own rule, which also keeps a file from hiding a second payload).
 * Nothing is allocated from a size the bytes present do not justify. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_internal.h"

#define ST_MAX_HEADER ((size_t)100 << 20)   /* the reference implementation's limit */
#define JSON_MAX_DEPTH 64
#define ST_MAX_NUMEL ((int64_t)1 << 50)

static const struct { const char *name; mm_io_type rt; mm_dtype dt; } st_types[] = {
  {"F32", MM_IO_F32, MM_FLOAT32}, {"F64", MM_IO_F64, MM_FLOAT64}, {"I64", MM_IO_I64, MM_INT64},
  {"F16", MM_IO_F16, MM_FLOAT32}, {"BF16", MM_IO_BF16, MM_FLOAT32}, {"I32", MM_IO_I32, MM_INT64},
  {"I16", MM_IO_I16, MM_INT64},  {"I8", MM_IO_I8, MM_INT64},       {"U8", MM_IO_U8, MM_INT64},
  {"BOOL", MM_IO_BOOL, MM_INT64},
};
#define NTYPES (sizeof st_types / sizeof st_types[0])

/* ---- UTF-8 ---------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0.
 * Rejects overlong forms, surrogates and code points past U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  size_t k;
  unsigned cp, min;
  if ((c & 0xE0) == 0xC0) k = 2, cp = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0) k = 3, cp = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0) k = 4, cp = c & 0x07, min = 0x10000;
  else return 0;
  if (n < k) return 0;
  for (size_t i = 1; i < k; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return k;
}

static bool utf8_valid(const char *s) {
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    size_t k = utf8_seq((const unsigned char *)s + i, n - i);
    if (!k) return false;
    i += k;
  }
  return true;
}

/* ---- JSON reader ------------------------------------------------------------------ */

typedef struct {
  const unsigned char *s;
  size_t n, i;
  const char *name;
  int depth;
} json;

static void jws(json *j) {
  while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' ||
                         j->s[j->i] == '\r'))
    j->i++;
}

static int jfail(json *j, const char *what) {
  if (j->i >= j->n)
    mm_set_error("load: '%s': malformed header JSON (expected %s, got the end of the header)",
                 j->name, what);
  else
    mm_set_error("load: '%s': malformed header JSON at byte %zu (expected %s, got '%c')", j->name,
                 j->i, what, j->s[j->i] >= 32 && j->s[j->i] < 127 ? j->s[j->i] : '?');
  return -1;
}

static bool jpeek(json *j, char c) {
  jws(j);
  return j->i < j->n && j->s[j->i] == (unsigned char)c;
}

static int jexpect(json *j, char c, const char *what) {
  if (!jpeek(j, c)) return jfail(j, what);
  j->i++;
  return 0;
}

static int hex4(json *j, unsigned *v) {
  *v = 0;
  for (int k = 0; k < 4; k++) {
    if (j->i >= j->n) return jfail(j, "4 hex digits after \\u");
    unsigned char c = j->s[j->i];
    unsigned d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
               : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 16;
    if (d == 16) return jfail(j, "a hex digit");
    *v = *v << 4 | d;
    j->i++;
  }
  return 0;
}

/* A JSON string, unescaped into a malloc'd NUL-terminated UTF-8 string
 * (out may be NULL to only validate).  The unescaped form is never longer
 * than the escaped one, so the input length bounds the allocation. */
static int jstring(json *j, char **out) {
  if (out) *out = NULL;
  if (jexpect(j, '"', "a string") < 0) return -1;
  size_t start = j->i;
  while (j->i < j->n && j->s[j->i] != '"') j->i += j->s[j->i] == '\\' ? 2 : 1;
  if (j->i >= j->n) {
    mm_set_error("load: '%s': malformed header JSON (unterminated string starting at byte %zu)",
                 j->name, start - 1);
    return -1;
  }
  size_t end = j->i;
  char *buf = malloc(end - start + 1), *o = buf;
  if (!buf) {
    mm_set_error("load: '%s': out of memory parsing the header", j->name);
    return -1;
  }
  j->i = start;
  while (j->i < end) {
    unsigned char c = j->s[j->i];
    if (c < 0x20) {
      free(buf);
      return jfail(j, "no raw control character in a string");
    }
    if (c != '\\') {
      size_t k = utf8_seq(j->s + j->i, end - j->i);
      if (!k) {
        free(buf);
        mm_set_error("load: '%s': malformed header JSON at byte %zu (invalid UTF-8)", j->name, j->i);
        return -1;
      }
      memcpy(o, j->s + j->i, k);
      o += k;
      j->i += k;
      continue;
    }
    j->i++;
    char e = (char)j->s[j->i++];
    const char *simple = strchr("\"\\/bfnrt", e);
    if (simple && e) {
      *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      continue;
    }
    if (e != 'u') {
      j->i--;
      free(buf);
      return jfail(j, "a valid escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
    }
    unsigned cp;
    if (hex4(j, &cp) < 0) { free(buf); return -1; }
    if (cp >= 0xD800 && cp <= 0xDBFF) {   /* a high surrogate needs its low half */
      unsigned lo;
      if (j->i + 2 > end || j->s[j->i] != '\\' || j->s[j->i + 1] != 'u') {
        free(buf);
        return jfail(j, "a low surrogate \\uDC00-\\uDFFF after a high surrogate");
      }
      j->i += 2;
      if (hex4(j, &lo) < 0) { free(buf); return -1; }
      if (lo < 0xDC00 || lo > 0xDFFF) {
        free(buf);
        return jfail(j, "a low surrogate \\uDC00-\\uDFFF after a high surrogate");
      }
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      free(buf);
      return jfail(j, "no lone low surrogate");
    }
    if (cp == 0) {
      free(buf);
      mm_set_error("load: '%s': header JSON string contains \\u0000, which names cannot hold", j->name);
      return -1;
    }
    /* encode cp as UTF-8: at most 4 bytes, never more than the 6 read */
    if (cp < 0x80) *o++ = (char)cp;
    else if (cp < 0x800) *o++ = (char)(0xC0 | cp >> 6), *o++ = (char)(0x80 | (cp & 0x3F));
    else if (cp < 0x10000)
      *o++ = (char)(0xE0 | cp >> 12), *o++ = (char)(0x80 | (cp >> 6 & 0x3F)),
      *o++ = (char)(0x80 | (cp & 0x3F));
    else
      *o++ = (char)(0xF0 | cp >> 18), *o++ = (char)(0x80 | (cp >> 12 & 0x3F)),
      *o++ = (char)(0x80 | (cp >> 6 & 0x3F)), *o++ = (char)(0x80 | (cp & 0x3F));
  }
  *o = 0;
  j->i = end + 1;
  if (out) *out = buf;
  else free(buf);
  return 0;
}

/* A JSON number; *is_int tells whether it was written as an integer that
 * fits int64 (then *v holds it). */
static int jnumber(json *j, int64_t *v, bool *is_int) {
  jws(j);
  size_t start = j->i;
  bool neg = false, overflow = false;
  *v = 0;
  *is_int = true;
  if (j->i < j->n && j->s[j->i] == '-') neg = true, j->i++;
  if (j->i >= j->n || j->s[j->i] < '0' || j->s[j->i] > '9') { j->i = start; return jfail(j, "a value"); }
  if (j->s[j->i] == '0' && j->i + 1 < j->n && j->s[j->i + 1] >= '0' && j->s[j->i + 1] <= '9')
    return jfail(j, "no leading zero in a number");
  uint64_t u = 0;
  while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9') {
    unsigned d = j->s[j->i++] - '0';
    if (u > (UINT64_MAX - d) / 10) overflow = true;
    else u = u * 10 + d;
  }
  if (j->i < j->n && j->s[j->i] == '.') {
    j->i++;
    *is_int = false;
    if (j->i >= j->n || j->s[j->i] < '0' || j->s[j->i] > '9') return jfail(j, "a digit after '.'");
    while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9') j->i++;
  }
  if (j->i < j->n && (j->s[j->i] == 'e' || j->s[j->i] == 'E')) {
    j->i++;
    *is_int = false;
    if (j->i < j->n && (j->s[j->i] == '+' || j->s[j->i] == '-')) j->i++;
    if (j->i >= j->n || j->s[j->i] < '0' || j->s[j->i] > '9') return jfail(j, "a digit in the exponent");
    while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9') j->i++;
  }
  if (overflow || u > (uint64_t)INT64_MAX) *is_int = false;
  else *v = neg ? -(int64_t)u : (int64_t)u;
  return 0;
}

static int jskip(json *j);

static int jskip_container(json *j, char open, char close) {
  if (++j->depth > JSON_MAX_DEPTH) {
    mm_set_error("load: '%s': header JSON nests deeper than %d levels", j->name, JSON_MAX_DEPTH);
    return -1;
  }
  j->i++;   /* the opening bracket */
  if (jpeek(j, close)) { j->i++; j->depth--; return 0; }
  for (;;) {
    if (open == '{') {
      if (jstring(j, NULL) < 0 || jexpect(j, ':', "':'") < 0) return -1;
    }
    if (jskip(j) < 0) return -1;
    if (jpeek(j, ',')) { j->i++; continue; }
    if (jexpect(j, close, open == '{' ? "',' or '}'" : "',' or ']'") < 0) return -1;
    j->depth--;
    return 0;
  }
}

/* Any JSON value, validated and skipped (unknown fields in a tensor entry). */
static int jskip(json *j) {
  jws(j);
  if (j->i >= j->n) return jfail(j, "a value");
  switch (j->s[j->i]) {
  case '{': return jskip_container(j, '{', '}');
  case '[': return jskip_container(j, '[', ']');
  case '"': return jstring(j, NULL);
  case 't': if (j->n - j->i >= 4 && !memcmp(j->s + j->i, "true", 4)) { j->i += 4; return 0; } break;
  case 'f': if (j->n - j->i >= 5 && !memcmp(j->s + j->i, "false", 5)) { j->i += 5; return 0; } break;
  case 'n': if (j->n - j->i >= 4 && !memcmp(j->s + j->i, "null", 4)) { j->i += 4; return 0; } break;
  default: {
    int64_t v;
    bool is_int;
    return jnumber(j, &v, &is_int);
  }
  }
  return jfail(j, "a value");
}

/* [n, n, ...] of non-negative integers, at most max of them. */
static int jint_array(json *j, int64_t *out, int max, int *count, const char *tname, const char *field) {
  if (jexpect(j, '[', "'[' starting an integer array") < 0) return -1;
  int k = 0;
  if (jpeek(j, ']')) { j->i++; *count = 0; return 0; }
  for (;;) {
    int64_t v;
    bool is_int;
    size_t at = j->i;
    if (jnumber(j, &v, &is_int) < 0) return -1;
    if (!is_int || v < 0) {
      mm_set_error("load: '%s': tensor '%s': %s must hold integers >= 0, got '%.*s' at byte %zu",
                   j->name, tname, field, (int)(j->i - at > 40 ? 40 : j->i - at), j->s + at, at);
      return -1;
    }
    if (k == max) {
      mm_set_error("load: '%s': tensor '%s': %s has more than %d entries", j->name, tname, field, max);
      return -1;
    }
    out[k++] = v;
    if (jpeek(j, ',')) { j->i++; continue; }
    if (jexpect(j, ']', "',' or ']'") < 0) return -1;
    *count = k;
    return 0;
  }
}

/* ---- header model ------------------------------------------------------------------- */

typedef struct {
  char *name;
  int type;                 /* index into st_types */
  int ndim;
  int64_t shape[MM_MAX_DIMS];
  int64_t begin, end;
} st_entry;

typedef struct {
  st_entry *e;
  size_t n, cap;
  mm_string_pair *meta;
  size_t nmeta, metacap;
} st_header;

static void header_free(st_header *h) {
  for (size_t i = 0; i < h->n; i++) free(h->e[i].name);
  for (size_t i = 0; i < h->nmeta; i++) free(h->meta[i].key), free(h->meta[i].value);
  free(h->e);
  free(h->meta);
  memset(h, 0, sizeof *h);
}

static int grow(void **p, size_t *cap, size_t n, size_t elem) {
  if (n < *cap) return 0;
  size_t nc = *cap ? *cap * 2 : 16;
  void *np = realloc(*p, nc * elem);
  if (!np) return -1;
  *p = np;
  *cap = nc;
  return 0;
}

static int parse_metadata(json *j, st_header *h) {
  jws(j);
  if (j->n - j->i >= 4 && !memcmp(j->s + j->i, "null", 4)) { j->i += 4; return 0; }
  if (jexpect(j, '{', "'{' starting __metadata__") < 0) return -1;
  if (jpeek(j, '}')) { j->i++; return 0; }
  for (;;) {
    char *k = NULL, *v = NULL;
    if (jstring(j, &k) < 0) return -1;
    if (jexpect(j, ':', "':'") < 0) { free(k); return -1; }
    if (!jpeek(j, '"')) {
      mm_set_error("load: '%s': __metadata__ value for key '%s' must be a string", j->name, k);
      free(k);
      return -1;
    }
    if (jstring(j, &v) < 0) { free(k); return -1; }
    for (size_t i = 0; i < h->nmeta; i++)
      if (!strcmp(h->meta[i].key, k)) {
        mm_set_error("load: '%s': __metadata__ key '%s' appears twice", j->name, k);
        free(k), free(v);
        return -1;
      }
    if (grow((void **)&h->meta, &h->metacap, h->nmeta, sizeof *h->meta) < 0) {
      free(k), free(v);
      mm_set_error("load: '%s': out of memory parsing the header", j->name);
      return -1;
    }
    h->meta[h->nmeta].key = k;
    h->meta[h->nmeta++].value = v;
    if (jpeek(j, ',')) { j->i++; continue; }
    return jexpect(j, '}', "',' or '}'");
  }
}

static int parse_entry(json *j, st_entry *e) {
  bool have_dtype = false, have_shape = false, have_off = false;
  if (jexpect(j, '{', "'{' starting a tensor entry") < 0) return -1;
  if (!jpeek(j, '}')) {
    for (;;) {
      char *k;
      if (jstring(j, &k) < 0) return -1;
      if (jexpect(j, ':', "':'") < 0) { free(k); return -1; }
      bool *seen = !strcmp(k, "dtype") ? &have_dtype : !strcmp(k, "shape") ? &have_shape
                 : !strcmp(k, "data_offsets") ? &have_off : NULL;
      if (seen && *seen) {
        mm_set_error("load: '%s': tensor '%s': field '%s' appears twice", j->name, e->name, k);
        free(k);
        return -1;
      }
      free(k);
      int rc = 0;
      if (!seen) {
        rc = jskip(j);   /* fields other tools may add */
      } else if (seen == &have_dtype) {
        char *d;
        if (!jpeek(j, '"')) return jfail(j, "a dtype string");
        if (jstring(j, &d) < 0) return -1;
        e->type = -1;
        for (size_t t = 0; t < NTYPES; t++)
          if (!strcmp(d, st_types[t].name)) e->type = (int)t;
        if (e->type < 0) {
          mm_set_error("load: '%s': tensor '%s' has unsupported dtype '%.20s' (expected F32, F64, "
                       "I64, F16, BF16, I32, I16, I8, U8 or BOOL)", j->name, e->name, d);
          free(d);
          return -1;
        }
        free(d);
      } else if (seen == &have_shape) {
        rc = jint_array(j, e->shape, MM_MAX_DIMS, &e->ndim, e->name, "shape");
      } else {
        int64_t off[2];
        int cnt;
        rc = jint_array(j, off, 2, &cnt, e->name, "data_offsets");
        if (rc == 0 && cnt != 2) {
          mm_set_error("load: '%s': tensor '%s': data_offsets must be [begin, end], got %d numbers",
                       j->name, e->name, cnt);
          return -1;
        }
        e->begin = off[0];
        e->end = off[1];
      }
      if (rc < 0) return -1;
      if (seen) *seen = true;
      if (jpeek(j, ',')) { j->i++; continue; }
      if (jexpect(j, '}', "',' or '}'") < 0) return -1;
      break;
    }
  } else {
    j->i++;
  }
  if (!have_dtype || !have_shape || !have_off) {
    mm_set_error("load: '%s': tensor '%s' lacks '%s' (expected dtype, shape and data_offsets)",
                 j->name, e->name, !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    return -1;
  }
  return 0;
}

static int parse_header(json *j, st_header *h) {
  bool have_meta = false;
  if (jexpect(j, '{', "'{' starting the header") < 0) return -1;
  if (jpeek(j, '}')) {
    j->i++;
  } else {
    for (;;) {
      char *k;
      if (jstring(j, &k) < 0) return -1;
      if (jexpect(j, ':', "':'") < 0) { free(k); return -1; }
      if (!strcmp(k, "__metadata__")) {
        free(k);
        if (have_meta) {
          mm_set_error("load: '%s': __metadata__ appears twice", j->name);
          return -1;
        }
        have_meta = true;
        if (parse_metadata(j, h) < 0) return -1;
      } else {
        if (grow((void **)&h->e, &h->cap, h->n, sizeof *h->e) < 0) {
          free(k);
          mm_set_error("load: '%s': out of memory parsing the header", j->name);
          return -1;
        }
        st_entry *e = &h->e[h->n++];
        memset(e, 0, sizeof *e);
        e->name = k;
        if (parse_entry(j, e) < 0) return -1;
      }
      if (jpeek(j, ',')) { j->i++; continue; }
      if (jexpect(j, '}', "',' or '}'") < 0) return -1;
      break;
    }
  }
  jws(j);
  if (j->i != j->n) return jfail(j, "only spaces after the header object");
  return 0;
}

static int cmp_entry_name(const void *a, const void *b) {
  return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}
static int cmp_entry_begin_ptr(const void *a, const void *b) {
  const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : x->end < y->end ? -1 : x->end > y->end;
}
static int cmp_pair(const void *a, const void *b) {
  return strcmp(((const mm_string_pair *)a)->key, ((const mm_string_pair *)b)->key);
}

/* Sizes, offsets and tiling; names are already sorted. */
static int check_layout(st_header *h, size_t data_len, const char *name) {
  for (size_t i = 0; i + 1 < h->n; i++)
    if (!strcmp(h->e[i].name, h->e[i + 1].name)) {
      mm_set_error("load: '%s': tensor name '%s' appears twice", name, h->e[i].name);
      return -1;
    }
  for (size_t i = 0; i < h->n; i++) {
    st_entry *e = &h->e[i];
    int64_t numel = 1;
    bool huge = false;
    for (int d = 0; d < e->ndim; d++) {
      if (e->shape[d] && numel > ST_MAX_NUMEL / e->shape[d]) huge = true;
      else numel *= e->shape[d];
    }
    char b[200];
    mm_shape_str(e->ndim, e->shape, b, sizeof b);
    if (huge) {
      mm_set_error("load: '%s': tensor '%s' has shape %s, more elements than a tensor can hold",
                   name, e->name, b);
      return -1;
    }
    if (e->begin > e->end || (uint64_t)e->end > data_len) {
      mm_set_error("load: '%s': tensor '%s' has data_offsets [%lld, %lld] outside the data area of "
                   "%zu bytes", name, e->name, (long long)e->begin, (long long)e->end, data_len);
      return -1;
    }
    int64_t need = numel * (int64_t)mm_io_type_size(st_types[e->type].rt);
    if (e->end - e->begin != need) {
      mm_set_error("load: '%s': tensor '%s' of shape %s and dtype %s needs %lld bytes, but its "
                   "data_offsets [%lld, %lld] span %lld", name, e->name, b, st_types[e->type].name,
                   (long long)need, (long long)e->begin, (long long)e->end,
                   (long long)(e->end - e->begin));
      return -1;
    }
  }
  st_entry **by_off = malloc((h->n ? h->n : 1) * sizeof *by_off);
  if (!by_off) {
    mm_set_error("load: '%s': out of memory", name);
    return -1;
  }
  for (size_t i = 0; i < h->n; i++) by_off[i] = &h->e[i];
  qsort(by_off, h->n, sizeof *by_off, cmp_entry_begin_ptr);
  int64_t at = 0;
  for (size_t i = 0; i < h->n; i++) {
    st_entry *e = by_off[i];
    if (e->begin != at) {
      if (e->begin < at)
        mm_set_error("load: '%s': tensor '%s' (bytes %lld..%lld) overlaps tensor '%s' (ending at %lld)",
                     name, e->name, (long long)e->begin, (long long)e->end, by_off[i - 1]->name,
                     (long long)at);
      else
        mm_set_error("load: '%s': bytes %lld..%lld of the data area belong to no tensor (a hole "
                     "before tensor '%s')", name, (long long)at, (long long)e->begin, e->name);
      free(by_off);
      return -1;
    }
    at = e->end;
  }
  free(by_off);
  if ((uint64_t)at != data_len) {
    mm_set_error("load: '%s': %llu bytes of trailing data after the last tensor (the data area has "
                 "%zu bytes, the tensors cover %lld)", name, (unsigned long long)(data_len - (size_t)at),
                 data_len, (long long)at);
    return -1;
  }
  return 0;
}

void mm_checkpoint_free(mm_checkpoint *ck) {
  if (!ck) return;
  for (size_t i = 0; i < ck->ntensors; i++) {
    free(ck->tensors[i].name);
    mm_tensor_release(ck->tensors[i].tensor);
  }
  for (size_t i = 0; i < ck->nmeta; i++) free(ck->meta[i].key), free(ck->meta[i].value);
  free(ck->tensors);
  free(ck->meta);
  memset(ck, 0, sizeof *ck);
}

int mm_safetensors_parse(const void *buf, size_t len, mm_checkpoint *out, const char *name) {
  const unsigned char *p = buf;
  memset(out, 0, sizeof *out);
  if (!name) name = "<memory>";
  if (len < 8) {
    mm_set_error("load: '%s': not a safetensors file (expected an 8-byte header length, the file has "
                 "%zu bytes)", name, len);
    return -1;
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | p[i];
  if (n > len - 8 || n > ST_MAX_HEADER) {
    mm_set_error("load: '%s': header length %llu is larger than %s (%zu bytes): truncated or not a "
                 "safetensors file", name, (unsigned long long)n,
                 n > len - 8 ? "the rest of the file" : "the 100 MiB limit",
                 n > len - 8 ? len - 8 : ST_MAX_HEADER);
    return -1;
  }
  json j = {p + 8, (size_t)n, 0, name, 0};
  st_header h = {0};
  if (parse_header(&j, &h) < 0) goto fail;
  if (h.n) qsort(h.e, h.n, sizeof *h.e, cmp_entry_name);
  size_t data_len = len - 8 - (size_t)n;
  const unsigned char *data = p + 8 + n;
  if (check_layout(&h, data_len, name) < 0) goto fail;
  out->tensors = calloc(h.n ? h.n : 1, sizeof *out->tensors);
  if (!out->tensors) {
    mm_set_error("load: '%s': out of memory", name);
    goto fail;
  }
  for (size_t i = 0; i < h.n; i++) {
    st_entry *e = &h.e[i];
    mm_tensor *t = mm_tensor_empty(st_types[e->type].dt, e->ndim, e->shape);
    if (!t) goto fail;
    mm_io_convert(t, data + e->begin, mm_numel(t), st_types[e->type].rt, false);
    out->tensors[i].tensor = t;
    out->tensors[i].name = e->name;
    e->name = NULL;   /* now owned by out */
    out->ntensors++;
  }
  if (h.nmeta) qsort(h.meta, h.nmeta, sizeof *h.meta, cmp_pair);   /* qsort(NULL, 0) is UB */
  out->meta = h.meta;
  out->nmeta = h.nmeta;
  h.meta = NULL;
  h.nmeta = 0;
  header_free(&h);
  return 0;
fail:
  header_free(&h);
  mm_checkpoint_free(out);
  return -1;
}

int mm_safetensors_load(const char *path, mm_checkpoint *out) {
  mm_io_file f;
  memset(out, 0, sizeof *out);
  if (mm_io_open_file(path, &f, "load") < 0) return -1;
  int rc = mm_safetensors_parse(f.data, f.len, out, path);
  mm_io_close_file(&f);
  return rc;
}

/* ---- writer --------------------------------------------------------------------------- */

typedef struct {
  char *s;
  size_t n, cap;
  bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t k) {
  if (b->oom) return;
  if (b->n + k + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 1024;
    while (nc < b->n + k + 1) nc *= 2;
    char *ns = realloc(b->s, nc);
    if (!ns) { b->oom = true; return; }
    b->s = ns;
    b->cap = nc;
  }
  memcpy(b->s + b->n, s, k);
  b->n += k;
  b->s[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_fmt_int(sbuf *b, long long v) {
  char t[32];
  sb_put(b, t, (size_t)snprintf(t, sizeof t, "%lld", v));
}
/* A JSON string literal: quote, backslash and control characters escaped. */
static void sb_json_string(sbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      sb_put(b, e, 2);
    } else if (c < 0x20) {
      char e[8];
      sb_put(b, e, (size_t)snprintf(e, sizeof e, "\\u%04x", c));
    } else {
      sb_put(b, (const char *)&c, 1);
    }
  }
  sb_put(b, "\"", 1);
}

static const mm_named_tensor *sort_named;
static int cmp_index_by_name(const void *a, const void *b) {
  return strcmp(sort_named[*(const size_t *)a].name, sort_named[*(const size_t *)b].name);
}
static const mm_string_pair *sort_pairs;
static int cmp_index_by_key(const void *a, const void *b) {
  return strcmp(sort_pairs[*(const size_t *)a].key, sort_pairs[*(const size_t *)b].key);
}

int mm_safetensors_save(const char *path, const mm_checkpoint *ck) {
  size_t *order = malloc((ck->ntensors + 1) * sizeof *order);
  size_t *morder = malloc((ck->nmeta + 1) * sizeof *morder);
  sbuf b = {0};
  int rc = -1;
  if (!order || !morder) {
    mm_set_error("save: out of memory");
    goto done;
  }
  for (size_t i = 0; i < ck->ntensors; i++) {
    const char *nm = ck->tensors[i].name;
    if (!strcmp(nm, "__metadata__")) {
      mm_set_error("save: the tensor name '__metadata__' is reserved by the format");
      goto done;
    }
    if (!utf8_valid(nm)) {
      mm_set_error("save: tensor name '%.60s' is not valid UTF-8", nm);
      goto done;
    }
    order[i] = i;
  }
  for (size_t i = 0; i < ck->nmeta; i++) {
    if (!utf8_valid(ck->meta[i].key) || !utf8_valid(ck->meta[i].value)) {
      mm_set_error("save: metadata entry '%.60s' is not valid UTF-8", ck->meta[i].key);
      goto done;
    }
    morder[i] = i;
  }
  /* Sorted names make the bytes a function of the contents alone. */
  sort_named = ck->tensors;
  qsort(order, ck->ntensors, sizeof *order, cmp_index_by_name);
  sort_pairs = ck->meta;
  qsort(morder, ck->nmeta, sizeof *morder, cmp_index_by_key);
  for (size_t i = 0; i + 1 < ck->ntensors; i++)
    if (!strcmp(ck->tensors[order[i]].name, ck->tensors[order[i + 1]].name)) {
      mm_set_error("save: tensor name '%s' appears twice", ck->tensors[order[i]].name);
      goto done;
    }
  for (size_t i = 0; i + 1 < ck->nmeta; i++)
    if (!strcmp(ck->meta[morder[i]].key, ck->meta[morder[i + 1]].key)) {
      mm_set_error("save: metadata key '%s' appears twice", ck->meta[morder[i]].key);
      goto done;
    }

  sb_str(&b, "{");
  bool first = true;
  if (ck->nmeta) {
    sb_str(&b, "\"__metadata__\":{");
    for (size_t i = 0; i < ck->nmeta; i++) {
      if (i) sb_str(&b, ",");
      sb_json_string(&b, ck->meta[morder[i]].key);
      sb_str(&b, ":");
      sb_json_string(&b, ck->meta[morder[i]].value);
    }
    sb_str(&b, "}");
    first = false;
  }
  int64_t off = 0;
  for (size_t i = 0; i < ck->ntensors; i++) {
    const mm_tensor *t = ck->tensors[order[i]].tensor;
    if (!first) sb_str(&b, ",");
    first = false;
    sb_json_string(&b, ck->tensors[order[i]].name);
    sb_str(&b, t->dtype == MM_FLOAT32 ? ":{\"dtype\":\"F32\",\"shape\":["
             : t->dtype == MM_FLOAT64 ? ":{\"dtype\":\"F64\",\"shape\":["
                                      : ":{\"dtype\":\"I64\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) {
      if (d) sb_str(&b, ",");
      sb_fmt_int(&b, (long long)t->shape[d]);
    }
    int64_t nbytes = mm_numel(t) * (int64_t)mm_dtype_size(t->dtype);
    sb_str(&b, "],\"data_offsets\":[");
    sb_fmt_int(&b, (long long)off);
    sb_str(&b, ",");
    sb_fmt_int(&b, (long long)(off + nbytes));
    sb_str(&b, "]}");
    off += nbytes;
  }
  sb_str(&b, "}");
  /* Spaces pad the header so the data area starts 8-byte aligned. */
  while (!b.oom && b.n % 8) sb_str(&b, " ");
  if (b.oom) {
    mm_set_error("save: out of memory building the header");
    goto done;
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
  mm_io_writer w;
  if (mm_io_writer_open(&w, path, "save") < 0) goto done;
  if (mm_io_write(&w, len8, 8) < 0 || mm_io_write(&w, b.s, b.n) < 0) {
    mm_io_writer_abort(&w);
    goto done;
  }
  for (size_t i = 0; i < ck->ntensors; i++)
    if (mm_io_write_tensor_le(&w, ck->tensors[order[i]].tensor) < 0) {
      mm_io_writer_abort(&w);
      goto done;
    }
  rc = mm_io_writer_commit(&w);
done:
  free(order);
  free(morder);
  free(b.s);
  return rc;
}
