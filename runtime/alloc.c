/* alloc.c — storages and the size-class caching allocator.
 *
 * A training loop allocates the same sizes every step.  Freed storages go
 * to a free list keyed by size class, so the steady state never calls the
 * system allocator.  Classes are powers of two split into 4 steps (at most
 * 25% slack); blocks are 64-byte aligned for SIMD loads.  The storage
 * header lives in front of its data in one allocation, so a tensor's
 * bytes and header are recycled together.
 *
 * Single-threaded by design: tensors are created and freed on the thread
 * that runs Lua; kernels running on the pool never allocate storages. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define HEADER 64            /* storage header padded to keep data aligned */
#define NCLASSES 256

typedef struct block { struct block *next; } block;

static block *freelist[NCLASSES];
static mm_memory_stats stats;
static uint64_t alloc_debt;

/* ---- the cache's bound ---------------------------------------------------------
 * A training loop frees and reallocates the same sizes every step, and then
 * the cache never holds more than the live peak.  A program of ever-changing
 * sizes would fill it without end (every size class keeps what it was
 * given), so cached bytes are capped at max(CACHE_FLOOR, 2 x the live peak
 * of the recent past): twice the working set keeps a steady loop and its
 * occasional larger step served from the cache, while the floor keeps small
 * programs from ever calling malloc again.  "Recent" is the higher of the
 * peaks of the current and the previous window of WINDOW allocations, so the
 * cap follows a program that shrinks.  Past the cap, blocks are freed from
 * the largest classes down (fewest frees for the bytes, and big blocks go
 * straight back to the system).  A memory limit counts cached bytes too:
 * cached blocks are freed before an allocation is refused. */
#define CACHE_FLOOR ((uint64_t)256 << 20)
#define WINDOW 4096

static uint64_t window_peak[2];   /* current, previous */
static unsigned window_allocs;

static uint64_t cache_cap(void) {
  uint64_t recent = window_peak[0] > window_peak[1] ? window_peak[0] : window_peak[1];
  return 2 * recent > CACHE_FLOOR ? 2 * recent : CACHE_FLOOR;
}

/* Frees cached blocks, largest classes first, until at most `keep` bytes
 * stay cached. */
static void cache_trim(uint64_t keep) {
  for (int c = NCLASSES - 1; c >= 0 && stats.bytes_cached > keep; c--) {
    while (freelist[c] && stats.bytes_cached > keep) {
      block *b = freelist[c];
      freelist[c] = b->next;
      stats.bytes_cached -= ((mm_storage *)b)->capacity;
      free(b);
    }
  }
}

/* Size class index and the class's capacity for n bytes. */
static int size_class(size_t n, size_t *cap) {
  if (n <= 64) { *cap = 64; return 0; }
  int e = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n <= 2^(e+1) */
  size_t base = (size_t)1 << e, step = base / 4;
  size_t k = (n - base + step - 1) / step;                    /* 1..4 */
  *cap = base + k * step;
  return 1 + (e - 6) * 4 + (int)(k - 1);
}

/* Blocks of 8 MiB and more (a dataset, a big activation) are 2 MiB-aligned
 * and advised as transparent huge pages (Debian's default THP mode is
 * "madvise", so nothing happens without the advice).  A shuffled batch
 * gathers 128 random rows of a 180 MiB training set: with 4 KiB pages every
 * row is a TLB miss and a page walk; with 2 MiB pages the walks mostly
 * vanish.  Measured: the 2-thread batch gather of the training benchmark
 * went from ~56 to ~43 us per step.  Untouched pages stay unmapped, so the
 * cost in resident memory is at most the last, partly used huge page. */
#define HUGE_PAGE ((size_t)2 << 20)

static void *sys_alloc(size_t bytes) {
  void *p = NULL;
  if (bytes >= 4 * HUGE_PAGE) {
    if (posix_memalign(&p, HUGE_PAGE, bytes) != 0) return NULL;
    madvise(p, bytes & ~(HUGE_PAGE - 1), MADV_HUGEPAGE);
    return p;
  }
  if (posix_memalign(&p, 64, bytes) != 0) return NULL;
  return p;
}

/* MICROML_MAX_BYTES caps tensor memory from the environment.  A value that
 * does not parse is recorded (mm_config_error) and leaves no limit; the
 * bindings refuse to start with it, so nothing runs unlimited by mistake. */
static bool env_limit_read;

static void read_env_limit(void) {
  if (env_limit_read) return;
  env_limit_read = true;
  const char *e = getenv("MICROML_MAX_BYTES");
  uint64_t v;
  if (!e || !*e) return;
  if (mm_parse_count(e, true, (uint64_t)1 << 62, &v)) stats.bytes_limit = v;
  else
    mm_env_fail("MICROML_MAX_BYTES=%s: expected a number of bytes such as 1000000, 1e9, 512M "
                "or 2GiB (K M G T and KiB MiB GiB TiB are powers of 1024, KB MB GB TB of "
                "1000; 0 means no limit)", e);
}

void mm_storage_read_env(void) { read_env_limit(); }

mm_storage *mm_storage_new(size_t nbytes) {
  size_t cap;
  read_env_limit();
  if (nbytes > ((size_t)1 << 46)) {
    mm_set_error("cannot allocate %zu bytes: larger than any machine's memory", nbytes);
    return NULL;
  }
  int c = size_class(nbytes, &cap);
  /* The limit bounds live bytes, so it holds for a block taken from the
   * cache as much as for a fresh one. */
  if (stats.bytes_limit && stats.bytes_live + cap > stats.bytes_limit) {
    mm_set_error("memory limit exceeded: allocating %zu bytes with %llu live, limit %llu bytes",
                 nbytes, (unsigned long long)stats.bytes_live,
                 (unsigned long long)stats.bytes_limit);
    return NULL;
  }
  block *b = c < NCLASSES ? freelist[c] : NULL;
  if (b) {
    freelist[c] = b->next;
    stats.bytes_cached -= cap;
  } else {
    /* A fresh block adds to live + cached, which the limit bounds as a
     * whole: make room by freeing cached blocks (live + cap fits, above). */
    if (stats.bytes_limit && stats.bytes_live + stats.bytes_cached + cap > stats.bytes_limit)
      cache_trim(stats.bytes_limit - stats.bytes_live - cap);
    b = sys_alloc(HEADER + cap);
    if (!b) {
      mm_storage_cache_empty();
      b = sys_alloc(HEADER + cap);
    }
    if (!b) {
      mm_set_error("out of memory: cannot allocate %zu bytes for a tensor", nbytes);
      return NULL;
    }
    stats.system_allocs++;
  }
  /* Every storage handed out counts, cached or not: a tensor the collector
   * has not freed yet pins its block either way. */
  alloc_debt += cap;
  mm_storage *s = (mm_storage *)b;
  s->data = (char *)b + HEADER;
  s->nbytes = nbytes;
  s->capacity = cap;
  s->refcount = 1;
  s->version = 0;
  stats.alloc_count++;
  stats.bytes_live += cap;
  if (stats.bytes_live > stats.bytes_peak) stats.bytes_peak = stats.bytes_live;
  if (stats.bytes_live > window_peak[0]) window_peak[0] = stats.bytes_live;
  if (++window_allocs == WINDOW) {
    window_allocs = 0;
    window_peak[1] = window_peak[0];
    window_peak[0] = stats.bytes_live;
  }
  return s;
}

void mm_storage_retain(mm_storage *s) { s->refcount++; }

void mm_storage_release(mm_storage *s) {
  if (!s || --s->refcount > 0) return;
  size_t cap;
  int c = size_class(s->capacity, &cap);
  stats.bytes_live -= s->capacity;
  block *b = (block *)s;
  if (c < NCLASSES) {
    b->next = freelist[c];
    freelist[c] = b;
    stats.bytes_cached += cap;
    uint64_t cap_bytes = cache_cap();
    if (stats.bytes_cached > cap_bytes) cache_trim(cap_bytes);
  } else {
    free(b);
  }
}

/* mm_empty_cache (tensor.c) empties this and the tensor-header cache. */
void mm_storage_cache_empty(void) {
  for (int c = 0; c < NCLASSES; c++) {
    while (freelist[c]) {
      block *b = freelist[c];
      freelist[c] = b->next;
      free(b);
    }
  }
  stats.bytes_cached = 0;
}

void mm_memory_stats_get(mm_memory_stats *out) {
  read_env_limit();   /* the readers check the limit before any tensor exists */
  *out = stats;
}
/* An explicit limit wins over MICROML_MAX_BYTES, even when set before the
 * first allocation. */
void mm_set_memory_limit(uint64_t bytes) {
  env_limit_read = true;
  stats.bytes_limit = bytes;
  /* cached bytes count against the limit too */
  if (bytes && stats.bytes_live + stats.bytes_cached > bytes)
    cache_trim(bytes > stats.bytes_live ? bytes - stats.bytes_live : 0);
}

uint64_t mm_take_alloc_debt(void) {
  uint64_t d = alloc_debt;
  alloc_debt = 0;
  return d;
}
