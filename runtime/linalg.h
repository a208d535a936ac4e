/* linalg.h — matrix products and convolutions: matmul, linear, conv2d and
 * 2-D pooling.  Included by microml.h.
 *
 * Every product goes through the GEMM in gemm.h; transposed and strided
 * operands are passed to it as strides, never copied, as long as each matrix
 * has a unit stride in one of its two dims.  All ops are differentiable and
 * take float32 or float64 (mixed inputs promote to float64); int64 inputs
 * are refused with a message.  Results do not depend on the thread count.
 *
 * Dims are 0-based here like the rest of the C API; shapes follow PyTorch:
 * NCHW images, weights [out, in] for linear and [O, C, kh, kw] for conv2d. */
#ifndef MICROML_LINALG_H
#define MICROML_LINALG_H
#include "microml.h"

/* NumPy/PyTorch matmul.  1-D x 1-D: dot product (0-dim result); 2-D x 1-D
 * and 1-D x 2-D: matrix-vector (the vector's dim is dropped again from the
 * result); N-D: a batch of matrices in the last two dims, with the leading
 * (batch) dims broadcast, e.g. [B,1,M,K] x [H,K,N] -> [B,H,M,N]. */
mm_tensor *mm_matmul(mm_tensor *a, mm_tensor *b);

/* y = x w^T + b, fused.  x [..., in] (1-D allowed), w [out, in], b [out] or
 * NULL; y [..., out]. */
mm_tensor *mm_linear(mm_tensor *x, mm_tensor *w, mm_tensor *b);

/* 2-D convolution (cross-correlation, as in every DL library).
 * x [N, C, H, W], w [O, C, kh, kw], b [O] or NULL; stride {sh, sw} >= 1,
 * padding {ph, pw} >= 0 (zeros).  Result [N, O, Ho, Wo] with
 * Ho = (H + 2 ph - kh) / sh + 1. */
mm_tensor *mm_conv2d(mm_tensor *x, mm_tensor *w, mm_tensor *b, const int64_t stride[2],
                     const int64_t padding[2]);

/* Pooling over x [N, C, H, W] with kernel {kh, kw}, stride and padding as
 * above (padding at most half the kernel, as PyTorch requires).  max: padded
 * cells never win, NaN propagates, ties go to the first cell in row-major
 * order (which also gets the whole gradient).  avg: padded cells count as
 * zeros in the window (PyTorch's count_include_pad = True). */
mm_tensor *mm_max_pool2d(mm_tensor *x, const int64_t kernel[2], const int64_t stride[2],
                         const int64_t padding[2]);
mm_tensor *mm_avg_pool2d(mm_tensor *x, const int64_t kernel[2], const int64_t stride[2],
                         const int64_t padding[2]);

#endif
