/* random.c — the seeded generator behind rand/randn/dropout/shuffling.
 * xoshiro256** seeded through splitmix64: the same seed gives the same
 * stream on every machine and run.  Normals by the polar method, keeping
 * the spare so two calls cost one pair of uniforms. */
#include <math.h>

#include "microml.h"

#define DEFAULT_SEED 0x6d6963726f6d6cULL /* fixed: runs are reproducible without a seed */

static mm_rng_state rng;
static int seeded;

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void mm_manual_seed(uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) rng.s[i] = splitmix64(&x);
  rng.has_spare = 0;
  seeded = 1;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t mm_random_u64(void) {
  if (!seeded) mm_manual_seed(DEFAULT_SEED);
  uint64_t *s = rng.s;
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

double mm_random_uniform(void) { return (double)(mm_random_u64() >> 11) * 0x1.0p-53; }

double mm_random_normal(void) {
  if (rng.has_spare) {
    rng.has_spare = 0;
    return rng.spare;
  }
  double u, v, s;
  do {
    u = 2.0 * mm_random_uniform() - 1.0;
    v = 2.0 * mm_random_uniform() - 1.0;
    s = u * u + v * v;
  } while (s >= 1.0 || s == 0.0);
  double f = sqrt(-2.0 * log(s) / s);
  rng.spare = v * f;
  rng.has_spare = 1;
  return u * f;
}

void mm_rng_get_state(mm_rng_state *out) {
  if (!seeded) mm_manual_seed(DEFAULT_SEED);
  *out = rng;
}
void mm_rng_set_state(const mm_rng_state *in) { rng = *in; seeded = 1; }

/* Uniform integer in [0, n) without modulo bias. */
static uint64_t below(uint64_t n) {
  uint64_t lim = UINT64_MAX - UINT64_MAX % n, r;
  do r = mm_random_u64(); while (r >= lim);
  return r % n;
}

int mm_uniform_(mm_tensor *t, double lo, double hi) {
  if (!mm_dtype_is_float(t->dtype)) {
    mm_set_error("uniform_: expected a float32 or float64 tensor, got %s", mm_dtype_name(t->dtype));
    return -1;
  }
  int64_t n = mm_numel(t);
  for (int64_t i = 0; i < n; i++) mm_set_flat(t, i, lo + (hi - lo) * mm_random_uniform());
  mm_bump_version(t);
  return 0;
}

int mm_normal_(mm_tensor *t, double mean, double std) {
  if (!mm_dtype_is_float(t->dtype)) {
    mm_set_error("normal_: expected a float32 or float64 tensor, got %s", mm_dtype_name(t->dtype));
    return -1;
  }
  int64_t n = mm_numel(t);
  for (int64_t i = 0; i < n; i++) mm_set_flat(t, i, mean + std * mm_random_normal());
  mm_bump_version(t);
  return 0;
}

mm_tensor *mm_rand(mm_dtype dt, int ndim, const int64_t *shape) {
  mm_tensor *t = mm_tensor_empty(dt, ndim, shape);
  if (t && mm_uniform_(t, 0, 1) < 0) { mm_tensor_release(t); return NULL; }
  return t;
}

mm_tensor *mm_randn(mm_dtype dt, int ndim, const int64_t *shape) {
  mm_tensor *t = mm_tensor_empty(dt, ndim, shape);
  if (t && mm_normal_(t, 0, 1) < 0) { mm_tensor_release(t); return NULL; }
  return t;
}

mm_tensor *mm_randint(int64_t low, int64_t high, int ndim, const int64_t *shape) {
  if (high <= low) {
    mm_set_error("randint: expected low < high, got low=%lld high=%lld", (long long)low,
                 (long long)high);
    return NULL;
  }
  mm_tensor *t = mm_tensor_empty(MM_INT64, ndim, shape);
  if (!t) return NULL;
  int64_t n = mm_numel(t), *p = mm_data_ptr(t);
  /* The range in unsigned arithmetic: high - low overflows int64 for the
   * full range, and low + r can too in between; the final conversion wraps
   * (two's complement, as gcc and clang define it) to a value in [low, high). */
  uint64_t range = (uint64_t)high - (uint64_t)low;
  for (int64_t i = 0; i < n; i++) p[i] = (int64_t)((uint64_t)low + below(range));
  return t;
}

mm_tensor *mm_randperm(int64_t n) {
  if (n < 0) {
    mm_set_error("randperm: expected n >= 0, got %lld", (long long)n);
    return NULL;
  }
  mm_tensor *t = mm_tensor_empty(MM_INT64, 1, &n);
  if (!t) return NULL;
  int64_t *p = mm_data_ptr(t);
  for (int64_t i = 0; i < n; i++) p[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {   /* Fisher-Yates */
    int64_t j = (int64_t)below((uint64_t)i + 1), tmp = p[i];
    p[i] = p[j];
    p[j] = tmp;
  }
  return t;
}
