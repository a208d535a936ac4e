/* conv.h — convolution and pooling over NCHW images (conv.c).
 *
 * Convolutions go through the GEMM in gemm.h.  All ops are differentiable
 * and take float32 or float64; results do not depend on the thread count.
 * Dims are 0-based; shapes follow PyTorch: NCHW images, weights
 * [O, C, kh, kw]. */
#ifndef MICROML_CONV_H
#define MICROML_CONV_H
#include "tensor.h"

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
