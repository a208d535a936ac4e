/* view.c — ops that return a view over the same storage, and their
 * backward rules.  Only geometry changes here; no element is copied except
 * by reshape when no view is possible. */
#include <string.h>

#include "autograd.h"
#include "internal.h"

/* reshape-like backward: the gradient takes the input's shape again. */
static int reshape_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  gin[0] = mm_reshape(g, n->edges[0].ndim, n->edges[0].shape);
  return gin[0] ? 0 : -1;
}

/* expand backward: the engine's sum_to reduces the broadcast dims. */
static int expand_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  (void)n;
  mm_tensor_retain(g);
  gin[0] = g;
  return 0;
}

static int permute_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  int inv[MM_MAX_DIMS];
  const int64_t *perm = mm_node_args(n);
  for (int i = 0; i < g->ndim; i++) inv[perm[i]] = i;
  gin[0] = mm_permute(g, g->ndim, inv);
  return gin[0] ? 0 : -1;
}

/* narrow/select backward: scatter the gradient into zeros of the input's shape. */
static int narrow_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_edge *e = &n->edges[0];
  mm_tensor *z = mm_tensor_zeros(g->dtype, e->ndim, e->shape);
  if (!z) return -1;
  const int64_t *a = mm_node_args(n);   /* dim, start, length (-1: select) */
  int dim = (int)a[0];
  mm_tensor *part = a[2] < 0 ? mm_select(z, dim, a[1]) : mm_narrow(z, dim, a[1], a[2]);
  if (!part || mm_copy_(part, g) < 0) {
    mm_tensor_release(part);
    mm_tensor_release(z);
    return -1;
  }
  mm_tensor_release(part);
  gin[0] = z;
  return 0;
}

/* Wraps base's storage with a new geometry and records the view op; the
 * node's arguments are niargs integers (dims, offsets) for its backward. */
static mm_tensor *make_view(mm_tensor *base, int ndim, const int64_t *shape,
                            const int64_t *stride, int64_t offset, const char *op,
                            const char *name, mm_backward_fn fn, const int64_t *iargs,
                            int niargs) {
  mm_tensor *v = mm_tensor_view_checked(base, ndim, shape, stride, offset, op);
  if (!v) return NULL;
  mm_view_set_base(v, base);
  mm_op_def def = {op, name, fn};
  return mm_record(v, &def, 1, &base, 0, NULL, iargs, sizeof(int64_t) * (size_t)niargs);
}

/* Resolves one -1 and checks the element count. */
static int infer_shape(const mm_tensor *t, int ndim, const int64_t *in, int64_t *out,
                       const char *where) {
  char b1[160], b2[160];
  if (ndim > MM_MAX_DIMS) {
    mm_set_error("%s: expected at most %d dimensions, got %d", where, MM_MAX_DIMS, ndim);
    return -1;
  }
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < ndim; i++) {
    if (in[i] == -1) {
      if (infer >= 0) {
        mm_set_error("%s: only one dimension can be -1, got %s", where,
                     mm_shape_str(ndim, in, b1, sizeof b1));
        return -1;
      }
      infer = i;
    } else if (in[i] < 0) {
      mm_set_error("%s: expected sizes >= 0 or one -1, got %lld", where, (long long)in[i]);
      return -1;
    } else if (__builtin_mul_overflow(known, in[i], &known)) {
      /* a wrapped product could match numel by accident */
      mm_set_error("%s: shape %s has too many elements", where,
                   mm_shape_str(ndim, in, b1, sizeof b1));
      return -1;
    }
    out[i] = in[i];
  }
  int64_t n = mm_numel(t);
  if (infer >= 0) {
    if (known == 0 || n % known) {
      mm_set_error("%s: shape %s is invalid for a tensor of %lld elements", where,
                   mm_shape_str(ndim, in, b1, sizeof b1), (long long)n);
      return -1;
    }
    out[infer] = n / known;
  } else if (known != n) {
    mm_set_error("%s: shape %s is invalid for a tensor of shape %s (%lld elements)", where,
                 mm_shape_str(ndim, in, b1, sizeof b1),
                 mm_shape_str(t->ndim, t->shape, b2, sizeof b2), (long long)n);
    return -1;
  }
  return 0;
}

/* Strides for viewing t with a new shape without copying, if possible:
 * groups of old dims that are contiguous among themselves can be split or
 * merged freely; a new dim may not straddle two such groups. */
static bool view_strides(const mm_tensor *t, int nd, const int64_t *shape, int64_t *stride) {
  if (mm_numel(t) == 0 || mm_is_contiguous(t)) {
    mm_contiguous_strides(nd, shape, stride);
    return true;
  }
  int vd = nd - 1;
  int64_t base_stride = t->ndim ? t->stride[t->ndim - 1] : 1, tn = 1, vn = 1;
  for (int td = t->ndim - 1; td >= 0; td--) {
    tn *= t->shape[td];
    bool group_ends = td == 0 || (t->shape[td - 1] != 1 && t->stride[td - 1] != tn * base_stride);
    if (!group_ends) continue;
    while (vd >= 0 && (vn < tn || shape[vd] == 1)) {
      stride[vd] = vn * base_stride;
      vn *= shape[vd];
      vd--;
    }
    if (vn != tn) return false;
    if (td > 0) { base_stride = t->stride[td - 1]; tn = 1; vn = 1; }
  }
  return vd == -1;
}

mm_tensor *mm_view(mm_tensor *t, int ndim, const int64_t *in_shape) {
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  char b1[160];
  if (infer_shape(t, ndim, in_shape, shape, "view") < 0) return NULL;
  if (!view_strides(t, ndim, shape, stride)) {
    mm_set_error("view: shape %s is not compatible with the input's strides (it is not "
                 "contiguous); use reshape, or contiguous() first",
                 mm_shape_str(ndim, shape, b1, sizeof b1));
    return NULL;
  }
  return make_view(t, ndim, shape, stride, t->offset, "view", "ViewBackward", reshape_backward,
                   NULL, 0);
}

mm_tensor *mm_reshape(mm_tensor *t, int ndim, const int64_t *in_shape) {
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  if (infer_shape(t, ndim, in_shape, shape, "reshape") < 0) return NULL;
  if (view_strides(t, ndim, shape, stride))
    return make_view(t, ndim, shape, stride, t->offset, "reshape", "ReshapeBackward",
                     reshape_backward, NULL, 0);
  mm_tensor *c = mm_contiguous(t);
  if (!c) return NULL;
  mm_tensor *r = mm_view(c, ndim, shape);
  mm_tensor_release(c);
  return r;
}

mm_tensor *mm_permute(mm_tensor *t, int ndim, const int *perm) {
  if (ndim != t->ndim) {
    mm_set_error("permute: expected %d dimensions in the permutation, got %d", t->ndim, ndim);
    return NULL;
  }
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS], iargs[MM_MAX_DIMS];
  bool seen[MM_MAX_DIMS] = {0};
  for (int i = 0; i < ndim; i++) {
    int d = mm_wrap_dim(perm[i], ndim, "permute");
    if (d < 0) return NULL;
    if (seen[d]) {
      mm_set_error("permute: dimension %d appears twice in the permutation", d + 1);
      return NULL;
    }
    seen[d] = true;
    shape[i] = t->shape[d];
    stride[i] = t->stride[d];
    iargs[i] = d;
  }
  return make_view(t, ndim, shape, stride, t->offset, "permute", "PermuteBackward",
                   permute_backward, iargs, ndim);
}

mm_tensor *mm_transpose(mm_tensor *t, int d0, int d1) {
  if (t->ndim < 2 && (t->ndim == 0 || ((d0 == 0 || d0 == -1) && (d1 == 0 || d1 == -1)))) {
    mm_tensor_retain(t); /* transposing a vector or scalar is the identity, as in PyTorch */
    return t;
  }
  if ((d0 = mm_wrap_dim(d0, t->ndim, "transpose")) < 0) return NULL;
  if ((d1 = mm_wrap_dim(d1, t->ndim, "transpose")) < 0) return NULL;
  int perm[MM_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) perm[i] = i;
  perm[d0] = d1;
  perm[d1] = d0;
  mm_tensor *r = mm_permute(t, t->ndim, perm);
  if (r && r->grad_fn) r->grad_fn->name = "TransposeBackward";
  return r;
}

mm_tensor *mm_narrow(mm_tensor *t, int dim, int64_t start, int64_t len) {
  if ((dim = mm_wrap_dim(dim, t->ndim, "narrow")) < 0) return NULL;
  if (t->ndim == 0) {
    mm_set_error("narrow: expected a tensor with at least 1 dimension, got a scalar");
    return NULL;
  }
  int64_t size = t->shape[dim];
  /* len > size - start, not start + len > size: the sum overflows for
   * lengths near 2^63 and would let a view run past its storage. */
  if (start < 0 || len < 0 || start > size || len > size - start) {
    mm_set_error("narrow: start %lld and length %lld are out of bounds for dimension %d of "
                 "size %lld (expected start 1..%lld and length 0..%lld)",
                 (long long)(start < INT64_MAX ? start + 1 : start), (long long)len, dim + 1,
                 (long long)size, (long long)size + 1,
                 (long long)(start < 0 || start > size ? size : size - start));
    return NULL;
  }
  int64_t shape[MM_MAX_DIMS], offset = t->offset;
  memcpy(shape, t->shape, sizeof shape);
  shape[dim] = len;
  int64_t iargs[3] = {dim, start, len};
  /* start <= size, so this overflows only for an empty t with huge strides;
   * -1 then makes mm_tensor_view_checked reject anything non-empty. */
  int64_t step;
  if (!mm_mul_ok(start, t->stride[dim], &step) || !mm_add_ok(offset, step, &offset)) offset = -1;
  return make_view(t, t->ndim, shape, t->stride, offset,
                   "narrow", "NarrowBackward", narrow_backward, iargs, 3);
}

mm_tensor *mm_select(mm_tensor *t, int dim, int64_t index) {
  if (t->ndim == 0) {
    mm_set_error("select: cannot index a scalar (0-dimensional) tensor");
    return NULL;
  }
  if ((dim = mm_wrap_dim(dim, t->ndim, "select")) < 0) return NULL;
  int64_t size = t->shape[dim];
  if (index < -size || index >= size) {
    mm_set_error("index %lld is out of range for dimension %d of size %lld (expected 1..%lld "
                 "or -%lld..-1)", (long long)(index >= 0 ? index + 1 : index), dim + 1,
                 (long long)size, (long long)size, (long long)size);
    return NULL;
  }
  if (index < 0) index += size;
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  int k = 0;
  for (int i = 0; i < t->ndim; i++)
    if (i != dim) { shape[k] = t->shape[i]; stride[k] = t->stride[i]; k++; }
  int64_t iargs[3] = {dim, index, -1};
  /* Only an empty t (another size 0, any strides) can overflow here. */
  int64_t step, offset = t->offset;
  if (!mm_mul_ok(index, t->stride[dim], &step) || !mm_add_ok(offset, step, &offset)) offset = 0;
  return make_view(t, k, shape, stride, offset, "select", "SelectBackward", narrow_backward,
                   iargs, 3);
}

mm_tensor *mm_expand(mm_tensor *t, int ndim, const int64_t *sizes) {
  char b1[160], b2[160];
  if (ndim < t->ndim || ndim > MM_MAX_DIMS) {
    mm_set_error("expand: expected at least %d sizes for a tensor of shape %s, got %d", t->ndim,
                 mm_shape_str(t->ndim, t->shape, b1, sizeof b1), ndim);
    return NULL;
  }
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  int lead = ndim - t->ndim;
  for (int i = 0; i < ndim; i++) {
    int td = i - lead;
    int64_t want = sizes[i];
    if (td < 0) {
      if (want < 0) goto bad;
      shape[i] = want;
      stride[i] = 0;
    } else if (want == -1 || want == t->shape[td]) {
      shape[i] = t->shape[td];
      stride[i] = t->stride[td];
    } else if (t->shape[td] == 1 && want >= 0) {
      shape[i] = want;
      stride[i] = 0;
    } else {
      goto bad;
    }
  }
  return make_view(t, ndim, shape, stride, t->offset, "expand", "ExpandBackward",
                   expand_backward, NULL, 0);
bad:
  mm_set_error("expand: cannot expand shape %s to %s (only size-1 dimensions stretch)",
               mm_shape_str(t->ndim, t->shape, b1, sizeof b1),
               mm_shape_str(ndim, sizes, b2, sizeof b2));
  return NULL;
}

mm_tensor *mm_squeeze(mm_tensor *t, int dim) {
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  int k = 0;
  if (dim != MM_ALL_DIMS && t->ndim > 0 && (dim = mm_wrap_dim(dim, t->ndim, "squeeze")) < 0)
    return NULL;
  for (int i = 0; i < t->ndim; i++) {
    bool drop = t->shape[i] == 1 && (dim == MM_ALL_DIMS || dim == i);
    if (!drop) { shape[k] = t->shape[i]; stride[k] = t->stride[i]; k++; }
  }
  return make_view(t, k, shape, stride, t->offset, "squeeze", "SqueezeBackward",
                   reshape_backward, NULL, 0);
}

mm_tensor *mm_unsqueeze(mm_tensor *t, int dim) {
  if (t->ndim == MM_MAX_DIMS) {
    mm_set_error("unsqueeze: a tensor has at most %d dimensions", MM_MAX_DIMS);
    return NULL;
  }
  if ((dim = mm_wrap_dim(dim, t->ndim + 1, "unsqueeze")) < 0) return NULL;
  int64_t shape[MM_MAX_DIMS], stride[MM_MAX_DIMS];
  for (int i = 0, k = 0; i <= t->ndim; i++) {
    if (i == dim) {
      shape[i] = 1;
      /* any stride suits a size-1 dim; this one keeps contiguity, and 1
       * where the product overflows (only in an empty tensor) */
      if (k >= t->ndim || !mm_mul_ok(t->stride[k], t->shape[k], &stride[i])) stride[i] = 1;
    } else {
      shape[i] = t->shape[k];
      stride[i] = t->stride[k];
      k++;
    }
  }
  return make_view(t, t->ndim + 1, shape, stride, t->offset, "unsqueeze", "UnsqueezeBackward",
                   reshape_backward, NULL, 0);
}
