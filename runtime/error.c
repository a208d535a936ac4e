/* error.c — the runtime's error channel: one message per thread.
 * Functions fail by returning NULL / -1 after mm_set_error(); the Lua
 * bindings turn the message into a Lua error.  Nothing aborts. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Thread_local char errbuf[1024];

const char *mm_error(void) { return errbuf[0] ? errbuf : "unknown error"; }

void mm_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errbuf, sizeof errbuf, fmt, ap);
  va_end(ap);
}

/* ---- the environment ---------------------------------------------------------
 * MICROML_MAX_BYTES and MICROML_NUM_THREADS are read where they are used
 * (alloc.c, parallel.c), lazily.  The runtime cannot print, and silently
 * falling back (a typo meaning "no limit") is what made them dangerous, so
 * a bad value is recorded here; mm_config_error() reports it and the
 * bindings refuse to start with it. */
static char env_error[512];

void mm_env_fail(const char *fmt, ...) {
  if (env_error[0]) return;   /* the first bad variable is the one reported */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(env_error, sizeof env_error, fmt, ap);
  va_end(ap);
}

const char *mm_env_error(void) { return env_error[0] ? env_error : NULL; }

/* A multiplier suffix, matched exactly (K and KiB are 1024, KB is 1000). */
static bool suffix_scale(const char *s, uint64_t *scale) {
  static const struct { const char *s; uint64_t m; } sfx[] = {
    {"", 1},
    {"K", 1ull << 10}, {"M", 1ull << 20}, {"G", 1ull << 30}, {"T", 1ull << 40},
    {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30}, {"TiB", 1ull << 40},
    {"KB", 1000ull}, {"MB", 1000000ull}, {"GB", 1000000000ull}, {"TB", 1000000000000ull},
  };
  for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
    if (strcmp(s, sfx[i].s) == 0) { *scale = sfx[i].m; return true; }
  return false;
}

bool mm_parse_count(const char *text, bool byte_suffixes, uint64_t max, uint64_t *out) {
  const char *p = text;
  if (!isdigit((unsigned char)*p)) return false;   /* no sign, space or hex */
  const char *q = p;
  while (isdigit((unsigned char)*q)) q++;
  bool plain = true;   /* digits only: exact, without going through a double */
  if (*q == '.') { plain = false; q++; while (isdigit((unsigned char)*q)) q++; }
  if (*q == 'e' || *q == 'E') {
    plain = false;
    q++;
    if (*q == '+' || *q == '-') q++;
    if (!isdigit((unsigned char)*q)) return false;
    while (isdigit((unsigned char)*q)) q++;
  }
  uint64_t scale;
  if (!suffix_scale(q, &scale) || (!byte_suffixes && scale != 1)) return false;
  if (plain) {
    errno = 0;
    unsigned long long v = strtoull(p, NULL, 10);
    if (errno == ERANGE || v > max / scale) return false;
    *out = (uint64_t)v * scale;
    return true;
  }
  /* 1e9, 1.5e9, 0.5G: whole numbers once scaled, within 2^53 where a
   * double is exact (1e9 must not become 1 as strtoull read it). */
  double d = strtod(p, NULL) * (double)scale;
  if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d) || d > (double)max) return false;
  *out = (uint64_t)d;
  return true;
}
