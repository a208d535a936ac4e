/* io_lua.c — Lua bindings of the I/O layer (runtime/io.h) plus the two
 * small terminal helpers progress.lua needs.
 *
 *   mm.read_idx(path [, {dtype=}])            -> tensor (float32 by default)
 *   mm.load_npy(path)                         -> tensor
 *   mm.save_npy(path, t)
 *   mm.read_csv(path [, {header=false, delimiter=","}]) -> float32 [rows, cols]
 *   mm.save(path, tensors [, metadata])       (safetensors; nested tables ->
 *                                              dotted names "model.fc1.weight")
 *   mm.load(path)                             -> flat {dotted name = tensor}, metadata
 *   mm._checkpoint_decode(text, tensors, path) -> table  (checkpoint metadata,
 *                                              format 2: data only, see io.h)
 *   mm._isatty(fd or file), mm._terminal_width(fd or file), mm._time()
 *
 * A loaded checkpoint is parked in a userdata with __gc while its tensors
 * are handed to Lua, so an error half-way (out of memory) leaks nothing. */
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <lualib.h>

#include "lua_helpers.h"

#define CHECKPOINT_MT "microml.checkpoint"
#define METAVALUE_MT "microml.checkpoint_meta"

/* A path argument: a string without embedded NUL bytes. */
static const char *check_path(lua_State *L, int idx) {
  size_t n;
  const char *p = luaL_checklstring(L, idx, &n);
  if (strlen(p) != n) luaL_argerror(L, idx, "path contains a NUL byte");
  return p;
}

static void check_opts(lua_State *L, int idx) {
  if (!lua_isnoneornil(L, idx) && !lua_istable(L, idx))
    luaL_typeerror(L, idx, "options table");
}

static int l_read_idx(lua_State *L) {
  const char *path = check_path(L, 1);
  check_opts(L, 2);
  static const char *const known[] = {"dtype", NULL};
  mm_lua_check_options(L, 2, "read_idx", known);
  mm_lua_check_arity(L, "read_idx", 2);
  mm_dtype dt = mm_lua_opt_dtype(L, 2, MM_FLOAT32);
  return mm_lua_push(L, mm_read_idx(path, dt));
}

static int l_load_npy(lua_State *L) { return mm_lua_push(L, mm_load_npy(check_path(L, 1))); }

static int l_save_npy(lua_State *L) {
  const char *path = check_path(L, 1);
  mm_tensor *t = mm_lua_check(L, 2);
  if (mm_save_npy(path, t) < 0) return mm_lua_error(L);
  return 0;
}

static int l_read_csv(lua_State *L) {
  const char *path = check_path(L, 1);
  check_opts(L, 2);
  static const char *const known[] = {"header", "delimiter", NULL};
  mm_lua_check_options(L, 2, "read_csv", known);
  mm_lua_check_arity(L, "read_csv", 2);
  mm_csv_options opt = {',', mm_lua_opt_bool(L, 2, "header", false)};
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "delimiter");
    if (!lua_isnil(L, -1)) {
      size_t n;
      const char *d = lua_tolstring(L, -1, &n);
      if (lua_type(L, -1) != LUA_TSTRING || n != 1)
        return luaL_error(L, "read_csv: delimiter must be a one-character string, got %s",
                          lua_type(L, -1) == LUA_TSTRING ? lua_pushfstring(L, "'%s'", d)
                                                         : luaL_typename(L, -1));
      opt.delimiter = d[0];
    }
    lua_pop(L, 1);
  }
  return mm_lua_push(L, mm_read_csv(path, &opt));
}

/* ---- safetensors -------------------------------------------------------------- */

/* Walks a (nested) table of tensors, recording dotted name -> tensor in
 * the table at out.  `seen` holds the tables on the current path, so a
 * cycle is an error rather than a stack overflow. */
static void flatten(lua_State *L, int tbl, const char *prefix, int out, int seen, int depth) {
  if (depth > 64) luaL_error(L, "save: tables nested more than 64 levels deep at '%s'", prefix);
  luaL_checkstack(L, 8, "save");
  lua_pushnil(L);
  while (lua_next(L, tbl)) {
    const char *key;
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t n;
      key = lua_tolstring(L, -2, &n);
      if (strlen(key) != n) luaL_error(L, "save: key under '%s' contains a NUL byte", prefix);
      lua_pushstring(L, key);
    } else if (lua_isinteger(L, -2)) {
      lua_pushfstring(L, "%I", lua_tointeger(L, -2));
    } else {
      luaL_error(L, "save: keys must be strings or integers, got a %s key under '%s'",
                 luaL_typename(L, -2), *prefix ? prefix : "(top level)");
    }
    if (*prefix) {
      lua_pushfstring(L, "%s.%s", prefix, lua_tostring(L, -1));
      lua_remove(L, -2);
    }
    /* stack: key value name */
    const char *name = lua_tostring(L, -1);
    int vidx = lua_gettop(L) - 1;
    if (mm_lua_test(L, vidx)) {
      mm_lua_check(L, vidx);   /* refuses a freed tensor */
      lua_pushvalue(L, -1);
      if (lua_rawget(L, out) != LUA_TNIL)
        luaL_error(L, "save: tensor name '%s' appears twice (a dotted key and a nested table "
                   "give the same name)", name);
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_pushvalue(L, vidx);
      lua_rawset(L, out);
    } else if (lua_istable(L, vidx)) {
      lua_pushvalue(L, vidx);
      if (lua_rawget(L, seen) != LUA_TNIL)
        luaL_error(L, "save: the table at '%s' contains itself (a cycle)", name);
      lua_pop(L, 1);
      lua_pushvalue(L, vidx);
      lua_pushboolean(L, 1);
      lua_rawset(L, seen);
      flatten(L, vidx, name, out, seen, depth + 1);
      lua_pushvalue(L, vidx);
      lua_pushnil(L);
      lua_rawset(L, seen);
    } else {
      luaL_error(L, "save: the value at '%s' is a %s; expected a tensor or a table of tensors "
                 "(put other values in the metadata table as strings)", name, luaL_typename(L, vidx));
    }
    lua_pop(L, 2);   /* name, value */
  }
}

/* mm.save(path, tensors [, metadata]) */
static int l_save(lua_State *L) {
  const char *path = check_path(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  lua_newtable(L);   /* 4: flat name -> tensor */
  lua_newtable(L);   /* 5: tables on the current path */
  lua_pushvalue(L, 2);
  lua_pushboolean(L, 1);
  lua_rawset(L, 5);
  flatten(L, 2, "", 4, 5, 0);

  size_t n = 0, nm = 0;
  lua_pushnil(L);
  while (lua_next(L, 4)) n++, lua_pop(L, 1);
  if (!lua_isnil(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "save: metadata must map strings to strings, got %s = %s (convert "
                          "values with tostring)", luaL_typename(L, -2), luaL_typename(L, -1));
      size_t kl, vl;
      const char *k = lua_tolstring(L, -2, &kl), *v = lua_tolstring(L, -1, &vl);
      if (strlen(k) != kl || strlen(v) != vl)
        return luaL_error(L, "save: metadata entry '%s' contains a NUL byte", k);
      nm++;
      lua_pop(L, 1);
    }
  }
  /* The C arrays live in userdata so an error cannot leak them; the
   * strings they point to stay alive in tables 3 and 4. */
  mm_checkpoint ck = {0};
  ck.tensors = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ck.tensors, 0);
  ck.meta = lua_newuserdatauv(L, (nm ? nm : 1) * sizeof *ck.meta, 0);
  lua_pushnil(L);
  while (lua_next(L, 4)) {
    ck.tensors[ck.ntensors].name = (char *)lua_tostring(L, -2);
    ck.tensors[ck.ntensors++].tensor = mm_lua_check(L, -1);
    lua_pop(L, 1);
  }
  if (!lua_isnil(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      ck.meta[ck.nmeta].key = (char *)lua_tostring(L, -2);
      ck.meta[ck.nmeta++].value = (char *)lua_tostring(L, -1);
      lua_pop(L, 1);
    }
  }
  if (mm_safetensors_save(path, &ck) < 0) return mm_lua_error(L);
  return 0;
}

static int checkpoint_gc(lua_State *L) {
  mm_checkpoint_free(luaL_checkudata(L, 1, CHECKPOINT_MT));
  return 0;
}

/* mm.load(path) -> {["model.fc1.weight"] = tensor, ...}, {key = value, ...} */
static int l_load(lua_State *L) {
  const char *path = check_path(L, 1);
  mm_checkpoint *ck = lua_newuserdatauv(L, sizeof *ck, 0);
  memset(ck, 0, sizeof *ck);
  luaL_setmetatable(L, CHECKPOINT_MT);
  int box = lua_gettop(L);
  if (mm_safetensors_load(path, ck) < 0) return mm_lua_error(L);
  lua_createtable(L, 0, (int)(ck->ntensors < 1 << 20 ? ck->ntensors : 1 << 20));
  for (size_t i = 0; i < ck->ntensors; i++) {
    lua_pushstring(L, ck->tensors[i].name);
    mm_lua_push(L, ck->tensors[i].tensor);
    ck->tensors[i].tensor = NULL;   /* the userdata owns it now */
    lua_rawset(L, -3);
  }
  lua_createtable(L, 0, (int)(ck->nmeta < 1 << 20 ? ck->nmeta : 1 << 20));
  for (size_t i = 0; i < ck->nmeta; i++) {
    lua_pushstring(L, ck->meta[i].value);
    lua_setfield(L, -2, ck->meta[i].key);
  }
  mm_checkpoint_free(ck);
  lua_remove(L, box);
  return 2;
}

/* ---- checkpoint metadata ------------------------------------------------------------ */

static int metavalue_gc(lua_State *L) {
  mm_meta_value_free(luaL_checkudata(L, 1, METAVALUE_MT));
  return 0;
}

/* Pushes v as a Lua value; tensor references are looked up in the table
 * at `tensors`.  Recursion is bounded by the parser's depth limit. */
static void push_meta(lua_State *L, const mm_meta_value *v, int tensors, const char *path) {
  luaL_checkstack(L, 4, "checkpoint metadata");
  switch (v->type) {
  case MM_META_BOOL: lua_pushboolean(L, v->u.b); break;
  case MM_META_INT: lua_pushinteger(L, (lua_Integer)v->u.i); break;
  case MM_META_FLOAT: lua_pushnumber(L, (lua_Number)v->u.f); break;
  case MM_META_STRING: lua_pushlstring(L, v->u.str.s, v->u.str.len); break;
  case MM_META_TENSOR:
    lua_pushlstring(L, v->u.str.s, v->u.str.len);
    if (lua_rawget(L, tensors) == LUA_TNIL)
      luaL_error(L, "load_checkpoint: '%s' lacks the tensor '%s'", path, v->u.str.s);
    break;
  case MM_META_TABLE: {
    size_t n = v->u.table.n;
    lua_createtable(L, 0, (int)(n < 1 << 20 ? n : 1 << 20));
    for (size_t i = 0; i < n; i++) {
      push_meta(L, &v->u.table.items[2 * i], tensors, path);
      push_meta(L, &v->u.table.items[2 * i + 1], tensors, path);
      lua_rawset(L, -3);
    }
    break;
  }
  }
}

/* mm._checkpoint_decode(text, tensors, path) -> the checkpoint's table */
static int l_checkpoint_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *path = luaL_checkstring(L, 3);
  mm_meta_value *v = lua_newuserdatauv(L, sizeof *v, 0);
  memset(v, 0, sizeof *v);
  luaL_setmetatable(L, METAVALUE_MT);   /* freed by __gc even if a push fails */
  if (mm_checkpoint_meta_parse(text, len, v, path) < 0) return mm_lua_error(L);
  push_meta(L, v, 2, path);
  return 1;
}

/* ---- terminal helpers for progress.lua ------------------------------------------- */

/* A file descriptor from an integer or a Lua file handle. */
static int check_fd(lua_State *L, int idx) {
  luaL_Stream *s = luaL_testudata(L, idx, LUA_FILEHANDLE);
  if (s) {
    if (!s->closef) luaL_argerror(L, idx, "attempt to use a closed file");
    return fileno(s->f);
  }
  if (!lua_isinteger(L, idx)) luaL_typeerror(L, idx, "file descriptor or file handle");
  return (int)lua_tointeger(L, idx);
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty(check_fd(L, 1)) == 1);
  return 1;
}

static int l_terminal_width(lua_State *L) {
  struct winsize ws;
  if (ioctl(check_fd(L, 1), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
    lua_pushinteger(L, ws.ws_col);
    return 1;
  }
  return 0;
}

/* Seconds on a monotonic clock: rates and ETAs must not jump with the wall clock. */
static int l_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

static const luaL_Reg functions[] = {
  {"read_idx", l_read_idx}, {"load_npy", l_load_npy}, {"save_npy", l_save_npy},
  {"read_csv", l_read_csv}, {"save", l_save},         {"load", l_load},
  {"_checkpoint_decode", l_checkpoint_decode},
  {"_isatty", l_isatty},    {"_terminal_width", l_terminal_width}, {"_time", l_time},
  {NULL, NULL}};

void mm_lua_open_io(lua_State *L, int module, int methods) {
  if (luaL_newmetatable(L, CHECKPOINT_MT)) {
    lua_pushcfunction(L, checkpoint_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, METAVALUE_MT)) {
    lua_pushcfunction(L, metavalue_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  mm_lua_register(L, module, methods, functions, true, false);
}
