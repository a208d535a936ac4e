/* tensor_class.c — the Tensor userdata class: lifetime, creation, shape
 * and view methods, data access, elementwise arithmetic and the
 * metamethods.  mm_lua_open_tensor registers them (families.h).
 *
 * A userdata box (lua_helpers.h) holds one reference to an mm_tensor.
 * __gc, __close and :free() share one idempotent release; a freed box raises
 * a clear error on use. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lua_helpers.h"

/* The methods table, for __index (held in the registry). */
static int methods_ref = LUA_NOREF;

/* Applies requires_grad from an options table to a fresh leaf. */
static void apply_requires_grad(lua_State *L, int opts, mm_tensor *t) {
  if (mm_lua_opt_bool(L, opts, "requires_grad", false)) {
    if (mm_set_requires_grad(t, true, "requires_grad") < 0) mm_lua_error(L);
  }
}

/* The options every creation function takes; PyTorch's device, layout,
 * pin_memory, ... are refused as unknown. */
static void creation_opts(lua_State *L, int opts, const char *where) {
  static const char *const known[] = {"dtype", "requires_grad", NULL};
  mm_lua_check_options(L, opts, where, known);
}

/* The end of a creation call's arguments: the options table at opts (or
 * nothing), and nothing after it.  A nil among the sizes (randn(n, nil,
 * opts)) would otherwise hide the options behind it. */
static void creation_tail(lua_State *L, int opts, const char *where) {
  creation_opts(L, opts, where);
  if (lua_gettop(L) > opts && lua_isnil(L, opts))
    luaL_argerror(L, opts, "expected a size or an options table, got nil");
  mm_lua_check_arity(L, where, opts);
}

/* ---- lifetime --------------------------------------------------------------- */

static int t_release(lua_State *L) {
  mm_lua_box *b = mm_lua_test_box(L, 1);
  if (!b) return luaL_typeerror(L, 1, "Tensor");
  if (b->t) {
    mm_tensor_release(b->t);
    b->t = NULL;
  }
  return 0;
}

/* ---- creation ---------------------------------------------------------------- */

/* Shape and dtype of a nested table, checking it is rectangular. */
static void table_shape(lua_State *L, int idx, int depth, int *nd, int64_t *shape, bool *all_int) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  if (depth >= MM_MAX_DIMS) luaL_error(L, "tensor: nested more than %d levels", MM_MAX_DIMS);
  if (depth == *nd) {
    shape[(*nd)++] = n;
    if (n > 0) {
      lua_rawgeti(L, idx, 1);
      if (lua_istable(L, -1)) table_shape(L, lua_gettop(L), depth + 1, nd, shape, all_int);
      lua_pop(L, 1);
    }
  }
}

static void table_fill(lua_State *L, int idx, int depth, int nd, const int64_t *shape,
                       mm_tensor *t, int64_t *pos, bool *all_int) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  if (n != shape[depth])
    luaL_error(L, "tensor: ragged nested table (expected %I elements at depth %d, got %I)",
               (lua_Integer)shape[depth], depth + 1, n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    if (depth == nd - 1) {
      if (lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "tensor: expected a number at depth %d, got %s", depth + 1, luaL_typename(L, -1));
      if (t) mm_set_flat(t, *pos, lua_tonumber(L, -1));
      else if (!lua_isinteger(L, -1)) *all_int = false;
      (*pos)++;
    } else {
      if (!lua_istable(L, -1))
        luaL_error(L, "tensor: ragged nested table (expected a table at depth %d, got %s)",
                   depth + 2, luaL_typename(L, -1));
      table_fill(L, lua_gettop(L), depth + 1, nd, shape, t, pos, all_int);
    }
    lua_pop(L, 1);
  }
}

/* mm.tensor(data [, {dtype=, requires_grad=}]): all-integer data gives
 * int64 and anything else float32, as torch.tensor does. */
static int l_tensor(lua_State *L) {
  int opts = 2;
  mm_lua_check_arity(L, "tensor", 2);
  creation_opts(L, opts, "tensor");
  if (mm_lua_test(L, 1)) {
    mm_tensor *c = mm_clone(mm_lua_check(L, 1));
    if (c) mm_detach_(c);
    mm_dtype dt = mm_lua_opt_dtype(L, opts, c ? c->dtype : MM_FLOAT32);
    if (c && dt != c->dtype) { mm_tensor *d = mm_to_dtype(c, dt); mm_tensor_release(c); c = d; }
    mm_lua_push(L, c);
    apply_requires_grad(L, opts, mm_lua_check(L, -1));
    return 1;
  }
  if (lua_type(L, 1) == LUA_TNUMBER) {
    mm_dtype dt = mm_lua_opt_dtype(L, opts, lua_isinteger(L, 1) ? MM_INT64 : MM_FLOAT32);
    mm_lua_push(L, mm_tensor_scalar(dt, lua_tonumber(L, 1)));
    apply_requires_grad(L, opts, mm_lua_check(L, -1));
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  int nd = 0;
  int64_t shape[MM_MAX_DIMS];
  bool all_int = true;
  table_shape(L, 1, 0, &nd, shape, &all_int);
  int64_t pos = 0;
  table_fill(L, 1, 0, nd, shape, NULL, &pos, &all_int);   /* validate + infer dtype */
  mm_dtype dt = mm_lua_opt_dtype(L, opts, all_int && pos > 0 ? MM_INT64 : MM_FLOAT32);
  mm_tensor *t = mm_tensor_empty(dt, nd, shape);
  if (!t) return mm_lua_error(L);
  mm_lua_push(L, t);
  pos = 0;
  table_fill(L, 1, 0, nd, shape, t, &pos, &all_int);
  apply_requires_grad(L, opts, t);
  return 1;
}

static int make_filled(lua_State *L, int first, double value, bool fill, const char *where) {
  int64_t shape[MM_MAX_DIMS];
  int next;
  int nd = mm_lua_check_shape(L, first, shape, &next);
  creation_tail(L, next, where);
  mm_dtype dt = mm_lua_opt_dtype(L, next, MM_FLOAT32);
  if (!lua_isnoneornil(L, next) && !lua_istable(L, next))
    luaL_argerror(L, next, lua_pushfstring(L, "expected a size or an options table, got %s",
                                           luaL_typename(L, next)));
  mm_tensor *t = fill ? mm_tensor_full(dt, nd, shape, value) : mm_tensor_empty(dt, nd, shape);
  mm_lua_push(L, t);
  apply_requires_grad(L, next, t);
  return 1;
}

static int l_zeros(lua_State *L) { return make_filled(L, 1, 0, true, "zeros"); }
static int l_ones(lua_State *L) { return make_filled(L, 1, 1, true, "ones"); }
static int l_empty(lua_State *L) { return make_filled(L, 1, 0, false, "empty"); }

/* mm.full(shape..., value [, opts]) — the value is the last number. */
static int l_full(lua_State *L) {
  int top = lua_gettop(L), vidx = top;
  /* index 0 is not a valid stack slot: check the count first */
  if (top < 1) return luaL_error(L, "full: expected sizes and a fill value, got no arguments");
  if (lua_istable(L, top) && !mm_lua_is_sequence(L, top)) vidx = top - 1;
  if (vidx < 1) return luaL_error(L, "full: expected sizes and a fill value, got only options");
  double v = luaL_checknumber(L, vidx);
  int64_t shape[MM_MAX_DIMS];
  int nd = 0;
  if (lua_istable(L, 1)) nd = mm_lua_check_shape(L, 1, shape, NULL);
  else
    for (int i = 1; i < vidx; i++) {
      if (nd == MM_MAX_DIMS) luaL_argerror(L, i, "too many dimensions");
      shape[nd] = mm_lua_check_int(L, i);
      if (shape[nd] < 0) luaL_argerror(L, i, "expected a size >= 0");
      nd++;
    }
  int opts = vidx + 1;
  creation_opts(L, opts, "full");
  mm_lua_check_arity(L, "full", opts);
  mm_dtype dt = mm_lua_opt_dtype(L, opts, MM_FLOAT32);
  mm_tensor *t = mm_tensor_full(dt, nd, shape, v);
  mm_lua_push(L, t);
  apply_requires_grad(L, opts, t);
  return 1;
}

static int l_rand(lua_State *L) {
  int64_t shape[MM_MAX_DIMS];
  int next;
  int nd = mm_lua_check_shape(L, 1, shape, &next);
  creation_tail(L, next, "rand");
  mm_dtype dt = mm_lua_opt_dtype(L, next, MM_FLOAT32);
  if (dt == MM_INT64) luaL_error(L, "rand: expected a float dtype, got int64 (use randint)");
  mm_tensor *t = mm_rand(dt, nd, shape);
  mm_lua_push(L, t);
  apply_requires_grad(L, next, t);
  return 1;
}

static int l_randn(lua_State *L) {
  int64_t shape[MM_MAX_DIMS];
  int next;
  int nd = mm_lua_check_shape(L, 1, shape, &next);
  creation_tail(L, next, "randn");
  mm_dtype dt = mm_lua_opt_dtype(L, next, MM_FLOAT32);
  if (dt == MM_INT64) luaL_error(L, "randn: expected a float dtype, got int64");
  mm_tensor *t = mm_randn(dt, nd, shape);
  mm_lua_push(L, t);
  apply_requires_grad(L, next, t);
  return 1;
}

/* mm.randint(low, high, shape...) — values in [low, high), like torch. */
static int l_randint(lua_State *L) {
  int64_t lo = mm_lua_check_int(L, 1), hi = mm_lua_check_int(L, 2);
  int64_t shape[MM_MAX_DIMS];
  int nd = mm_lua_check_shape(L, 3, shape, NULL);
  return mm_lua_push(L, mm_randint(lo, hi, nd, shape));
}

/* A random permutation of 1..n: Lua indices are 1-based. */
static int l_randperm(lua_State *L) {
  mm_tensor *p = mm_randperm(mm_lua_check_int(L, 1));
  if (p) mm_binary_scalar_inplace(MM_OP_ADD, p, 1);
  return mm_lua_push(L, p);
}

static int like(lua_State *L, int kind) {
  mm_tensor *src = mm_lua_check(L, 1);
  static const char *const names[] = {"zeros_like", "ones_like", "randn_like", "full_like", "rand_like"};
  creation_opts(L, kind == 3 ? 3 : 2, names[kind]);
  mm_lua_check_arity(L, names[kind], kind == 3 ? 3 : 2);
  mm_dtype dt = mm_lua_opt_dtype(L, kind == 3 ? 3 : 2, src->dtype);
  mm_tensor *t;
  switch (kind) {
  case 0: t = mm_tensor_zeros(dt, src->ndim, src->shape); break;
  case 1: t = mm_tensor_full(dt, src->ndim, src->shape, 1); break;
  case 2: t = mm_randn(dt, src->ndim, src->shape); break;
  case 4: t = mm_rand(dt, src->ndim, src->shape); break;
  default: t = mm_tensor_full(dt, src->ndim, src->shape, luaL_checknumber(L, 2)); break;
  }
  mm_lua_push(L, t);
  apply_requires_grad(L, kind == 3 ? 3 : 2, t);
  return 1;
}
static int l_zeros_like(lua_State *L) { return like(L, 0); }
static int l_ones_like(lua_State *L) { return like(L, 1); }
static int l_randn_like(lua_State *L) { return like(L, 2); }
static int l_full_like(lua_State *L) { return like(L, 3); }
static int l_rand_like(lua_State *L) { return like(L, 4); }

/* mm.arange(end) / arange(start, end [, step]) — end excluded, as torch. */
static int l_arange(lua_State *L) {
  int n = lua_gettop(L);
  int opts = lua_istable(L, n) ? n : 0;
  int nums = opts ? n - 1 : n;
  double start = 0, end, step = 1;
  bool all_int = true;
  for (int i = 1; i <= nums; i++) {
    luaL_checknumber(L, i);
    all_int &= lua_isinteger(L, i) != 0;
  }
  if (nums == 1) end = luaL_checknumber(L, 1);
  else if (nums == 2 || nums == 3) {
    start = luaL_checknumber(L, 1);
    end = luaL_checknumber(L, 2);
    if (nums == 3) step = luaL_checknumber(L, 3);
  } else return luaL_error(L, "arange: expected (end), (start, end) or (start, end, step), got %d numbers", nums);
  creation_opts(L, opts, "arange");
  mm_dtype dt = mm_lua_opt_dtype(L, opts, all_int ? MM_INT64 : MM_FLOAT32);
  mm_tensor *t = mm_arange(dt, start, end, step);
  mm_lua_push(L, t);
  if (opts) apply_requires_grad(L, opts, t);
  return 1;
}

static int l_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  int64_t steps = mm_lua_check_int(L, 3);
  creation_opts(L, 4, "linspace");
  mm_lua_check_arity(L, "linspace", 4);
  mm_dtype dt = mm_lua_opt_dtype(L, 4, MM_FLOAT32);
  mm_tensor *t = mm_linspace(dt, a, b, steps);
  mm_lua_push(L, t);
  apply_requires_grad(L, 4, t);
  return 1;
}

static int l_eye(lua_State *L) {
  int64_t n = mm_lua_check_int(L, 1);
  int opts = 2;
  int64_t m = n;
  if (lua_type(L, 2) == LUA_TNUMBER) { m = mm_lua_check_int(L, 2); opts = 3; }
  creation_opts(L, opts, "eye");
  mm_lua_check_arity(L, "eye", opts);
  if (n < 0 || m < 0) return luaL_error(L, "eye: expected sizes >= 0, got %I and %I", (lua_Integer)n, (lua_Integer)m);
  mm_lua_push(L, mm_eye(mm_lua_opt_dtype(L, opts, MM_FLOAT32), n, m));
  apply_requires_grad(L, opts, mm_lua_check(L, -1));
  return 1;
}

static int l_manual_seed(lua_State *L) {
  mm_manual_seed((uint64_t)mm_lua_check_int(L, 1));
  return 0;
}

/* The generator's whole state as a plain table, for checkpoints. */
static int l_get_rng_state(lua_State *L) {
  mm_rng_state st;
  mm_rng_get_state(&st);
  lua_createtable(L, 6, 0);
  for (int i = 0; i < 4; i++) {
    lua_pushinteger(L, (lua_Integer)st.s[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushnumber(L, st.spare), lua_rawseti(L, -2, 5);
  lua_pushboolean(L, st.has_spare), lua_rawseti(L, -2, 6);
  return 1;
}
static int l_set_rng_state(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  mm_rng_state st;
  for (int i = 0; i < 4; i++) {
    if (lua_rawgeti(L, 1, i + 1) != LUA_TNUMBER || !lua_isinteger(L, -1))
      luaL_argerror(L, 1, "expected a table from mm.get_rng_state()");
    st.s[i] = (uint64_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  if (!(st.s[0] | st.s[1] | st.s[2] | st.s[3]))
    luaL_argerror(L, 1, "an all-zero generator state is invalid");
  lua_rawgeti(L, 1, 5);
  st.spare = lua_tonumber(L, -1);
  lua_rawgeti(L, 1, 6);
  st.has_spare = lua_toboolean(L, -1);
  mm_rng_set_state(&st);
  return 0;
}

static int l_set_num_threads(lua_State *L) {
  int64_t n = mm_lua_check_int(L, 1);
  if (n < 1 || n > MM_MAX_THREADS)
    luaL_argerror(L, 1, lua_pushfstring(L, "expected 1..%d threads, got %I", MM_MAX_THREADS, (lua_Integer)n));
  mm_set_num_threads((int)n);
  return 0;
}
static int l_get_num_threads(lua_State *L) {
  lua_pushinteger(L, mm_get_num_threads());
  return 1;
}

static int l_memory_stats(lua_State *L) {
  mm_memory_stats s;
  mm_memory_stats_get(&s);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)s.bytes_live), lua_setfield(L, -2, "bytes_live");
  lua_pushinteger(L, (lua_Integer)s.bytes_cached), lua_setfield(L, -2, "bytes_cached");
  lua_pushinteger(L, (lua_Integer)s.bytes_peak), lua_setfield(L, -2, "bytes_peak");
  lua_pushinteger(L, (lua_Integer)s.alloc_count), lua_setfield(L, -2, "alloc_count");
  lua_pushinteger(L, (lua_Integer)s.system_allocs), lua_setfield(L, -2, "system_allocs");
  lua_pushinteger(L, (lua_Integer)s.bytes_limit), lua_setfield(L, -2, "bytes_limit");
  return 1;
}
static int l_empty_cache(lua_State *L) { (void)L; mm_empty_cache(); return 0; }
static int l_set_memory_limit(lua_State *L) {
  lua_Number n = luaL_optnumber(L, 1, 0);
  if (!(n >= 0) || n > 9.2e18) luaL_argerror(L, 1, "expected a byte count >= 0 (0 removes the limit)");
  mm_set_memory_limit((uint64_t)n);
  return 0;
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, mm_lua_test_box(L, 1) != NULL);
  return 1;
}

/* ---- geometry ------------------------------------------------------------------ */

static void push_int_table(lua_State *L, int n, const int64_t *v) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)v[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

static int m_shape(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  push_int_table(L, t->ndim, t->shape);
  return 1;
}
static int m_size(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (lua_isnoneornil(L, 2)) { push_int_table(L, t->ndim, t->shape); return 1; }
  if (t->ndim == 0) return luaL_error(L, "size: a scalar tensor has no dimensions");
  lua_pushinteger(L, (lua_Integer)t->shape[mm_lua_check_dim(L, 2, t->ndim)]);
  return 1;
}
static int m_stride(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (lua_isnoneornil(L, 2)) { push_int_table(L, t->ndim, t->stride); return 1; }
  if (t->ndim == 0) return luaL_error(L, "stride: a scalar tensor has no dimensions");
  lua_pushinteger(L, (lua_Integer)t->stride[mm_lua_check_dim(L, 2, t->ndim)]);
  return 1;
}
static int m_dim(lua_State *L) { lua_pushinteger(L, mm_lua_check(L, 1)->ndim); return 1; }
static int m_numel(lua_State *L) { lua_pushinteger(L, (lua_Integer)mm_numel(mm_lua_check(L, 1))); return 1; }
static int m_dtype(lua_State *L) { lua_pushstring(L, mm_dtype_name(mm_lua_check(L, 1)->dtype)); return 1; }
static int m_is_contiguous(lua_State *L) { lua_pushboolean(L, mm_is_contiguous(mm_lua_check(L, 1))); return 1; }
static int m_storage_offset(lua_State *L) { lua_pushinteger(L, (lua_Integer)mm_lua_check(L, 1)->offset); return 1; }

/* ---- views ------------------------------------------------------------------------ */

/* Shape arguments for reshape/view/expand allow -1. */
static int check_shape_signed(lua_State *L, int idx, int64_t *shape) {
  int nd = 0;
  if (lua_istable(L, idx)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n > MM_MAX_DIMS) luaL_argerror(L, idx, "too many dimensions");
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      int ok;
      shape[nd++] = lua_tointegerx(L, -1, &ok);
      if (!ok) luaL_argerror(L, idx, lua_pushfstring(L, "size %d must be an integer", (int)i));
      lua_pop(L, 1);
    }
    return nd;
  }
  for (int i = idx; i <= lua_gettop(L); i++) {
    if (nd == MM_MAX_DIMS) luaL_argerror(L, i, "too many dimensions");
    shape[nd++] = mm_lua_check_int(L, i);
  }
  return nd;
}

static int m_reshape(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int64_t shape[MM_MAX_DIMS];
  int nd = check_shape_signed(L, 2, shape);
  return mm_lua_push(L, mm_reshape(t, nd, shape));
}
static int m_view(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int64_t shape[MM_MAX_DIMS];
  int nd = check_shape_signed(L, 2, shape);
  return mm_lua_push(L, mm_view(t, nd, shape));
}
static int m_flatten(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (t->ndim == 0) { int64_t one = 1; return mm_lua_push(L, mm_reshape(t, 1, &one)); }
  int s = mm_lua_opt_dim(L, 2, t->ndim, 0), e = mm_lua_opt_dim(L, 3, t->ndim, t->ndim - 1);
  if (s > e) return luaL_error(L, "flatten: start dim %d is after end dim %d", s + 1, e + 1);
  int64_t shape[MM_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < s; i++) shape[nd++] = t->shape[i];
  /* The count fits int64 for the whole tensor, but not necessarily for a
   * range of its dims when a size outside the range is 0. */
  int64_t m = 1;
  for (int i = s; i <= e; i++)
    if (__builtin_mul_overflow(m, t->shape[i], &m))
      return luaL_error(L, "flatten: dimensions %d..%d of an empty tensor hold more than 2^63-1 "
                        "elements together; cannot merge them", s + 1, e + 1);
  shape[nd++] = m;
  for (int i = e + 1; i < t->ndim; i++) shape[nd++] = t->shape[i];
  return mm_lua_push(L, mm_reshape(t, nd, shape));
}
static int m_transpose(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d0 = mm_lua_check_dim(L, 2, t->ndim), d1 = mm_lua_check_dim(L, 3, t->ndim);
  return mm_lua_push(L, mm_transpose(t, d0, d1));
}
static int m_t(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (t->ndim > 2) return luaL_error(L, "t: expected a tensor with at most 2 dimensions, got %d (use transpose)", t->ndim);
  return mm_lua_push(L, mm_transpose(t, 0, -1));
}
static int m_permute(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int perm[MM_MAX_DIMS], n = 0;
  if (lua_istable(L, 2)) {
    int k = (int)lua_rawlen(L, 2);
    if (k != t->ndim) return luaL_error(L, "permute: expected %d dimensions, got %d", t->ndim, k);
    for (int i = 1; i <= k; i++) {
      lua_rawgeti(L, 2, i);
      perm[n++] = mm_lua_check_dim(L, -1, t->ndim);
      lua_pop(L, 1);
    }
  } else {
    int k = lua_gettop(L) - 1;
    if (k != t->ndim) return luaL_error(L, "permute: expected %d dimensions, got %d", t->ndim, k);
    for (int i = 0; i < k; i++) perm[n++] = mm_lua_check_dim(L, i + 2, t->ndim);
  }
  return mm_lua_push(L, mm_permute(t, n, perm));
}
/* narrow(dim, start, length) with a 1-based start. */
static int m_narrow(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (t->ndim == 0) return luaL_error(L, "narrow: expected a tensor with at least 1 dimension, got a scalar");
  int d = mm_lua_check_dim(L, 2, t->ndim);
  int64_t start = mm_lua_check_int(L, 3), len = mm_lua_check_int(L, 4);
  if (start < 0) start += t->shape[d] + 1;
  if (start < 1)
    return luaL_error(L, "narrow: start %I is out of range for dimension %d of size %I (expected 1..%I)",
                      (lua_Integer)start, d + 1, (lua_Integer)t->shape[d], (lua_Integer)t->shape[d]);
  return mm_lua_push(L, mm_narrow(t, d, start - 1, len));
}
static int m_select(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (t->ndim == 0) return luaL_error(L, "select: cannot index a scalar (0-dimensional) tensor");
  int d = mm_lua_check_dim(L, 2, t->ndim);
  int64_t i = mm_lua_check_int(L, 3);
  if (i == 0)
    return luaL_error(L, "index 0 is out of range for dimension %d of size %I (indices are 1-based: "
                      "expected 1..%I or -%I..-1)", d + 1, (lua_Integer)t->shape[d],
                      (lua_Integer)t->shape[d], (lua_Integer)t->shape[d]);
  return mm_lua_push(L, mm_select(t, d, i > 0 ? i - 1 : i));
}
static int m_expand(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int64_t shape[MM_MAX_DIMS];
  int nd = check_shape_signed(L, 2, shape);
  return mm_lua_push(L, mm_expand(t, nd, shape));
}
static int m_expand_as(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1), *o = mm_lua_check(L, 2);
  return mm_lua_push(L, mm_expand(t, o->ndim, o->shape));
}
static int m_squeeze(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int d = lua_isnoneornil(L, 2) ? MM_ALL_DIMS : mm_lua_check_dim(L, 2, t->ndim);
  return mm_lua_push(L, mm_squeeze(t, d));
}
static int m_unsqueeze(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  return mm_lua_push(L, mm_unsqueeze(t, mm_lua_check_dim(L, 2, t->ndim + 1)));
}
static int m_contiguous(lua_State *L) { return mm_lua_push(L, mm_contiguous(mm_lua_check(L, 1))); }
static int m_clone(lua_State *L) { return mm_lua_push(L, mm_clone(mm_lua_check(L, 1))); }

/* ---- data --------------------------------------------------------------------------- */

static void push_number(lua_State *L, const mm_tensor *t, int64_t i) {
  double v = mm_get_flat(t, i);
  if (t->dtype == MM_INT64) lua_pushinteger(L, (lua_Integer)v);
  else lua_pushnumber(L, v);
}

static int m_item(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (mm_numel(t) != 1) {
    char b[160];
    return luaL_error(L, "item: expected a tensor with one element, got shape %s (%I elements)",
                      mm_shape_str(t->ndim, t->shape, b, sizeof b), (lua_Integer)mm_numel(t));
  }
  push_number(L, t, 0);
  return 1;
}

static void to_table(lua_State *L, const mm_tensor *t, int d, int64_t *pos) {
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    if (d == t->ndim - 1) push_number(L, t, (*pos)++);
    else to_table(L, t, d + 1, pos);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}
static int m_totable(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (t->ndim == 0) { push_number(L, t, 0); return 1; }
  luaL_checkstack(L, t->ndim + 4, "totable");
  int64_t pos = 0;
  to_table(L, t, 0, &pos);
  return 1;
}

/* t:_get(i) / t:_set(i, v): the i-th element (1-based) in row-major order.
 * Low-level access for gradcheck and tests; bounds-checked. */
static int64_t check_flat(lua_State *L, mm_tensor *t) {
  int64_t i = mm_lua_check_int(L, 2), n = mm_numel(t);
  if (i < 1 || i > n)
    luaL_argerror(L, 2, lua_pushfstring(L, "flat index out of range (expected 1..%I, got %I)",
                                        (lua_Integer)n, (lua_Integer)i));
  return i - 1;
}
static int m_get(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  push_number(L, t, check_flat(L, t));
  return 1;
}
static int m_set(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  int64_t i = check_flat(L, t);
  if (mm_set_element_(t, i, luaL_checknumber(L, 3)) < 0) return mm_lua_error(L);
  return 0;
}

/* In-place writes are refused on leaves that require grad (as in PyTorch)
 * unless grad mode is off, e.g. inside an optimizer step. */
static void check_inplace(lua_State *L, mm_tensor *t, const char *name) {
  if (mm_check_inplace(t, name) < 0) mm_lua_error(L);
}

static int m_fill_(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  double v = luaL_checknumber(L, 2);
  check_inplace(L, t, "fill_");
  if (mm_fill_(t, v) < 0) return mm_lua_error(L);
  lua_settop(L, 1);
  return 1;
}
static int m_zero_(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  check_inplace(L, t, "zero_");
  mm_fill_(t, 0);
  lua_settop(L, 1);
  return 1;
}
static int m_copy_(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1), *s = mm_lua_check(L, 2);
  check_inplace(L, t, "copy_");
  if (mm_copy_(t, s) < 0) return mm_lua_error(L);
  lua_settop(L, 1);
  return 1;
}

static int convert(lua_State *L, mm_dtype dt) {
  return mm_lua_push(L, mm_to_dtype(mm_lua_check(L, 1), dt));
}
static int m_float(lua_State *L) { return convert(L, MM_FLOAT32); }
static int m_double(lua_State *L) { return convert(L, MM_FLOAT64); }
static int m_long(lua_State *L) { return convert(L, MM_INT64); }
static int m_to(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  const char *name = luaL_checkstring(L, 2);
  mm_dtype dt;
  if (mm_dtype_from_name(name, &dt) < 0)
    luaL_argerror(L, 2, lua_pushfstring(L, "unknown dtype '%s' (expected float32, float64 or int64)", name));
  (void)t;
  return convert(L, dt);
}

/* ---- arithmetic ---------------------------------------------------------------------- */

/* a op b where either side may be a number. */
static int binary(lua_State *L, mm_binary_op op) {
  mm_tensor *a = mm_lua_test(L, 1), *b = mm_lua_test(L, 2);   /* (a freed tensor raises) */
  if (a && b) return mm_lua_push(L, mm_binary(op, a, b));
  if (a) {
    if (lua_type(L, 2) != LUA_TNUMBER) luaL_typeerror(L, 2, "Tensor or number");
    return mm_lua_push(L, mm_binary_scalar(op, a, lua_tonumber(L, 2), false));
  }
  if (b) {
    if (lua_type(L, 1) != LUA_TNUMBER) luaL_typeerror(L, 1, "Tensor or number");
    return mm_lua_push(L, mm_binary_scalar(op, b, lua_tonumber(L, 1), true));
  }
  return luaL_typeerror(L, 1, "Tensor");
}
static int m_add(lua_State *L) { return binary(L, MM_OP_ADD); }
static int m_sub(lua_State *L) { return binary(L, MM_OP_SUB); }
static int m_mul(lua_State *L) { return binary(L, MM_OP_MUL); }
static int m_div(lua_State *L) { return binary(L, MM_OP_DIV); }
static int m_pow(lua_State *L) { return binary(L, MM_OP_POW); }
static int m_maximum(lua_State *L) { return binary(L, MM_OP_MAXIMUM); }
static int m_minimum(lua_State *L) { return binary(L, MM_OP_MINIMUM); }
static int m_eq(lua_State *L) { return binary(L, MM_OP_EQ); }
static int m_ne(lua_State *L) { return binary(L, MM_OP_NE); }
static int m_lt(lua_State *L) { return binary(L, MM_OP_LT); }
static int m_le(lua_State *L) { return binary(L, MM_OP_LE); }
static int m_gt(lua_State *L) { return binary(L, MM_OP_GT); }
static int m_ge(lua_State *L) { return binary(L, MM_OP_GE); }

static int binary_inplace(lua_State *L, mm_binary_op op, const char *name) {
  mm_tensor *a = mm_lua_check(L, 1);
  check_inplace(L, a, name);
  int rc;
  if (lua_type(L, 2) == LUA_TNUMBER) rc = mm_binary_scalar_inplace(op, a, lua_tonumber(L, 2));
  else rc = mm_binary_inplace(op, a, mm_lua_check(L, 2));
  if (rc < 0) return mm_lua_error(L);
  lua_settop(L, 1);
  return 1;
}
static int m_add_(lua_State *L) { return binary_inplace(L, MM_OP_ADD, "add_"); }
static int m_sub_(lua_State *L) { return binary_inplace(L, MM_OP_SUB, "sub_"); }
static int m_mul_(lua_State *L) { return binary_inplace(L, MM_OP_MUL, "mul_"); }
static int m_div_(lua_State *L) { return binary_inplace(L, MM_OP_DIV, "div_"); }

/* The unary ops are registered from pointwise.def by pointwise_lua.c; neg
 * is also the __unm metamethod here. */
static int m_neg(lua_State *L) { return mm_lua_push(L, mm_unary(MM_OP_NEG, mm_lua_check(L, 1))); }

static int l_where(lua_State *L) {
  mm_tensor *c = mm_lua_check(L, 1);
  mm_tensor *a = mm_lua_test(L, 2), *b = mm_lua_test(L, 3);
  const mm_tensor *ref = a ? a : b;
  /* Type errors first: a Lua error after ta is taken would leak it. */
  if (!a && lua_type(L, 2) != LUA_TNUMBER) luaL_typeerror(L, 2, "Tensor or number");
  if (!b && lua_type(L, 3) != LUA_TNUMBER) luaL_typeerror(L, 3, "Tensor or number");
  mm_tensor *ta = mm_lua_check_tensor_or_number(L, 2, ref), *tb = mm_lua_check_tensor_or_number(L, 3, ref);
  mm_tensor *r = mm_where(c, ta, tb);
  mm_tensor_release(ta);
  mm_tensor_release(tb);
  return mm_lua_push(L, r);
}
static int m_masked_fill(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1), *m = mm_lua_check(L, 2);
  return mm_lua_push(L, mm_masked_fill(t, m, luaL_checknumber(L, 3)));
}

/* ---- metamethods -------------------------------------------------------------------------- */

static int mt_tostring(lua_State *L) {
  mm_lua_box *b = luaL_checkudata(L, 1, MM_TENSOR_MT);
  if (!b->t) { lua_pushstring(L, "tensor(<freed>)"); return 1; }
  char *s = mm_tensor_format(b->t);
  if (!s) return mm_lua_error(L);
  lua_pushstring(L, s);
  free(s);
  return 1;
}

static int mt_len(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (t->ndim == 0) return luaL_error(L, "len: a scalar (0-dimensional) tensor has no length");
  lua_pushinteger(L, (lua_Integer)t->shape[0]);
  return 1;
}

/* t[i] selects along dim 1; strings reach methods and attributes. */
static int mt_index(lua_State *L) {
  if (!mm_lua_test_box(L, 1)) luaL_typeerror(L, 1, "Tensor");
  if (lua_type(L, 2) == LUA_TSTRING) {
    /* Methods resolve even on a freed tensor, so :free() stays idempotent;
     * each method checks its own arguments. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, methods_ref);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL) return 1;
  }
  mm_tensor *t = mm_lua_check(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (!strcmp(k, "grad")) {
      if (!t->grad) return 0;
      mm_tensor_retain(t->grad);
      return mm_lua_push(L, t->grad);
    }
    if (!strcmp(k, "requires_grad")) { lua_pushboolean(L, t->requires_grad); return 1; }
    if (!strcmp(k, "is_leaf")) { lua_pushboolean(L, t->grad_fn == NULL); return 1; }
    if (!strcmp(k, "grad_fn")) {
      const char *name = mm_grad_fn_name(t);
      if (!name) return 0;
      lua_pushstring(L, name);
      return 1;
    }
    if (!strcmp(k, "T")) return mm_lua_push(L, mm_permute(t, t->ndim, (int[]){7, 6, 5, 4, 3, 2, 1, 0} + (MM_MAX_DIMS - t->ndim)));
    return 0;
  }
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_settop(L, 2);
    lua_pushinteger(L, 1);
    lua_insert(L, 2);
    return m_select(L);
  }
  return luaL_argerror(L, 2, lua_pushfstring(L, "expected an integer index or a method name, got %s",
                                             luaL_typename(L, 2)));
}

static int mt_newindex(lua_State *L) {
  mm_tensor *t = mm_lua_check(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    if (t->ndim == 0) return luaL_error(L, "cannot index a scalar (0-dimensional) tensor");
    int64_t i = mm_lua_check_int(L, 2);
    if (i == 0 || i > t->shape[0] || i < -t->shape[0])
      return luaL_error(L, "index %I is out of range for dimension 1 of size %I (expected 1..%I or -%I..-1)",
                        (lua_Integer)i, (lua_Integer)t->shape[0], (lua_Integer)t->shape[0], (lua_Integer)t->shape[0]);
    check_inplace(L, t, "index assignment");
    mm_tensor *row = mm_select(t, 0, i > 0 ? i - 1 : i);
    if (!row) return mm_lua_error(L);
    int rc;
    if (lua_type(L, 3) == LUA_TNUMBER) rc = mm_fill_(row, lua_tonumber(L, 3));
    else {
      mm_tensor *src = mm_lua_test(L, 3);
      if (!src) { mm_tensor_release(row); return luaL_typeerror(L, 3, "Tensor or number"); }
      rc = mm_copy_(row, mm_lua_check(L, 3));
    }
    mm_tensor_release(row);
    if (rc < 0) return mm_lua_error(L);
    return 0;
  }
  const char *k = luaL_checkstring(L, 2);
  if (!strcmp(k, "requires_grad")) {
    if (mm_set_requires_grad(t, lua_toboolean(L, 3), "requires_grad") < 0) return mm_lua_error(L);
    return 0;
  }
  if (!strcmp(k, "grad")) {
    mm_tensor *g = lua_isnil(L, 3) ? NULL : mm_lua_check(L, 3);
    if (mm_set_grad(t, g) < 0) return mm_lua_error(L);
    return 0;
  }
  return luaL_error(L, "cannot set field '%s' of a Tensor (fields: requires_grad, grad)", k);
}

static const luaL_Reg functions[] = {
  {"tensor", l_tensor}, {"zeros", l_zeros}, {"ones", l_ones}, {"empty", l_empty},
  {"full", l_full}, {"rand", l_rand}, {"randn", l_randn}, {"randint", l_randint},
  {"randperm", l_randperm}, {"zeros_like", l_zeros_like}, {"ones_like", l_ones_like},
  {"randn_like", l_randn_like}, {"rand_like", l_rand_like}, {"full_like", l_full_like},
  {"arange", l_arange}, {"linspace", l_linspace}, {"eye", l_eye},
  {"manual_seed", l_manual_seed}, {"get_rng_state", l_get_rng_state},
  {"set_rng_state", l_set_rng_state}, {"set_num_threads", l_set_num_threads},
  {"get_num_threads", l_get_num_threads}, {"memory_stats", l_memory_stats},
  {"empty_cache", l_empty_cache}, {"set_memory_limit", l_set_memory_limit},
  {"is_tensor", l_is_tensor}, {"where", l_where},
  {NULL, NULL}};

/* Available both as mm.f(t, ...) and t:f(...). */
static const luaL_Reg shared[] = {
  {"reshape", m_reshape}, {"view", m_view}, {"flatten", m_flatten}, {"transpose", m_transpose},
  {"permute", m_permute}, {"narrow", m_narrow}, {"select", m_select}, {"expand", m_expand},
  {"squeeze", m_squeeze}, {"unsqueeze", m_unsqueeze}, {"contiguous", m_contiguous},
  {"clone", m_clone}, {"add", m_add}, {"sub", m_sub}, {"mul", m_mul}, {"div", m_div},
  {"pow", m_pow}, {"maximum", m_maximum}, {"minimum", m_minimum}, {"eq", m_eq}, {"ne", m_ne},
  {"lt", m_lt}, {"le", m_le}, {"gt", m_gt}, {"ge", m_ge}, {"masked_fill", m_masked_fill},
  {"numel", m_numel},
  {NULL, NULL}};

static const luaL_Reg methods[] = {
  {"shape", m_shape}, {"size", m_size}, {"stride", m_stride}, {"dim", m_dim},
  {"dtype", m_dtype}, {"is_contiguous", m_is_contiguous},
  {"storage_offset", m_storage_offset}, {"t", m_t}, {"expand_as", m_expand_as},
  {"item", m_item}, {"totable", m_totable}, {"fill_", m_fill_}, {"zero_", m_zero_},
  {"copy_", m_copy_}, {"float", m_float}, {"double", m_double}, {"long", m_long}, {"to", m_to},
  {"_get", m_get}, {"_set", m_set}, {"add_", m_add_}, {"sub_", m_sub_}, {"mul_", m_mul_}, {"div_", m_div_}, {"free", t_release},
  {NULL, NULL}};

static const luaL_Reg metamethods[] = {
  {"__gc", t_release}, {"__close", t_release}, {"__tostring", mt_tostring}, {"__len", mt_len},
  {"__index", mt_index}, {"__newindex", mt_newindex}, {"__add", m_add}, {"__sub", m_sub},
  {"__mul", m_mul}, {"__div", m_div}, {"__pow", m_pow}, {"__unm", m_neg},
  {NULL, NULL}};

/* Creates the Tensor metatable (the cached one of lua_helpers.c) and adds
 * the creation functions, the shared functions/methods and the methods. */
void mm_lua_open_tensor(lua_State *L, int module, int meth) {
  luaL_newmetatable(L, MM_TENSOR_MT);
  luaL_setfuncs(L, metamethods, 0);
  mm_lua_set_tensor_metatable(L, -1);
  lua_pop(L, 1);
  mm_lua_register(L, module, meth, functions, true, false);
  mm_lua_register(L, module, meth, shared, true, true);
  mm_lua_register(L, module, meth, methods, false, true);
  lua_pushvalue(L, meth);
  methods_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}
