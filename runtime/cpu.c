/* cpu.c — CPU feature detection (cpuid + xgetbv) and the run-time choice of
 * kernel variant (see cpu.h).
 *
 * A feature counts only when the OS also saves the wider registers on context
 * switch: AVX needs XCR0 bits 1-2 (SSE, YMM state), AVX-512 also bits 5-7
 * (opmask, ZMM_Hi256, Hi16_ZMM).  cpuid alone would say "yes" inside an OS or
 * hypervisor that has disabled them, and the first vector instruction would
 * then fault. */
#include "cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void)
{
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((unsigned long long)edx << 32) | eax;
}

/* Bit masks in XCR0. */
#define XCR0_YMM 0x06u   /* SSE + AVX state */
#define XCR0_ZMM 0xe0u   /* opmask + ZMM_Hi256 + Hi16_ZMM */

static int detect(int want512)
{
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  if (!fma || !osxsave || !avx) return 0;
  unsigned long long xcr0 = xgetbv0();
  if ((xcr0 & XCR0_YMM) != XCR0_YMM) return 0;
  if (__get_cpuid_max(0, 0) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  int avx2 = (b >> 5) & 1;
  if (!avx2) return 0;
  if (!want512) return 1;
  int f = (b >> 16) & 1, dq = (b >> 17) & 1, vl = (b >> 31) & 1;
  return f && dq && vl && (xcr0 & XCR0_ZMM) == XCR0_ZMM;
}
#else
static int detect(int want512) { (void)want512; return 0; }
#endif

static int has_avx2 = -1, has_avx512 = -1;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static void detect_all(void)
{
  has_avx2 = detect(0);
  has_avx512 = has_avx2 && detect(1);
}

int mm_cpu_has_avx2_fma(void)
{
  pthread_once(&detect_once, detect_all);
  return has_avx2;
}

int mm_cpu_has_avx512(void)
{
  pthread_once(&detect_once, detect_all);
  return has_avx512;
}

/* ---- kernel choice -------------------------------------------------------- */

static const char *const kernel_names[] = { "portable", "avx2", "avx512" };

/* Set once from the environment (under pthread_once), then by mm_set_kernel;
   atomic because a GEMM on another thread may read it meanwhile. */
static atomic_int current_kernel = -1;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

/* The best variant that both this CPU runs and MicroML implements.  On Zen
   4 AVX-512 runs on the same two 256-bit FMA pipes as AVX2, but its 32
   registers and broadcast operands let the GEMM kernel reach 90%+ of peak
   where the AVX2 one stopped near 87% (see gemm_avx512.c); ops without an
   AVX-512 variant test mm_kernel_id() >= MM_KERNEL_AVX2 and keep theirs. */
static int best_kernel(void)
{
  if (mm_cpu_has_avx512()) return MM_KERNEL_AVX512;
  return mm_cpu_has_avx2_fma() ? MM_KERNEL_AVX2 : MM_KERNEL_PORTABLE;
}

static int supported(int id)
{
  switch (id) {
  case MM_KERNEL_PORTABLE: return 1;
  case MM_KERNEL_AVX2: return mm_cpu_has_avx2_fma();
  case MM_KERNEL_AVX512: return mm_cpu_has_avx512();
  default: return 0;
  }
}

/* -2 unknown name, -1 known but unsupported, else the id. */
static int parse_kernel(const char *name)
{
  if (!strcmp(name, "auto")) return best_kernel();
  for (int i = 0; i < (int)(sizeof kernel_names / sizeof *kernel_names); i++)
    if (!strcmp(name, kernel_names[i])) return supported(i) ? i : -1;
  return -2;
}

static void init_from_env(void)
{
  const char *env = getenv("MICROML_KERNEL");
  int id = best_kernel();
  if (env && *env) {
    int k = parse_kernel(env);
    if (k >= 0) id = k;
    else
      fprintf(stderr, "microml: MICROML_KERNEL=%s: %s (expected portable, avx2, "
              "avx512 or auto); using %s\n", env,
              k == -2 ? "unknown kernel" : "not supported on this CPU",
              kernel_names[id]);
  }
  atomic_store(&current_kernel, id);
}

int mm_kernel_id(void)
{
  int id = atomic_load_explicit(&current_kernel, memory_order_relaxed);
  if (id < 0) {
    pthread_once(&env_once, init_from_env);
    id = atomic_load(&current_kernel);
  }
  return id;
}

const char *mm_kernel_name(void) { return kernel_names[mm_kernel_id()]; }

int mm_set_kernel(const char *name)
{
  if (!name) return -1;
  pthread_once(&env_once, init_from_env);   /* so a later first use cannot override */
  int id = parse_kernel(name);
  if (id < 0) return -1;
  atomic_store(&current_kernel, id);
  return 0;
}
