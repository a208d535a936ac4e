/* cpu.h — CPU feature detection and the choice of compute kernel.
 *
 * Owns: which instruction-set variant of the hot kernels (GEMM first,
 * elementwise later) runs.  The choice is made once, at first use, from the
 * CPU's features and the environment variable
 *     MICROML_KERNEL=portable|avx2|avx512|auto   (unset = auto)
 * and can be changed later with mm_set_kernel().  An unknown or unsupported
 * value in the environment falls back to auto (with one line on stderr). */
#ifndef MICROML_CPU_H
#define MICROML_CPU_H

/* 1 if the CPU and the OS (XSAVE state enabled) support AVX2 and FMA. */
int mm_cpu_has_avx2_fma(void);
/* 1 if the CPU and the OS support AVX-512 F/VL/DQ (and AVX2/FMA). */
int mm_cpu_has_avx512(void);

/* Kernel variants, best last. */
enum mm_kernel_id { MM_KERNEL_PORTABLE = 0, MM_KERNEL_AVX2 = 1, MM_KERNEL_AVX512 = 2 };

/* Name of the kernel in use: "portable", "avx2" or "avx512". */
const char *mm_kernel_name(void);
/* Choose a kernel by name ("portable", "avx2", "avx512" or "auto").
   Returns 0 on success, -1 if the name is unknown or this CPU cannot run it
   (the current choice is then left unchanged). */
int mm_set_kernel(const char *name);
/* The kernel in use, as an mm_kernel_id (cheap: one atomic load). */
int mm_kernel_id(void);

#endif
