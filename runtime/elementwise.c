/* elementwise.c — the recorded pointwise ops: broadcasting binary and
 * unary ops with their backward rules, in-place fill/copy/arithmetic,
 * casts and copies, where.  The arithmetic is in pointwise_raw.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"


static bool is_comparison(mm_binary_op op) { return op >= MM_OP_EQ; }
/* ---- binary backward ---------------------------------------------------- */

typedef struct { mm_binary_op op; } binary_args;

static int add_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  for (int i = 0; i < 2; i++)
    if (n->edges[i].needs_grad) { mm_tensor_retain(g); gin[i] = g; }
  return 0;
}

static int sub_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  if (n->edges[0].needs_grad) { mm_tensor_retain(g); gin[0] = g; }
  if (n->edges[1].needs_grad && !(gin[1] = mm_unary(MM_OP_NEG, g))) return -1;
  return 0;
}

static int mul_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  if (n->edges[0].needs_grad && !(gin[0] = mm_binary(MM_OP_MUL, g, n->saved[1]))) return -1;
  if (n->edges[1].needs_grad && !(gin[1] = mm_binary(MM_OP_MUL, g, n->saved[0]))) return -1;
  return 0;
}

/* d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 */
static int div_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *a = n->saved[0], *b = n->saved[1];
  if (n->edges[0].needs_grad && !(gin[0] = mm_binary(MM_OP_DIV, g, b))) return -1;
  if (n->edges[1].needs_grad) {
    mm_tensor *ga = mm_binary(MM_OP_MUL, g, a), *bb = mm_binary(MM_OP_MUL, b, b);
    mm_tensor *q = ga && bb ? mm_binary(MM_OP_DIV, ga, bb) : NULL;
    gin[1] = q ? mm_unary(MM_OP_NEG, q) : NULL;
    mm_tensor_release(ga), mm_tensor_release(bb), mm_tensor_release(q);
    if (!gin[1]) return -1;
  }
  return 0;
}

/* d(a^b)/da = b a^(b-1), taken as 0 where b == 0 (so x^0 and 0^0 give 0,
 * not 0 * inf = NaN); d(a^b)/db = a^b log a, taken as 0 where a == 0 and
 * b >= 0 (the limit; for b < 0 it is inf * -inf = -inf).  Both as PyTorch 1.13. */
static int pow_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *a = n->saved[0], *b = n->saved[1], *out = n->saved[2];
  int rc = -1;
  mm_tensor *bm1 = NULL, *p = NULL, *t = NULL, *la = NULL, *z = NULL, *m = NULL, *gm = NULL;
  mm_tensor *bz = NULL, *az = NULL, *bneg = NULL;
  if (n->edges[0].needs_grad) {
    if (!(bm1 = mm_binary_scalar(MM_OP_SUB, b, 1.0, false))) goto out;
    if (!(p = mm_binary(MM_OP_POW, a, bm1))) goto out;
    if (!(t = mm_binary(MM_OP_MUL, p, b))) goto out;
    if (!(gm = mm_binary(MM_OP_MUL, g, t))) goto out;
    if (!(bz = mm_binary_scalar(MM_OP_NE, b, 0.0, false))) goto out;   /* keep where b != 0 */
    if (!(gin[0] = mm_where(bz, gm, NULL))) goto out;
    mm_tensor_release(gm);
    gm = NULL;
  }
  if (n->edges[1].needs_grad) {
    if (!(la = mm_unary(MM_OP_LOG, a))) goto out;
    if (!(az = mm_binary_scalar(MM_OP_NE, a, 0.0, false))) goto out;
    if (!(bneg = mm_binary_scalar(MM_OP_LT, b, 0.0, false))) goto out;
    if (!(z = mm_binary(MM_OP_MAXIMUM, az, bneg))) goto out;   /* keep where a != 0 or b < 0 */
    if (!(m = mm_binary(MM_OP_MUL, la, out))) goto out;
    if (!(gm = mm_binary(MM_OP_MUL, g, m))) goto out;
    if (!(gin[1] = mm_where(z, gm, NULL))) goto out;
  }
  rc = 0;
out:
  mm_tensor_release(bm1), mm_tensor_release(p), mm_tensor_release(t);
  mm_tensor_release(la), mm_tensor_release(z), mm_tensor_release(m), mm_tensor_release(gm);
  mm_tensor_release(bz), mm_tensor_release(az), mm_tensor_release(bneg);
  return rc;
}

/* Ties split the gradient evenly between the two inputs, as PyTorch does. */
static int maxmin_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const binary_args *args = mm_node_args(n);
  mm_binary_op cmp = args->op == MM_OP_MAXIMUM ? MM_OP_GT : MM_OP_LT;
  mm_tensor *a = n->saved[0], *b = n->saved[1];
  mm_tensor *win = mm_binary(cmp, a, b), *tie = mm_binary(MM_OP_EQ, a, b);
  mm_tensor *half = tie ? mm_binary_scalar(MM_OP_MUL, tie, 0.5, false) : NULL;
  mm_tensor *wa = win && half ? mm_binary(MM_OP_ADD, win, half) : NULL;
  int rc = -1;
  if (!wa) goto out;
  if (n->edges[0].needs_grad && !(gin[0] = mm_binary(MM_OP_MUL, g, wa))) goto out;
  if (n->edges[1].needs_grad) {
    mm_tensor *wb = mm_binary_scalar(MM_OP_SUB, wa, 1.0, true);
    gin[1] = wb ? mm_binary(MM_OP_MUL, g, wb) : NULL;
    mm_tensor_release(wb);
    if (!gin[1]) goto out;
  }
  rc = 0;
out:
  mm_tensor_release(win), mm_tensor_release(tie), mm_tensor_release(half), mm_tensor_release(wa);
  return rc;
}

/* How many tensors each op's backward needs: 0 none, 2 (a, b), 3 (a, b, out). */
static const struct { mm_op_def def; int save; } binary_grad[] = {
  [MM_OP_ADD] = {{"add", "AddBackward", add_backward}, 0},
  [MM_OP_SUB] = {{"sub", "SubBackward", sub_backward}, 0},
  [MM_OP_MUL] = {{"mul", "MulBackward", mul_backward}, 2},
  [MM_OP_DIV] = {{"div", "DivBackward", div_backward}, 2},
  [MM_OP_POW] = {{"pow", "PowBackward", pow_backward}, 3},
  [MM_OP_MAXIMUM] = {{"maximum", "MaximumBackward", maxmin_backward}, 2},
  [MM_OP_MINIMUM] = {{"minimum", "MinimumBackward", maxmin_backward}, 2},
};

mm_tensor *mm_binary(mm_binary_op op, mm_tensor *a, mm_tensor *b) {
  mm_tensor *out = mm_raw_binary(op, a, b);
  if (is_comparison(op)) return out;
  mm_tensor *in[2] = {a, b}, *saved[3] = {a, b, out};
  binary_args args = {op};
  return mm_record(out, &binary_grad[op].def, 2, in, binary_grad[op].save, saved, &args,
                   sizeof args);
}

/* The scalar becomes a 0-dim tensor of the tensor's dtype, except that a
 * non-integral number promotes an int64 tensor to float32. */
static mm_tensor *scalar_like(mm_tensor *a, double s) {
  mm_dtype dt = a->dtype;
  if (dt == MM_INT64 && s != floor(s)) dt = MM_FLOAT32;
  return mm_tensor_scalar(dt, s);
}

mm_tensor *mm_binary_scalar(mm_binary_op op, mm_tensor *a, double s, bool scalar_first) {
  mm_tensor *st = scalar_like(a, s);
  if (!st) return NULL;
  mm_tensor *out = scalar_first ? mm_binary(op, st, a) : mm_binary(op, a, st);
  mm_tensor_release(st);
  return out;
}

int mm_binary_scalar_inplace(mm_binary_op op, mm_tensor *a, double s) {
  mm_tensor *st = mm_tensor_scalar(a->dtype, s);
  if (!st) return -1;
  int rc = mm_binary_inplace(op, a, st);
  mm_tensor_release(st);
  return rc;
}

/* ---- unary pointwise ops: the table -------------------------------------- */

/* What pointwise.def says about each op, indexed by the enum (designated
 * initializers: nothing depends on the order of the lines). */
#define I64(expr) true
#define F_ONLY false
#define PARAMS0 .nparams = 0
#define PARAMS1(n0, d0) .nparams = 1, .param_names = {#n0}, .param_defaults = {d0}
#define PARAMS2(n0, d0, n1, d1) \
  .nparams = 2, .param_names = {#n0, #n1}, .param_defaults = {d0, d1}
#define PARAMS2_ANY(n0, d0, n1, d1) PARAMS2(n0, d0, n1, d1), .need_one = true
#define MM_UNARY(ID, NAME, NODE, INT64, PARAMS, FW, BW) \
  [MM_OP_##ID] = {.name = #NAME, .node = NODE, .int64_ok = INT64, PARAMS},
static const mm_unary_desc unary_table[MM_UNARY_COUNT] = {
#include "pointwise.def"
};
#undef MM_UNARY
#undef I64
#undef F_ONLY
#undef PARAMS0
#undef PARAMS1
#undef PARAMS2
#undef PARAMS2_ANY

const mm_unary_desc *mm_unary_info(mm_unary_op op) {
  return (unsigned)op < MM_UNARY_COUNT ? &unary_table[op] : NULL;
}

const char *mm_unary_name(mm_unary_op op) {
  return (unsigned)op < MM_UNARY_COUNT ? unary_table[op].name : "?";
}

typedef struct { mm_unary_op op; double p[MM_POINTWISE_MAX_PARAMS]; } unary_args;

/* gin = g * f'(x), from the saved input and output, in one raw pass (ReLU's
 * is the fused AVX2 kernel). */
static int unary_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const unary_args *a = mm_node_args(n);
  mm_tensor *x = n->saved[0], *y = n->saved[1];
  char b1[160], b2[160];
  if (g->ndim != x->ndim || memcmp(g->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim)) {
    mm_set_error("%s backward: gradient of shape %s for an output of shape %s",
                 mm_unary_name(a->op), mm_shape_str(g->ndim, g->shape, b1, sizeof b1),
                 mm_shape_str(x->ndim, x->shape, b2, sizeof b2));
    return -1;
  }
  mm_tensor *gc = mm_raw_cast(g, x->dtype);
  gin[0] = gc ? mm_raw_pointwise_grad(a->op, gc, x, y, a->p) : NULL;
  mm_tensor_release(gc);
  return gin[0] ? 0 : -1;
}

/* Beyond this an int64 parameter cannot be represented (2^63 ~ 9.22e18). */
#define INT64_PARAM_LIMIT 9.2e18

mm_tensor *mm_pointwise(mm_unary_op op, mm_tensor *x, const double *params) {
  const mm_unary_desc *d = mm_unary_info(op);
  if (!d) {
    mm_set_error("pointwise: unknown op %d", (int)op);
    return NULL;
  }
  double p[MM_POINTWISE_MAX_PARAMS] = {0};
  for (int i = 0; i < d->nparams; i++) p[i] = params ? params[i] : d->param_defaults[i];
  if (x->dtype == MM_INT64) {
    if (!d->int64_ok) {
      mm_set_error("%s: expected a float32 or float64 tensor, got int64 (convert with :float())",
                   d->name);
      return NULL;
    }
    for (int i = 0; i < d->nparams; i++)
      if (p[i] != floor(p[i])) {   /* fractional or NaN: the result is float, as torch promotes */
        mm_tensor *xf = mm_to_dtype(x, MM_FLOAT32);
        mm_tensor *r = xf ? mm_pointwise(op, xf, p) : NULL;
        mm_tensor_release(xf);
        return r;
      }
    for (int i = 0; i < d->nparams; i++)
      if (isfinite(p[i]) && fabs(p[i]) > INT64_PARAM_LIMIT) {
        mm_set_error("%s: %s = %g is outside the int64 range", d->name, d->param_names[i], p[i]);
        return NULL;
      }
  }
  mm_tensor *out = mm_raw_pointwise(op, x, p);
  if (!d->node) return out;   /* not differentiable (sign) */
  mm_op_def def = {d->name, d->node, unary_backward};
  mm_tensor *saved[2] = {x, out};
  unary_args args = {op, {p[0], p[1]}};
  return mm_record(out, &def, 1, &x, 2, saved, &args, sizeof args);
}

mm_tensor *mm_unary(mm_unary_op op, mm_tensor *a) { return mm_pointwise(op, a, NULL); }

mm_tensor *mm_clamp(mm_tensor *x, const double *lo, const double *hi) {
  if (!lo && !hi) {
    mm_set_error("clamp: expected at least one of min and max, got neither");
    return NULL;
  }
  double p[2] = {lo ? *lo : -INFINITY, hi ? *hi : INFINITY};   /* absent = unbounded */
  return mm_pointwise(MM_OP_CLAMP, x, p);
}

mm_tensor *mm_leaky_relu(mm_tensor *x, double slope) {
  return mm_pointwise(MM_OP_LEAKY_RELU, x, &slope);
}

/* ---- in-place writes, copies and casts ------------------------------------ */

int mm_check_inplace(const mm_tensor *t, const char *op) { return mm_inplace_check(t, op); }

/* In place, as PyTorch: when the write must be recorded (grad mode on and
 * the target, the source or the target's base requires grad), the result
 * is computed out of place by the recorded op and mm_inplace_commit writes
 * it and rebases the history (autograd.h).  Otherwise the raw kernel writes
 * directly; either way the storage's version moves. */

/* Overwritten values get a zero gradient (fill_, and copy_'s destination). */
static int overwritten_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const mm_edge *e = &n->edges[0];
  if (e->needs_grad && !(gin[0] = mm_tensor_zeros(g->dtype, e->ndim, e->shape))) return -1;
  if (n->ninputs > 1 && n->edges[1].needs_grad) {   /* copy_: the source gets g */
    mm_tensor_retain(g);
    gin[1] = g;
  }
  return 0;
}
static const mm_op_def FILL = {"fill_", "FillBackward", overwritten_backward};
static const mm_op_def COPY = {"copy_", "CopyBackward", overwritten_backward};

static int commit(mm_tensor *self, mm_tensor *value, const char *op) {
  if (!value) return -1;
  int rc = mm_inplace_commit(self, value, op);
  mm_tensor_release(value);
  return rc;
}

int mm_fill_(mm_tensor *t, double v) {
  if (mm_inplace_check(t, "fill_") < 0) return -1;
  if (t->dtype == MM_INT64 && v != floor(v)) {
    mm_set_error("fill_: an int64 tensor cannot hold %g", v);
    return -1;
  }
  if (mm_dtype_is_float(t->dtype) && mm_inplace_records(t, NULL))
    return commit(t, mm_record(mm_tensor_full(t->dtype, t->ndim, t->shape, v), &FILL, 1, &t, 0,
                               NULL, NULL, 0), "fill_");
  mm_raw_fill(t, v);
  mm_bump_version(t);
  return 0;
}

int mm_binary_inplace(mm_binary_op op, mm_tensor *a, mm_tensor *b) {
  char name[32];
  snprintf(name, sizeof name, "%s_", mm_binary_name(op));
  if (mm_inplace_check(a, name) < 0) return -1;
  if (mm_dtype_is_float(a->dtype) && !is_comparison(op) && mm_inplace_records(a, b)) {
    if (mm_raw_binary_check_(op, a, b) < 0) return -1;
    return commit(a, mm_binary(op, a, b), name);
  }
  return mm_raw_binary_(op, a, b);
}

int mm_copy_(mm_tensor *dst, mm_tensor *src) {
  if (mm_inplace_check(dst, "copy_") < 0) return -1;
  if (mm_dtype_is_float(dst->dtype) && mm_inplace_records(dst, src)) {
    mm_tensor *val = mm_tensor_empty(dst->dtype, dst->ndim, dst->shape);
    if (val && mm_raw_copy_into(val, src, "copy_") < 0) { mm_tensor_release(val); val = NULL; }
    mm_tensor *in[2] = {dst, src};
    return commit(dst, val ? mm_record(val, &COPY, 2, in, 0, NULL, NULL, 0) : NULL, "copy_");
  }
  if (mm_raw_copy_into(dst, src, "copy_") < 0) return -1;
  mm_bump_version(dst);
  return 0;
}

int mm_set_element_(mm_tensor *t, int64_t i, double v) {
  char b[160];
  int64_t n = mm_numel(t);
  if (i < 0 || i >= n) {
    mm_set_error("_set: flat index %lld is out of range for shape %s (%lld elements)",
                 (long long)i, mm_shape_str(t->ndim, t->shape, b, sizeof b), (long long)n);
    return -1;
  }
  if (mm_inplace_check(t, "_set") < 0) return -1;
  if (t->dtype == MM_INT64 && v != floor(v)) {
    mm_set_error("_set: an int64 tensor cannot hold %g", v);
    return -1;
  }
  if (mm_dtype_is_float(t->dtype) && mm_inplace_records(t, NULL)) {
    /* through a one-element view, so the write is recorded like t[i] = v */
    int64_t off = t->offset, rest = i;
    for (int d = t->ndim - 1; d >= 0; d--) {
      off += (rest % t->shape[d]) * t->stride[d];
      rest /= t->shape[d];
    }
    mm_tensor *e = mm_strided_view(t, 0, NULL, NULL, off);
    int rc = e ? mm_fill_(e, v) : -1;
    mm_tensor_release(e);
    return rc;
  }
  mm_set_flat(t, i, v);
  mm_bump_version(t);
  return 0;
}

static int identity_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  (void)n;
  mm_tensor_retain(g);
  gin[0] = g;
  return 0;
}

static const mm_op_def TO_COPY = {"to", "ToCopyBackward", identity_backward};
static const mm_op_def CLONE = {"clone", "CloneBackward", identity_backward};
static const mm_op_def CONTIGUOUS = {"contiguous", "ContiguousBackward", identity_backward};

mm_tensor *mm_to_dtype(mm_tensor *t, mm_dtype dt) {
  if (t->dtype == dt) { mm_tensor_retain(t); return t; }
  mm_tensor *out = mm_raw_cast(t, dt);
  /* a cast to int64 is not differentiable: the result is a plain tensor */
  return mm_dtype_is_float(dt) ? mm_record(out, &TO_COPY, 1, &t, 0, NULL, NULL, 0) : out;
}

mm_tensor *mm_clone(mm_tensor *t) {
  return mm_record(mm_raw_clone(t), &CLONE, 1, &t, 0, NULL, NULL, 0);
}

mm_tensor *mm_contiguous(mm_tensor *t) {
  if (mm_is_contiguous(t)) { mm_tensor_retain(t); return t; }
  return mm_record(mm_raw_clone(t), &CONTIGUOUS, 1, &t, 0, NULL, NULL, 0);
}

static int where_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  mm_tensor *c = n->saved[0];
  mm_tensor *zero = mm_tensor_scalar(g->dtype, 0);
  if (!zero) return -1;
  if (n->edges[1].needs_grad) gin[1] = mm_where(c, g, zero);
  if (n->edges[2].needs_grad) gin[2] = mm_where(c, zero, g);
  mm_tensor_release(zero);
  return (n->edges[1].needs_grad && !gin[1]) || (n->edges[2].needs_grad && !gin[2]) ? -1 : 0;
}

static const mm_op_def WHERE = {"where", "WhereBackward", where_backward};

mm_tensor *mm_where(mm_tensor *cond, mm_tensor *a, mm_tensor *b) {
  mm_tensor *zero = NULL;
  if (!b && !(b = zero = mm_tensor_scalar(a->dtype, 0))) return NULL;
  mm_tensor *out = mm_raw_where(cond, a, b);
  mm_tensor *cc = NULL;
  mm_tensor *in[3] = {NULL, a, b};   /* the condition gets no gradient */
  if (out && mm_dtype_is_float(out->dtype) && mm_needs_grad(3, in)) {
    cc = mm_raw_cast(cond, out->dtype);   /* saved in the output's dtype */
    if (cc) out = mm_record(out, &WHERE, 3, in, 1, &cc, NULL, 0);
    else { mm_tensor_release(out); out = NULL; }
  }
  mm_tensor_release(cc);
  mm_tensor_release(zero);
  return out;
}

mm_tensor *mm_masked_fill(mm_tensor *t, mm_tensor *mask, double value) {
  mm_tensor *v = mm_tensor_scalar(t->dtype, value);
  if (!v) return NULL;
  mm_tensor *out = mm_where(mask, v, t);
  mm_tensor_release(v);
  return out;
}