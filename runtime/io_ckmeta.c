/* io_ckmeta.c — the reader for checkpoint metadata (format 2): the
 * non-tensor part of a checkpoint, stored as JSON data in the safetensors
 * "__metadata__" (see io.h for the grammar).
 *
 * Format 1 stored that part as a Lua literal and loaded it with load(),
 * so a crafted file could run code (loop forever, compute values).  This
 * reader only ever builds data: it is recursive descent with a depth
 * limit, reads each byte of the input a bounded number of times, makes
 * allocations proportional to the bytes present, refuses anything outside
 * the grammar (unknown tags, duplicate keys, out-of-range integers,
 * trailing bytes) and names the byte offset of the problem. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_internal.h"

typedef struct {
  const unsigned char *s;
  size_t n, i;
  const char *name;
  int depth;
} rd;

static void ws(rd *r) {
  while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' ||
                         r->s[r->i] == '\r'))
    r->i++;
}

static int fail(rd *r, const char *what) {
  if (r->i >= r->n)
    mm_set_error("load_checkpoint: '%s': malformed checkpoint metadata (expected %s, got the end "
                 "of the metadata)", r->name, what);
  else
    mm_set_error("load_checkpoint: '%s': malformed checkpoint metadata at byte %zu (expected %s, "
                 "got '%c')", r->name, r->i, what,
                 r->s[r->i] >= 32 && r->s[r->i] < 127 ? r->s[r->i] : '?');
  return -1;
}

static bool peek(rd *r, char c) {
  ws(r);
  return r->i < r->n && r->s[r->i] == (unsigned char)c;
}

static int expect(rd *r, char c, const char *what) {
  if (!peek(r, c)) return fail(r, what);
  r->i++;
  return 0;
}

static int oom(rd *r) {
  mm_set_error("load_checkpoint: '%s': out of memory reading the checkpoint metadata", r->name);
  return -1;
}

/* A string of bytes.  The writer escapes every byte outside printable
 * ASCII as \u00XX, so any byte string (NUL, invalid UTF-8) round-trips;
 * the reader accepts only that: printable ASCII, the short escapes, and
 * \u escapes up to \u00FF (one byte each).  The result is never longer
 * than the input it came from. */
static int rstring(rd *r, char **out, size_t *outlen) {
  *out = NULL;
  if (expect(r, '"', "a string") < 0) return -1;
  size_t start = r->i;
  while (r->i < r->n && r->s[r->i] != '"') r->i += r->s[r->i] == '\\' ? 2 : 1;
  if (r->i >= r->n) {
    mm_set_error("load_checkpoint: '%s': malformed checkpoint metadata (unterminated string "
                 "starting at byte %zu)", r->name, start - 1);
    return -1;
  }
  size_t end = r->i;
  char *buf = malloc(end - start + 1), *o = buf;
  if (!buf) return oom(r);
  r->i = start;
  while (r->i < end) {
    unsigned char c = r->s[r->i];
    if (c < 0x20 || c >= 0x7F) {
      free(buf);
      return fail(r, "printable ASCII or an escape in a string (bytes outside it are written "
                     "as \\u00XX)");
    }
    r->i++;
    if (c != '\\') {
      *o++ = (char)c;
      continue;
    }
    char e = (char)r->s[r->i++];
    const char *simple = strchr("\"\\/bfnrt", e);
    if (simple && e) {
      *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      continue;
    }
    unsigned v = 0;
    bool ok = e == 'u' && end - r->i >= 4;
    for (int k = 0; ok && k < 4; k++) {
      unsigned char h = r->s[r->i + k];
      unsigned d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : 16;
      ok = d < 16;
      v = v << 4 | d;
    }
    if (!ok || v > 0xFF) {
      r->i--;
      free(buf);
      return fail(r, "an escape \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\u0000-\\u00FF (one byte)");
    }
    r->i += 4;
    *o++ = (char)v;
  }
  *o = 0;
  r->i = end + 1;
  *out = buf;
  *outlen = (size_t)(o - buf);
  return 0;
}

/* An integer written as JSON digits, exact over all of int64. */
static int rint64(rd *r, int64_t *v) {
  ws(r);
  size_t start = r->i;
  bool neg = false;
  if (r->i < r->n && r->s[r->i] == '-') neg = true, r->i++;
  if (r->i >= r->n || r->s[r->i] < '0' || r->s[r->i] > '9') {
    r->i = start;
    return fail(r, "a value (true, false, an integer, a string or an object)");
  }
  if (r->s[r->i] == '0' && r->i + 1 < r->n && r->s[r->i + 1] >= '0' && r->s[r->i + 1] <= '9')
    return fail(r, "no leading zero in an integer");
  uint64_t u = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9') {
    unsigned d = r->s[r->i] - '0';
    if (u > (lim - d) / 10) {
      r->i = start;
      return fail(r, "an integer in the int64 range");
    }
    u = u * 10 + d;
    r->i++;
  }
  if (r->i < r->n && (r->s[r->i] == '.' || r->s[r->i] == 'e' || r->s[r->i] == 'E'))
    return fail(r, "an integer (floats are written as {\"f\": \"<hex float>\"})");
  *v = neg ? (int64_t)(0 - u) : (int64_t)u;
  return 0;
}

/* A float from its exact spelling: "nan", "inf", "-inf" or a hex float
 * [-]0x<hex>[.<hex>]p[+-]<digits> (what "%a" writes).  The grammar is
 * checked before strtod sees it, so strtod's lenience (leading blanks,
 * decimal forms, "infinity", "nan(...)") never widens the format. */
static int rfloat_text(rd *r, const char *s, size_t at, double *out) {
  if (!strcmp(s, "nan")) { *out = NAN; return 0; }
  if (!strcmp(s, "inf")) { *out = INFINITY; return 0; }
  if (!strcmp(s, "-inf")) { *out = -INFINITY; return 0; }
  const char *p = s;
  if (*p == '-') p++;
  bool ok = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
  if (ok) {
    p += 2;
    size_t digits = strspn(p, "0123456789abcdefABCDEF");
    p += digits;
    if (*p == '.') p++, p += strspn(p, "0123456789abcdefABCDEF");
    ok = digits > 0 && (*p == 'p' || *p == 'P');
    if (ok) {
      p++;
      if (*p == '+' || *p == '-') p++;
      size_t e = strspn(p, "0123456789");
      ok = e > 0 && e <= 6 && p[e] == 0;
    }
  }
  if (!ok) {
    r->i = at;
    return fail(r, "a float spelled \"nan\", \"inf\", \"-inf\" or as a hex float like "
                   "\"0x1.8p+1\"");
  }
  *out = strtod(s, NULL);
  return 0;
}

static int rvalue(rd *r, mm_meta_value *v);

/* Orders keys: integers first (by value), then strings (bytewise). */
static int key_cmp(const void *a, const void *b) {
  const mm_meta_value *x = *(const mm_meta_value *const *)a, *y = *(const mm_meta_value *const *)b;
  if (x->type != y->type) return x->type == MM_META_INT ? -1 : 1;
  if (x->type == MM_META_INT) return x->u.i < y->u.i ? -1 : x->u.i > y->u.i;
  size_t n = x->u.str.len < y->u.str.len ? x->u.str.len : y->u.str.len;
  int c = memcmp(x->u.str.s, y->u.str.s, n);
  return c ? c : x->u.str.len < y->u.str.len ? -1 : x->u.str.len > y->u.str.len;
}

/* [[key, value], ...] after {"t": — into v (a table). */
static int rtable_items(rd *r, mm_meta_value *v) {
  v->type = MM_META_TABLE;
  v->u.table.items = NULL;
  v->u.table.n = 0;
  if (++r->depth > MM_META_MAX_DEPTH) {
    mm_set_error("load_checkpoint: '%s': checkpoint metadata nests tables deeper than %d levels",
                 r->name, MM_META_MAX_DEPTH);
    return -1;
  }
  if (expect(r, '[', "'[' starting a table's [key, value] pairs") < 0) return -1;
  size_t cap = 0;
  if (peek(r, ']')) {
    r->i++;
    r->depth--;
    return 0;
  }
  for (;;) {
    if (v->u.table.n == cap) {
      /* Every pair takes at least 6 input bytes ("[0,0],"), so the input
       * length bounds this growth. */
      size_t nc = cap ? cap * 2 : 8;
      mm_meta_value *ni = realloc(v->u.table.items, 2 * nc * sizeof *ni);
      if (!ni) return oom(r);
      v->u.table.items = ni;
      cap = nc;
    }
    mm_meta_value *k = &v->u.table.items[2 * v->u.table.n], *val = k + 1;
    k->type = val->type = MM_META_BOOL;   /* freeable whatever happens next */
    v->u.table.n++;
    if (expect(r, '[', "'[' starting a [key, value] pair") < 0) return -1;
    if (peek(r, '"')) {
      k->type = MM_META_STRING;
      if (rstring(r, &k->u.str.s, &k->u.str.len) < 0) {
        k->type = MM_META_BOOL;
        return -1;
      }
    } else {
      if (rint64(r, &k->u.i) < 0) return -1;
      k->type = MM_META_INT;
    }
    if (expect(r, ',', "',' between a key and its value") < 0) return -1;
    if (rvalue(r, val) < 0) return -1;
    if (expect(r, ']', "']' closing a [key, value] pair") < 0) return -1;
    if (peek(r, ',')) { r->i++; continue; }
    if (expect(r, ']', "',' or ']' after a [key, value] pair") < 0) return -1;
    break;
  }
  r->depth--;
  /* Duplicate keys would make the table depend on which one wins. */
  size_t n = v->u.table.n;
  if (n > 1) {
    const mm_meta_value **keys = malloc(n * sizeof *keys);
    if (!keys) return oom(r);
    for (size_t i = 0; i < n; i++) keys[i] = &v->u.table.items[2 * i];
    qsort(keys, n, sizeof *keys, key_cmp);
    for (size_t i = 1; i < n; i++) {
      if (key_cmp(&keys[i - 1], &keys[i]) == 0) {
        if (keys[i]->type == MM_META_INT)
          mm_set_error("load_checkpoint: '%s': checkpoint metadata: integer key %lld appears twice "
                       "in one table", r->name, (long long)keys[i]->u.i);
        else
          mm_set_error("load_checkpoint: '%s': checkpoint metadata: string key '%.*s' appears twice "
                       "in one table", r->name, keys[i]->u.str.len > 60 ? 60 : (int)keys[i]->u.str.len,
                       keys[i]->u.str.s);
        free(keys);
        return -1;
      }
    }
    free(keys);
  }
  return 0;
}

/* {"f": "..."} | {"t": [...]} | {"tensor": "..."} — one member, a known tag. */
static int robject(rd *r, mm_meta_value *v) {
  r->i++;   /* '{' */
  size_t at = r->i;
  char *tag;
  size_t tl;
  ws(r);
  at = r->i;
  if (rstring(r, &tag, &tl) < 0) return -1;
  int kind = !strcmp(tag, "f") ? 0 : !strcmp(tag, "t") ? 1 : !strcmp(tag, "tensor") ? 2 : -1;
  free(tag);
  if (kind < 0) {
    r->i = at;
    return fail(r, "a tag \"f\" (float), \"t\" (table) or \"tensor\"");
  }
  if (expect(r, ':', "':' after the tag") < 0) return -1;
  if (kind == 1) {
    if (rtable_items(r, v) < 0) return -1;
  } else {
    ws(r);
    size_t sat = r->i;
    char *s;
    size_t sl;
    if (rstring(r, &s, &sl) < 0) return -1;
    if (kind == 0) {
      double d = 0;
      int rc = strlen(s) == sl ? rfloat_text(r, s, sat, &d) : (r->i = sat, fail(r, "a float"));
      free(s);
      if (rc < 0) return -1;
      v->type = MM_META_FLOAT;
      v->u.f = d;
    } else {
      v->type = MM_META_TENSOR;
      v->u.str.s = s;
      v->u.str.len = sl;
    }
  }
  return expect(r, '}', "'}' (a tagged value has exactly one member)");
}

static int rvalue(rd *r, mm_meta_value *v) {
  v->type = MM_META_BOOL;
  v->u.b = false;
  ws(r);
  if (r->i >= r->n) return fail(r, "a value");
  switch (r->s[r->i]) {
  case '{': return robject(r, v);
  case '"':
    if (rstring(r, &v->u.str.s, &v->u.str.len) < 0) return -1;
    v->type = MM_META_STRING;
    return 0;
  case 't':
    if (r->n - r->i >= 4 && !memcmp(r->s + r->i, "true", 4)) { r->i += 4; v->u.b = true; return 0; }
    break;
  case 'f':
    if (r->n - r->i >= 5 && !memcmp(r->s + r->i, "false", 5)) { r->i += 5; return 0; }
    break;
  default:
    if (rint64(r, &v->u.i) < 0) return -1;
    v->type = MM_META_INT;
    return 0;
  }
  return fail(r, "a value (true, false, an integer, a string or an object)");
}

int mm_checkpoint_meta_parse(const void *buf, size_t len, mm_meta_value *out, const char *name) {
  rd r = {buf, len, 0, name ? name : "<memory>", 0};
  out->type = MM_META_BOOL;
  out->u.b = false;
  if (!peek(&r, '{')) return fail(&r, "a table {\"t\": [...]} at the top");
  if (rvalue(&r, out) < 0) {
    mm_meta_value_free(out);
    return -1;
  }
  if (out->type != MM_META_TABLE) {
    mm_set_error("load_checkpoint: '%s': checkpoint metadata must be a table {\"t\": [...]} at the "
                 "top, got a %s", r.name, out->type == MM_META_FLOAT ? "float" : "tensor reference");
    mm_meta_value_free(out);
    return -1;
  }
  ws(&r);
  if (r.i != r.n) {
    fail(&r, "nothing but blanks after the top-level table");
    mm_meta_value_free(out);
    return -1;
  }
  return 0;
}

void mm_meta_value_free(mm_meta_value *v) {
  if (!v) return;
  switch (v->type) {
  case MM_META_STRING:
  case MM_META_TENSOR:
    free(v->u.str.s);
    break;
  case MM_META_TABLE:
    for (size_t i = 0; i < 2 * v->u.table.n; i++) mm_meta_value_free(&v->u.table.items[i]);
    free(v->u.table.items);
    break;
  default:
    break;
  }
  v->type = MM_META_BOOL;
  v->u.b = false;
}
