/* test_recorder.c — the one recorder (mm_record) and the layers under it,
 * seen from an op author's side: an op with more inputs, saved tensors and
 * argument bytes than the old fixed node slots held; every failure path
 * releases the output; raw kernels never record; grad mode is per thread;
 * the in-place and requires_grad policy holds for C callers too.  Every
 * byte comes back at the end. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "internal.h"

#include "check.h"

/* ---- a wide op: out = sum_k w[k] * x_k over NIN inputs --------------------- */
#define NIN 9
typedef struct {
  double w[NIN];
  char label[200];   /* makes the struct far larger than the old 16 integer slots */
} wide_args;

static int wide_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  const wide_args *a = mm_node_args(n);
  if (n->nsaved != NIN || strcmp(a->label, "wide op arguments") != 0) return -1;
  for (int k = 0; k < NIN; k++) {
    /* the saved tensor is the input itself (an alias of its storage) */
    if (!n->saved[k] || mm_get_flat(n->saved[k], 0) != (double)(k + 1)) return -1;
    if (n->edges[k].needs_grad && !(gin[k] = mm_binary_scalar(MM_OP_MUL, g, a->w[k], false)))
      return -1;
  }
  return 0;
}

static mm_tensor *wide_op(mm_tensor **xs, const wide_args *a) {
  static const mm_op_def WIDE = {"wide", "WideBackward", wide_backward};
  mm_tensor *out = mm_tensor_zeros(MM_FLOAT64, 1, xs[0]->shape);
  /* out = sum w_k x_k computed with raw kernels (no recording) */
  for (int k = 0; out && k < NIN; k++) {
    mm_tensor *wk = mm_tensor_scalar(MM_FLOAT64, a->w[k]);
    mm_tensor *t = mm_raw_binary(MM_OP_MUL, xs[k], wk);
    mm_raw_binary_(MM_OP_ADD, out, t);
    mm_tensor_release(t);
    mm_tensor_release(wk);
  }
  return mm_record(out, &WIDE, NIN, xs, NIN, xs, a, sizeof *a);
}

static void test_wide_op(void) {
  int64_t s1[1] = {1};
  mm_tensor *xs[NIN];
  wide_args a = {{0}, "wide op arguments"};
  for (int k = 0; k < NIN; k++) {
    xs[k] = mm_tensor_full(MM_FLOAT64, 1, s1, k + 1);
    xs[k]->requires_grad = (k % 2 == 0);   /* some inputs get no gradient */
    a.w[k] = 0.5 * (k + 1);
  }
  mm_tensor *y = wide_op(xs, &a);
  CHECK(y && y->grad_fn && !strcmp(mm_grad_fn_name(y), "WideBackward"), "wide op recorded");
  CHECK(y && y->grad_fn->nsaved == NIN, "nine saved tensors");
  CHECK(y && mm_backward(y, NULL, false) == 0, "backward through the wide op");
  for (int k = 0; k < NIN; k++) {
    if (k % 2 == 0)
      CHECK(xs[k]->grad && mm_get_flat(xs[k]->grad, 0) == a.w[k], "gradient is the weight");
    else
      CHECK(xs[k]->grad == NULL, "an input that does not require grad gets none");
  }
  mm_tensor_release(y);
  for (int k = 0; k < NIN; k++) mm_tensor_release(xs[k]);
}

/* ---- failure paths: the recorder releases the output ------------------------ */
static int never_backward(mm_node *n, mm_tensor *g, mm_tensor **gin) {
  (void)n, (void)g, (void)gin;
  return -1;
}

static void test_failures(void) {
  static const mm_op_def INTY = {"inty", "IntyBackward", never_backward};
  int64_t s2[1] = {2};
  mm_tensor *x = mm_tensor_full(MM_FLOAT32, 1, s2, 1.0);
  x->requires_grad = true;
  mm_tensor *out = mm_tensor_zeros(MM_INT64, 1, s2);
  mm_tensor *r = mm_record(out, &INTY, 1, &x, 1, &x, NULL, 0);
  CHECK(r == NULL && strstr(mm_error(), "inty: only floating-point tensors can require gradients"),
        "an integer output of a recorded op is refused, naming the op");
  /* out was released by the recorder: the memory check at the end sees it */
  CHECK(mm_record(NULL, &INTY, 1, &x, 0, NULL, NULL, 0) == NULL, "a NULL output passes through");
  mm_set_grad_enabled(false);
  mm_tensor *o2 = mm_tensor_zeros(MM_FLOAT32, 1, s2);
  CHECK(mm_record(o2, &INTY, 1, &x, 0, NULL, NULL, 0) == o2 && !o2->grad_fn,
        "grad mode off: nothing recorded");
  mm_set_grad_enabled(true);
  mm_tensor_release(o2);
  mm_tensor_release(x);
}

/* ---- raw kernels never record; mixed dtypes record one node ------------------ */
static void test_raw_and_mixed(void) {
  int64_t s3[1] = {3};
  mm_tensor *a = mm_tensor_full(MM_FLOAT32, 1, s3, 2.0);
  mm_tensor *b = mm_tensor_full(MM_FLOAT64, 1, s3, 3.0);
  a->requires_grad = true;
  mm_tensor *r = mm_raw_binary(MM_OP_MUL, a, b);
  CHECK(r && !r->grad_fn && !r->requires_grad && r->dtype == MM_FLOAT64, "raw binary: no node");
  mm_tensor *c = mm_raw_cast(a, MM_FLOAT64);
  CHECK(c && !c->grad_fn, "raw cast: no node");
  mm_tensor *m = mm_binary(MM_OP_MUL, a, b);
  /* the cast of a to float64 inside the op is raw: the product's node has
     the leaf a itself as its input, not a throwaway cast node */
  CHECK(m && m->grad_fn && m->grad_fn->edges[0].leaf == a && !m->grad_fn->edges[0].node,
        "mixed-dtype product records one node on the real input");
  mm_tensor *s = m ? mm_sum(m, MM_ALL_DIMS, false) : NULL;
  CHECK(s && mm_backward(s, NULL, false) == 0 && a->grad && a->grad->dtype == MM_FLOAT32 &&
        mm_get_flat(a->grad, 1) == 3.0, "gradient comes back in the input's dtype");
  mm_tensor_release(s), mm_tensor_release(m), mm_tensor_release(c), mm_tensor_release(r);
  mm_tensor_release(a), mm_tensor_release(b);
}

/* ---- grad mode is per thread ------------------------------------------------- */
static void *other_thread(void *arg) {
  mm_tensor *x = arg;
  mm_set_grad_enabled(false);
  mm_tensor *y = mm_unary(MM_OP_EXP, x);
  bool recorded = y && y->grad_fn;
  mm_tensor_release(y);
  return recorded ? (void *)1 : NULL;
}

static void test_grad_mode_per_thread(void) {
  int64_t s2[1] = {2};
  mm_tensor *x = mm_tensor_full(MM_FLOAT64, 1, s2, 0.5);
  x->requires_grad = true;
  pthread_t th;
  void *res = (void *)1;
  CHECK(pthread_create(&th, NULL, other_thread, x) == 0 && pthread_join(th, &res) == 0,
        "thread runs");
  CHECK(res == NULL, "no_grad on the other thread: it records nothing");
  CHECK(mm_grad_enabled(), "this thread's grad mode is untouched");
  mm_tensor *y = mm_unary(MM_OP_EXP, x);
  CHECK(y && y->grad_fn, "and this thread still records");
  mm_tensor_release(y);
  mm_tensor_release(x);
}

/* ---- requires_grad and in-place policy for C callers ---------------------------- */
static void test_policy(void) {
  int64_t s2[1] = {2};
  mm_tensor *w = mm_tensor_full(MM_FLOAT32, 1, s2, 1.0);
  mm_tensor *i = mm_tensor_zeros(MM_INT64, 1, s2);
  CHECK(mm_set_requires_grad(i, true, "requires_grad") < 0 && strstr(mm_error(), "int64"),
        "an int64 tensor cannot require grad");
  CHECK(mm_set_requires_grad(w, true, "requires_grad") == 0 && w->requires_grad, "leaf requires grad");
  CHECK(mm_fill_(w, 3.0) < 0 && strstr(mm_error(), "fill_: a leaf tensor that requires grad"),
        "fill_ refuses a leaf that requires grad");
  CHECK(mm_binary_scalar_inplace(MM_OP_ADD, w, 1.0) < 0 && strstr(mm_error(), "add_:"),
        "add_ refuses it too");
  CHECK(mm_copy_(w, i) < 0 && strstr(mm_error(), "copy_:"), "and copy_");
  CHECK(mm_get_flat(w, 0) == 1.0, "the leaf is unchanged");
  mm_set_grad_enabled(false);
  CHECK(mm_fill_(w, 3.0) == 0 && mm_get_flat(w, 1) == 3.0, "with grad mode off it may be written");
  mm_set_grad_enabled(true);
  mm_tensor *y = mm_unary(MM_OP_NEG, w);
  CHECK(mm_set_requires_grad(y, false, "requires_grad") < 0 && strstr(mm_error(), "leaf"),
        "a non-leaf cannot stop requiring grad");
  CHECK(mm_set_grad(w, i) < 0 && strstr(mm_error(), "float32/float64"), ".grad must be float");
  mm_detach_(y);
  CHECK(!y->grad_fn && !y->requires_grad && !mm_grad_fn_name(y), "detach_ makes a plain leaf");
  mm_tensor_release(y), mm_tensor_release(w), mm_tensor_release(i);
}

int main(void) {
  mm_memory_stats st0, st1;
  mm_memory_stats_get(&st0);
  test_wide_op();
  test_failures();
  test_raw_and_mixed();
  test_grad_mode_per_thread();
  test_policy();
  mm_memory_stats_get(&st1);
  CHECK(st1.bytes_live == st0.bytes_live, "every storage released");
  mm_empty_cache();
  mm_parallel_shutdown();
  printf("test_recorder: %d passed, %d failed\n", passed, failed);
  return failed != 0;
}
