/*
 * microml.h — the public C interface of the MicroML runtime: one include
 * for a C program (`#include <microml/microml.h>`, `pkg-config --cflags
 * microml`).  Start with tensor.h: it explains the data model.
 *
 * The headers form a tree: every family header includes tensor.h and
 * nothing else of ours, and this file includes them all.  What only the
 * runtime itself uses is in internal.h, autograd.h, iter.h and the kernel
 * headers, which are not installed.
 */
#ifndef MICROML_H
#define MICROML_H

#include "tensor.h"   /* data model, lifetime, views, pointwise ops, autograd, threads */
#include "reduce.h"   /* sum, mean, var, max, argmax, logsumexp, norm, ... */
#include "nnops.h"    /* softmax, log_softmax, losses, layer_norm, dropout */
#include "linalg.h"   /* matmul, linear */
#include "conv.h"     /* conv2d, max/avg pooling */
#include "shape.h"    /* cat, stack, split, chunk, pad */
#include "index.h"    /* index_select, gather, scatter_add, embedding, one_hot, batch prefetch */
#include "io.h"       /* IDX, .npy, CSV readers; safetensors save/load */
#include "optim.h"    /* fused optimizer updates */
#include "viz.h"      /* autograd graph export as DOT */

#endif /* MICROML_H */
