/* linalg.h — matrix products: matmul and linear (linalg.c).
 *
 * Every product goes through the GEMM in gemm.h; transposed and strided
 * operands are passed to it as strides, never copied, as long as each matrix
 * has a unit stride in one of its two dims.  All ops are differentiable and
 * take float32 or float64 (mixed inputs promote to float64); int64 inputs
 * are refused with a message.  Results do not depend on the thread count.
 *
 * Dims are 0-based here like the rest of the C API; shapes follow PyTorch:
 * weights [out, in] for linear. */
#ifndef MICROML_LINALG_H
#define MICROML_LINALG_H
#include "tensor.h"

/* NumPy/PyTorch matmul.  1-D x 1-D: dot product (0-dim result); 2-D x 1-D
 * and 1-D x 2-D: matrix-vector (the vector's dim is dropped again from the
 * result); N-D: a batch of matrices in the last two dims, with the leading
 * (batch) dims broadcast, e.g. [B,1,M,K] x [H,K,N] -> [B,H,M,N]. */
mm_tensor *mm_matmul(mm_tensor *a, mm_tensor *b);

/* y = x w^T + b, fused.  x [..., in] (1-D allowed), w [out, in], b [out] or
 * NULL; y [..., out]. */
mm_tensor *mm_linear(mm_tensor *x, mm_tensor *w, mm_tensor *b);

#endif
