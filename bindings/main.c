/*
 * microml — the MicroML program: Lua 5.4 with the MicroML library built in.
 *
 *   microml script.lua args...    run a script (`arg` and `...` as `lua` sets them)
 *   microml                       REPL on a terminal; otherwise run stdin as a script
 *   microml -e code -l mod -i -v  as in the stock `lua` program
 *
 * This file owns the host: option parsing, the `arg` table, running chunks
 * with a traceback, Ctrl-C, and the REPL (multi-line input, expressions
 * printed without `=`, libedit line editing and history, Lua-aware tab
 * completion).  It registers `microml.core` (the C bindings) and every Lua
 * module embedded by tools/embed.c in package.preload, so `require "microml"`
 * works from any directory with no LUA_PATH.
 *
 * Ctrl-C follows lua.c's scheme: while a chunk runs, SIGINT installs a count
 * hook (lua_sethook is async-signal-safe) and the hook raises "interrupted"
 * at the next Lua instruction; the handler resets itself first, so a second
 * Ctrl-C while the first is pending (say, inside a long C kernel) kills the
 * program.  At the prompt, SIGINT only sets a flag: the read returns EINTR
 * and the REPL discards the line.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <editline/readline.h>

#include "microml.h"
#include "module.h"

#define PROGNAME      "microml"
#define VERSION_LINE  "MicroML " MM_VERSION " (" LUA_RELEASE ")"
#define PROMPT        "> "
#define PROMPT_MORE   ">> "
#define HISTORY_FILE  ".microml_history"
#define HISTORY_LINES 1000

/* Generated into build/embedded_lua.c by tools/embed.c. */
struct mm_embedded_module {
  const char *name;    /* module name for require, e.g. "microml.nn" */
  const char *path;    /* source path, e.g. "lua/microml/nn.lua" */
  const char *source;  /* the file's bytes */
  size_t len;
};
extern const struct mm_embedded_module mm_embedded_modules[];

/* Scripts, -e code, stdin and REPL input load as text unless -b is given:
 * Lua does not verify bytecode, so a corrupt or crafted precompiled file
 * can crash the interpreter instead of raising an error. */
static const char *chunk_mode = "t";

/* ---- reporting ------------------------------------------------------------ */

static void print_usage(const char *badoption) {
  if (badoption != NULL) {
    if (badoption[1] == 'e' || badoption[1] == 'l')
      fprintf(stderr, PROGNAME ": '%s' needs an argument\n", badoption);
    else
      fprintf(stderr, PROGNAME ": unrecognized option '%s'\n", badoption);
  }
  fputs("usage: " PROGNAME " [options] [script [args]]\n"
        "Available options are:\n"
        "  -e stat   execute string 'stat'\n"
        "  -i        enter interactive mode after executing 'script'\n"
        "  -l mod    require library 'mod' into global 'mod'\n"
        "  -l g=mod  require library 'mod' into global 'g'\n"
        "  -v        show version information (also --version)\n"
        "  -E        ignore environment variables (LUA_PATH, LUA_CPATH)\n"
        "  -W        turn warnings on\n"
        "  -b        accept precompiled (binary) chunks: script, stdin, -e, REPL\n"
        "  -h        show this help (also --help)\n"
        "  --        stop handling options\n"
        "  -         stop handling options and execute stdin\n"
        "With no script, " PROGNAME " starts a REPL when stdin is a terminal\n"
        "and runs stdin as a script otherwise.\n",
        stderr);
}

/* Print the error message on top of the stack (if status is an error) and
 * pop it.  stdout is flushed first so piped output keeps its order. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = "(error object is not a string)";
    fflush(stdout);
    fprintf(stderr, PROGNAME ": %s\n", msg);
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

/* Message handler: turn any error object into a string with a traceback. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;  /* an object that prints itself: no traceback */
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* ---- Ctrl-C --------------------------------------------------------------- */

static lua_State *running_L;                  /* the state chunks run in */
static volatile sig_atomic_t prompt_interrupted;

static void set_sigint(void (*handler)(int), struct sigaction *old) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  /* No SA_RESTART: a blocking read (io.read, the prompt) must return EINTR
   * so that the interrupt is seen now, not after the next line of input. */
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, old);
}

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  lua_pushliteral(L, "interrupted");
  lua_error(L);
}

static void on_sigint_running(int sig) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);  /* a second Ctrl-C before the hook runs kills */
  lua_sethook(running_L, interrupt_hook,
              LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void on_sigint_prompt(int sig) {
  (void)sig;
  prompt_interrupted = 1;
}

/* ---- running chunks ------------------------------------------------------- */

/* Call the function below the narg arguments on top of the stack, with a
 * traceback on error and Ctrl-C turned into the error "interrupted". */
static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  struct sigaction old;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  running_L = L;
  set_sigint(on_sigint_running, &old);
  int status = lua_pcall(L, narg, nres, base);
  sigaction(SIGINT, &old, NULL);
  /* A SIGINT that arrived after the last instruction left the hook set;
   * it must not interrupt the next chunk. */
  if (lua_gethook(L) == interrupt_hook) lua_sethook(L, NULL, 0, 0);
  lua_remove(L, base);
  return status;
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dostring(lua_State *L, const char *code, const char *chunkname) {
  return dochunk(L, luaL_loadbufferx(L, code, strlen(code), chunkname, chunk_mode));
}

/* `-l g=mod` or `-l mod`: global g (or mod) = require(mod). */
static int dolibrary(lua_State *L, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *modname = eq != NULL ? eq + 1 : spec;
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  int status = docall(L, 1, 1);
  if (status == LUA_OK) {
    if (eq != NULL) lua_pushlstring(L, spec, (size_t)(eq - spec));
    else lua_pushstring(L, spec);
    lua_insert(L, -2);
    lua_setglobal(L, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
  return report(L, status);
}

/* ---- embedded modules ----------------------------------------------------- */

/* package.preload loader for one embedded module (upvalue: its entry).
 * Called as loader(name, extra); the chunk gets (name, path), as a module
 * found on package.path gets (name, filename). */
static int load_embedded(lua_State *L) {
  const struct mm_embedded_module *m = lua_touserdata(L, lua_upvalueindex(1));
  const char *chunkname = lua_pushfstring(L, "@%s", m->path);
  if (luaL_loadbuffer(L, m->source, m->len, chunkname) != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, m->name);
  lua_pushstring(L, m->path);
  lua_call(L, 2, 1);
  return 1;
}

static void preload_modules(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_microml_core);
  lua_setfield(L, -2, "microml.core");
  for (const struct mm_embedded_module *m = mm_embedded_modules; m->name; m++) {
    lua_pushlightuserdata(L, (void *)m);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, m->name);
  }
  lua_pop(L, 1);
}

/* ---- command line --------------------------------------------------------- */

enum { HAS_E = 1, HAS_I = 2, HAS_V = 4, HAS_NOENV = 8, HAS_HELP = 16, HAS_BINARY = 32,
       BAD_ARGS = -1 };

/* Scan the options.  *first gets the index of the script (argc when there is
 * none), or of the offending option when BAD_ARGS is returned. */
static int collect_args(int argc, char **argv, int *first) {
  int flags = 0;
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    *first = i;
    if (a[0] != '-') return flags;  /* the script */
    switch (a[1]) {
      case '\0':                    /* "-": script is stdin */
        return flags;
      case '-':                     /* "--": end of options */
        /* The two long options packagers and scripts expect. */
        if (strcmp(a, "--version") == 0) { flags |= HAS_V; break; }
        if (strcmp(a, "--help") == 0) { flags |= HAS_HELP; break; }
        if (a[2] != '\0') return BAD_ARGS;
        *first = i + 1;
        return flags;
      case 'e':
      case 'l':
        if (a[1] == 'e') flags |= HAS_E;
        if (a[2] == '\0' && ++i >= argc) return BAD_ARGS;  /* argument missing */
        break;
      case 'i':
      case 'v':
      case 'E':
      case 'W':
      case 'h':
      case 'b':
        if (a[2] != '\0') return BAD_ARGS;
        flags |= a[1] == 'i' ? HAS_I : a[1] == 'v' ? HAS_V
               : a[1] == 'E' ? HAS_NOENV : a[1] == 'h' ? HAS_HELP
               : a[1] == 'b' ? HAS_BINARY : 0;
        break;
      default:
        return BAD_ARGS;
    }
  }
  *first = argc;
  return flags;
}

/* Run -e, -l and -W in command-line order (options end before index n).
 * Returns 0 as soon as one fails. */
static int run_args(lua_State *L, char **argv, int n) {
  for (int i = 1; i < n; i++) {
    const char *a = argv[i];
    if (a[1] != 'e' && a[1] != 'l') {
      if (a[1] == 'W') lua_warning(L, "@on", 0);
      continue;
    }
    const char *value = a[2] != '\0' ? a + 2 : argv[++i];
    int status = a[1] == 'e' ? dostring(L, value, "=(command line)")
                             : dolibrary(L, value);
    if (status != LUA_OK) return 0;
  }
  return 1;
}

/* arg[0] = script, arg[1..] = its arguments, arg[-1..] = interpreter and
 * options, exactly as `lua` builds it.  script is 0 when there is none. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script) {
  lua_createtable(L, argc - script - 1 > 0 ? argc - script - 1 : 0, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* Push arg[1..#arg] as the script's `...`; returns how many. */
static int push_script_args(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  int n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

static int run_script(lua_State *L, char **argv, int script) {
  const char *fname = argv[script];
  if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0)
    fname = NULL;  /* stdin */
  int status = luaL_loadfilex(L, fname, chunk_mode);
  if (status == LUA_OK) {
    int n = push_script_args(L);
    status = docall(L, n, 0);
  }
  return report(L, status);
}

/* ---- REPL: input ---------------------------------------------------------- */

static int use_editline;           /* stdin is a terminal: libedit */
static char history_path[4096];    /* empty: no history file */

static void save_history(void) {
  if (history_path[0] != '\0') write_history(history_path);  /* errors ignored */
}

/* _PROMPT / _PROMPT2 override the prompts, as in lua.  Copied out, since a
 * number converted to a string would not stay referenced. */
static const char *get_prompt(lua_State *L, int first) {
  static char buf[256];
  const char *p = first ? PROMPT : PROMPT_MORE;
  lua_getglobal(L, first ? "_PROMPT" : "_PROMPT2");
  if (lua_isstring(L, -1)) {  /* a string or a number */
    snprintf(buf, sizeof buf, "%s", lua_tostring(L, -1));
    p = buf;
  }
  lua_pop(L, 1);
  return p;
}

enum { LINE_OK, LINE_EOF, LINE_INTERRUPTED };
enum { CHUNK_END = -1, CHUNK_INTERRUPTED = -2 };  /* besides Lua statuses */

/* Read one line and push it without its newline. */
static int read_line(lua_State *L, int first) {
  const char *prompt = get_prompt(L, first);
  struct sigaction old;
  prompt_interrupted = 0;
  set_sigint(on_sigint_prompt, &old);
  int result;
  if (use_editline) {
    char *line = readline(prompt);
    if (line == NULL) {
      result = prompt_interrupted ? LINE_INTERRUPTED : LINE_EOF;
    } else {
      if (line[strspn(line, " \t")] != '\0') add_history(line);
      lua_pushstring(L, line);
      free(line);
      result = LINE_OK;
    }
  } else {
    static char *buf;
    static size_t cap;
    fputs(prompt, stdout);
    fflush(stdout);
    errno = 0;
    ssize_t n = getline(&buf, &cap, stdin);
    if (n < 0) {
      result = (prompt_interrupted || errno == EINTR) ? LINE_INTERRUPTED : LINE_EOF;
      clearerr(stdin);
    } else {
      if (n > 0 && buf[n - 1] == '\n') n--;
      lua_pushlstring(L, buf, (size_t)n);
      result = LINE_OK;
    }
  }
  sigaction(SIGINT, &old, NULL);
  if (result == LINE_INTERRUPTED) {
    fputc('\n', stdout);  /* the ^C line is abandoned */
    fflush(stdout);
  }
  return result;
}

/* A syntax error whose message ends at "<eof>" means "keep typing". */
static int incomplete(lua_State *L, int status) {
  static const char mark[] = "<eof>";
  size_t len;
  const char *msg;
  if (status != LUA_ERRSYNTAX) return 0;
  msg = lua_tolstring(L, -1, &len);
  return len >= sizeof mark - 1 && strcmp(msg + len - (sizeof mark - 1), mark) == 0;
}

/* Compile the REPL input as an expression (`return <code>`) or as it is.
 * Pushes the function or the error message. */
static int load_input(lua_State *L, const char *code, size_t len, int as_expression) {
  if (!as_expression) return luaL_loadbufferx(L, code, len, "=stdin", chunk_mode);
  /* Length-aware: the line may hold a NUL byte (then Lua's lexer reports it,
   * instead of the rest of the line silently vanishing). */
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "return ");
  luaL_addlstring(&b, code, len);
  luaL_pushresult(&b);
  size_t rlen;
  const char *ret = lua_tolstring(L, -1, &rlen);
  int status = luaL_loadbufferx(L, ret, rlen, "=stdin", chunk_mode);
  lua_remove(L, -2);
  return status;
}

/* Read lines until they form a chunk, and leave it compiled on the stack
 * (or its error message).  Each attempt tries the expression form first, so
 * an expression prints its value; input is incomplete if either form could
 * still be finished, so `1 +` continues as well as `function f()`.
 * Returns a Lua status, CHUNK_END at end of input, or CHUNK_INTERRUPTED. */
static int read_chunk(lua_State *L) {
  lua_settop(L, 0);
  int r = read_line(L, 1);
  if (r != LINE_OK) return r == LINE_EOF ? CHUNK_END : CHUNK_INTERRUPTED;
  for (;;) {  /* stack: the input so far */
    size_t len;
    const char *code = lua_tolstring(L, 1, &len);
    int status = load_input(L, code, len, 1);
    if (status == LUA_OK) break;
    int expression_unfinished = incomplete(L, status);
    lua_pop(L, 1);
    status = load_input(L, code, len, 0);
    if (status == LUA_OK) break;
    if (!expression_unfinished && !incomplete(L, status)) {
      lua_remove(L, 1);
      return status;  /* a real syntax error: the message is on the stack */
    }
    lua_pop(L, 1);
    r = read_line(L, 0);
    if (r == LINE_INTERRUPTED) return CHUNK_INTERRUPTED;  /* drop the whole chunk */
    if (r == LINE_EOF) {  /* input ended mid-chunk: say what was unfinished */
      status = load_input(L, code, len, expression_unfinished);
      lua_remove(L, 1);
      return status;
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
  lua_remove(L, 1);
  return LUA_OK;
}

/* ---- REPL: output --------------------------------------------------------- */

/* Print all arguments on one line, tab-separated, through __tostring/__name
 * (luaL_tolstring), so tensors pretty-print.  Run protected: a __tostring
 * may raise. */
static int print_values(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checkstack(L, 2 * n, "too many results to print");
  for (int i = 1; i <= n; i++) {
    luaL_tolstring(L, i, NULL);
    if (i < n) lua_pushliteral(L, "\t");
  }
  lua_concat(L, 2 * n - 1);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  fwrite(s, 1, len, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}

/* ---- REPL: tab completion ------------------------------------------------- */

static lua_State *complete_L;

#ifdef MM_TENSOR_MT
/* Push microml.core.Tensor, the public table of tensor methods, or nil. */
static void push_tensor_methods(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "microml.core");
  if (lua_istable(L, -1)) lua_getfield(L, -1, "Tensor");
  else lua_pushnil(L);
  lua_replace(L, -3);
  lua_pop(L, 1);
}
#endif

/* Push the table whose keys are listed after those of the value on top of
 * the stack: its metatable's __index if that is a table, the methods table
 * for a tensor (whose __index is a function), or nil. */
static void push_next_level(lua_State *L) {
  if (!lua_getmetatable(L, -1)) {
    lua_pushnil(L);
    return;
  }
  lua_getfield(L, -1, "__index");  /* value mt index */
#ifdef MM_TENSOR_MT
  if (lua_type(L, -1) == LUA_TFUNCTION) {
    lua_getfield(L, -2, "__name");
    int is_tensor = lua_type(L, -1) == LUA_TSTRING &&
                    strcmp(lua_tostring(L, -1), MM_TENSOR_MT) == 0;
    lua_pop(L, 2);  /* value mt */
    if (is_tensor) push_tensor_methods(L);
    else lua_pushnil(L);
  }
#endif
  lua_remove(L, -2);  /* the metatable */
}

/* Protected part of completion.  Argument: the word being completed, such
 * as "mm.ze" or "t:sh".  Returns a table of full candidates ("mm.zeros"):
 * the string keys of the value named by the part before the last '.' or
 * ':', and of its __index tables (where methods live). */
static int collect_completions(lua_State *L) {
  const char *word = luaL_checkstring(L, 1);
  const char *last = NULL;  /* the last '.' or ':' */
  for (const char *p = strpbrk(word, ".:"); p != NULL; p = strpbrk(p + 1, ".:"))
    last = p;
  const char *stem = last != NULL ? last + 1 : word;
  size_t stemlen = strlen(stem);

  lua_pushglobaltable(L);  /* walk the dotted prefix from _G */
  for (const char *p = word; last != NULL && p <= last;) {
    size_t n = strcspn(p, ".:");
    lua_pushlstring(L, p, n);
    lua_gettable(L, -2);  /* may call __index or raise: we are protected */
    lua_remove(L, -2);
    p += n + 1;
  }
  lua_newtable(L);  /* results */
  lua_newtable(L);  /* keys seen, so a method shadowed by a field is listed once */
  int results = lua_gettop(L) - 1, seen = results + 1, count = 0;
  lua_pushvalue(L, results - 1);
  for (int depth = 0; depth < 8 && !lua_isnil(L, -1); depth++) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) continue;
        size_t klen;
        const char *key = lua_tolstring(L, -1, &klen);
        if (klen < stemlen || strncmp(key, stem, stemlen) != 0) continue;
        lua_pushvalue(L, -1);
        if (lua_rawget(L, seen) != LUA_TNIL) {
          lua_pop(L, 1);
          continue;
        }
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushboolean(L, 1);
        lua_rawset(L, seen);
        lua_pushlstring(L, word, (size_t)(stem - word));
        lua_pushvalue(L, -2);
        lua_concat(L, 2);
        lua_rawseti(L, results, ++count);
      }
    }
    push_next_level(L);
    lua_remove(L, -2);  /* the previous level */
  }
  lua_settop(L, results);
  return 1;
}

static char *completion_generator(const char *text, int state) {
  static int index;
  lua_State *L = complete_L;
  if (state == 0) {  /* new word: compute the candidates into the registry */
    lua_pushcfunction(L, collect_completions);
    lua_pushstring(L, text);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      lua_pop(L, 1);
      lua_newtable(L);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "microml.completions");
    index = 0;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "microml.completions");
  lua_rawgeti(L, -1, ++index);
  const char *s = lua_tostring(L, -1);
  char *match = s != NULL ? strdup(s) : NULL;
  lua_pop(L, 2);
  return match;
}

static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1;  /* never fall back to file names */
  return rl_completion_matches(text, completion_generator);
}

/* ---- REPL ----------------------------------------------------------------- */

static void setup_editline(lua_State *L) {
  complete_L = L;
  rl_readline_name = PROGNAME;  /* for ~/.editrc */
  rl_attempted_completion_function = complete;
  rl_completion_append_character = '\0';
  /* '.' and ':' stay inside a word so "mm.ze" completes as a whole. */
  static char word_breaks[] = " \t\n\"'`@$><=;|&{}()[],+-*/%^~#";
  rl_completer_word_break_characters = word_breaks;
  using_history();
  stifle_history(HISTORY_LINES);
  const char *home = getenv("HOME");
  if (home != NULL && home[0] != '\0' &&
      (size_t)snprintf(history_path, sizeof history_path, "%s/%s", home,
                       HISTORY_FILE) < sizeof history_path) {
    read_history(history_path);  /* a missing or unreadable file is fine */
    atexit(save_history);        /* also runs on os.exit */
  } else {
    history_path[0] = '\0';
  }
}

static void repl(lua_State *L) {
  use_editline = isatty(STDIN_FILENO);
  fputs(VERSION_LINE "  (Ctrl-D to exit)\n", stdout);
  if (lua_getglobal(L, "mm") == LUA_TNIL) {  /* keep an mm set by the script */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "microml");
    if (report(L, docall(L, 1, 1)) == LUA_OK) {
      lua_setglobal(L, "mm");
      fputs("mm = require \"microml\" is loaded: try mm.ones(2, 3)\n", stdout);
    }
  }
  fflush(stdout);
  lua_settop(L, 0);
  if (use_editline) setup_editline(L);
  int status;
  while ((status = read_chunk(L)) != CHUNK_END) {
    if (status == CHUNK_INTERRUPTED) continue;  /* Ctrl-C at the prompt: fresh line */
    if (status == LUA_OK) status = docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK && lua_gettop(L) > 0) {
      lua_pushcfunction(L, print_values);
      lua_insert(L, 1);
      status = docall(L, lua_gettop(L) - 1, 0);
    }
    report(L, status);
    lua_settop(L, 0);
  }
  lua_settop(L, 0);
  fputc('\n', stdout);
  fflush(stdout);
}

/* ---- main ----------------------------------------------------------------- */

/* Everything runs inside one protected call so that even an out-of-memory
 * error during setup is reported rather than aborting. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  int first;
  int flags = collect_args(argc, argv, &first);
  luaL_checkversion(L);
  if (flags == BAD_ARGS || (flags & HAS_HELP)) {
    print_usage(flags == BAD_ARGS ? argv[first] : NULL);
    return 0;
  }
  if (flags & HAS_V) {
    fputs(VERSION_LINE "\n", stdout);
    fflush(stdout);
  }
  if (flags & HAS_BINARY) chunk_mode = "bt";
  if (flags & HAS_NOENV) {  /* read by luaopen_package */
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  /* The environment is checked before anything runs, whether or not the
   * script requires microml: a bad value is a start-up error. */
  const char *cfg = mm_config_error();
  if (cfg) {
    fprintf(stderr, PROGNAME ": %s\n", cfg);
    return 0;
  }
  luaL_openlibs(L);
  preload_modules(L);
  int script = first < argc ? first : 0;
  create_arg_table(L, argv, argc, script);
  if (!run_args(L, argv, script > 0 ? script : argc)) return 0;
  if (script > 0 && run_script(L, argv, script) != LUA_OK) return 0;
  if (flags & HAS_I) {
    repl(L);
  } else if (script == 0 && !(flags & (HAS_E | HAS_V))) {
    if (isatty(STDIN_FILENO)) repl(L);
    else if (dochunk(L, luaL_loadfilex(L, NULL, chunk_mode)) != LUA_OK) return 0;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- the Lua state's allocator --------------------------------------------
 *
 * Every tensor an op returns is a Lua userdata box (a few dozen bytes) that
 * the collector frees in bursts; through glibc those bursts overflow the
 * per-thread cache and each box costs a trip into malloc's bins (about a
 * tenth of a one-element `a + b`).  Blocks up to SMALL_MAX bytes therefore
 * come from free lists of 16-byte size classes carved out of 64 KiB slabs;
 * larger ones go to malloc.  Slabs are never returned while the state lives
 * (a steady loop reuses the same blocks) and are all freed after lua_close.
 * Only the `microml` program uses this; `require "microml"` from the stock
 * lua5.4 keeps that program's allocator.  Under AddressSanitizer free blocks
 * and the unused tail of a block are poisoned, so overruns are still caught. */
#define SMALL_GRAIN 16
#define SMALL_MAX 256
#define SMALL_CLASSES (SMALL_MAX / SMALL_GRAIN)
#define SLAB_BYTES (64 * 1024)

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

typedef struct small_block { struct small_block *next; } small_block;
typedef struct slab { struct slab *next; } slab;   /* header of each slab */

typedef struct {
  small_block *free[SMALL_CLASSES];
  slab *slabs;            /* every slab, to free them at the end */
  char *bump, *bump_end;  /* the uncarved rest of the newest slab */
} small_heap;

/* Static so that blocks stay reachable (not leaks) if the program leaves
 * through exit() without closing the state, as os.exit does. */
static small_heap heap;

/* Slab header padded to the grain so blocks stay 16-byte aligned, as
 * malloc's are (Lua stores doubles and pointers in them). */
#define SLAB_HEADER ((sizeof(slab) + SMALL_GRAIN - 1) / SMALL_GRAIN * SMALL_GRAIN)

static void *small_get(small_heap *h, size_t n) {
  int c = (int)((n - 1) / SMALL_GRAIN);
  small_block *b = h->free[c];
  if (b) {
    UNPOISON(b, sizeof *b);
    h->free[c] = b->next;
  } else {
    size_t sz = (size_t)(c + 1) * SMALL_GRAIN;
    if ((size_t)(h->bump_end - h->bump) < sz) {
      slab *s = malloc(SLAB_BYTES);
      if (!s) return NULL;
      s->next = h->slabs;
      h->slabs = s;
      h->bump = (char *)s + SLAB_HEADER;
      h->bump_end = (char *)s + SLAB_BYTES;
      POISON(h->bump, (size_t)(h->bump_end - h->bump));
    }
    /* The rest of the old slab (< SMALL_MAX bytes) is left unused. */
    b = (small_block *)h->bump;
    h->bump += sz;
  }
  POISON(b, (size_t)(c + 1) * SMALL_GRAIN);
  UNPOISON(b, n);
  return b;
}

static void small_put(small_heap *h, void *p, size_t n) {
  int c = (int)((n - 1) / SMALL_GRAIN);
  small_block *b = p;
  UNPOISON(b, sizeof *b);
  b->next = h->free[c];
  h->free[c] = b;
  POISON((char *)b + sizeof *b, (size_t)(c + 1) * SMALL_GRAIN - sizeof *b);
}

/* lua_Alloc: when ptr is not NULL, osize is the block's size (Lua 5.4
 * guarantees it), which picks its class without a header per block. */
static void *lua_small_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  small_heap *h = ud;
  if (ptr == NULL) osize = 0;   /* then osize only says what kind of object */
  if (nsize == 0) {
    if (ptr) {
      if (osize <= SMALL_MAX) small_put(h, ptr, osize);
      else free(ptr);
    }
    return NULL;
  }
  if (ptr && osize > SMALL_MAX && nsize > SMALL_MAX) return realloc(ptr, nsize);
  if (ptr && osize <= SMALL_MAX && nsize <= SMALL_MAX &&
      (osize - 1) / SMALL_GRAIN == (nsize - 1) / SMALL_GRAIN) {
    UNPOISON(ptr, nsize);
    return ptr;
  }
  void *q = nsize <= SMALL_MAX ? small_get(h, nsize) : malloc(nsize);
  if (!q) {
    /* Lua assumes a shrink never fails: keep the old, larger block.  It
     * later comes back with the smaller size and joins a small class's
     * list, where it is still big enough (a malloc'd one is then not
     * returned at exit — only after running out of memory). */
    if (ptr && nsize <= osize) { UNPOISON(ptr, nsize); return ptr; }
    return NULL;   /* Lua collects and retries, or raises "not enough memory" */
  }
  if (ptr) {
    memcpy(q, ptr, osize < nsize ? osize : nsize);
    if (osize <= SMALL_MAX) small_put(h, ptr, osize);
    else free(ptr);
  }
  return q;
}

/* After lua_close nothing refers to a small block any more. */
static void small_heap_free(small_heap *h) {
  while (h->slabs) {
    slab *s = h->slabs;
    h->slabs = s->next;
    UNPOISON(s, SLAB_BYTES);
    free(s);
  }
  memset(h, 0, sizeof *h);
}

/* As luaL_newstate, with the allocator above: warnings go to stderr, and a
 * panic (an error outside any protected call) says what happened. */
static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, PROGNAME ": PANIC: unprotected error in call to Lua API (%s)\n",
          msg ? msg : "error object is not a string");
  return 0;
}

static void warnf_on(void *ud, const char *msg, int tocont);

static void warnf_cont(void *ud, const char *msg, int tocont) {
  lua_State *L = ud;
  fputs(msg, stderr);
  if (tocont) lua_setwarnf(L, warnf_cont, L);
  else { fputs("\n", stderr); lua_setwarnf(L, warnf_on, L); }
}

static void warnf_off(void *ud, const char *msg, int tocont) {
  lua_State *L = ud;
  if (tocont || *msg != '@') return;
  if (strcmp(msg, "@on") == 0) lua_setwarnf(L, warnf_on, L);
}

static void warnf_on(void *ud, const char *msg, int tocont) {
  lua_State *L = ud;
  if (!tocont && *msg == '@') {
    if (strcmp(msg, "@off") == 0) lua_setwarnf(L, warnf_off, L);
    return;
  }
  fputs("Lua warning: ", stderr);   /* as luaL_newstate's */
  warnf_cont(ud, msg, tocont);
}

static lua_State *new_state(void) {
  lua_State *L = lua_newstate(lua_small_alloc, &heap);
  if (L) {
    lua_atpanic(L, panic);
    lua_setwarnf(L, warnf_off, L);   /* off by default, as in lua.c */
  }
  return L;
}

int main(int argc, char **argv) {
  lua_State *L = new_state();
  if (L == NULL) {
    fputs(PROGNAME ": cannot create Lua state: not enough memory\n", stderr);
    return EXIT_FAILURE;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int ok = status == LUA_OK && lua_toboolean(L, -1);
  report(L, status);
  lua_close(L);
  small_heap_free(&heap);
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
