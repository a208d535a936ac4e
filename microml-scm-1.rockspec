-- LuaRocks package for MicroML (LuaRocks 3.8, Lua 5.4: use `luarocks-5.4`;
-- Debian's plain `luarocks` targets Lua 5.1).
--
--   luarocks-5.4 --tree /path/to/tree make     (from a clone: builds, installs)
--   luarocks-5.4 --tree /path/to/tree test     (the busted suite, `make spec`)
--
-- The build is the project's own `make all`, not LuaRocks' builtin backend:
-- the builtin one compiles every file with one flag set, so the AVX2 and
-- AVX-512 kernels (runtime/*_avx2.c, *_avx512.c, built with their own -m
-- flags and chosen at run time) would fall back to SIMDe's emulation, ~70x
-- slower.  The Makefile's `install` writes Lua's system paths, so LuaRocks
-- installs the files itself (install_pass = false, build.install).
rockspec_format = "3.0"
package = "microml"
-- The rock of the repository's head; mm.version (MM_VERSION in
-- runtime/tensor.h) names the release it leads to.  A release rockspec is
-- microml-<MM_VERSION>-1 (spec/version_spec.lua checks both spellings).
version = "scm-1"
source = {
  -- Placeholder until the project has a public address; `luarocks make`
  -- from a clone never fetches it.
  url = "git+https://github.com/microml/microml.git",
}
description = {
  summary = "A machine-learning runtime: C tensors, autograd and SIMD kernels, with Lua 5.4 on top",
  detailed = [[
Tensors with broadcasting and views, reverse-mode autograd, AVX2/AVX-512
GEMM chosen at run time, nn modules, optimizers, data loading, safetensors
checkpoints (with PyTorch-compatible names).  Installs the Lua module
`microml` (C core microml.core) and the `microml` program (a Lua 5.4
interpreter with the library built in).]],
  license = "MIT",
  labels = { "machine-learning", "tensor", "autograd" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  ZLIB = { header = "zlib.h", library = "z" },        -- safetensors/npy/idx.gz readers
  LIBEDIT = { header = "editline/readline.h", library = "edit" },  -- the program's REPL
  SIMDE = { header = "simde/x86/avx2.h" },            -- header-only
}
build = {
  type = "make",
  build_target = "all",
  build_variables = {
    -- The Makefile appends its required flags to these (`override`).
    CFLAGS = "$(CFLAGS)",
    CPPFLAGS = "-I$(ZLIB_INCDIR) -I$(LIBEDIT_INCDIR) -I$(SIMDE_INCDIR)",
    LDFLAGS = "-L$(ZLIB_LIBDIR) -L$(LIBEDIT_LIBDIR)",
    LUA_INC = "-I$(LUA_INCDIR)",
  },
  install_pass = false,
  install = {
    lua = {
      ["microml.init"] = "lua/microml/init.lua",
      ["microml.autograd"] = "lua/microml/autograd.lua",
      ["microml.checkpoint"] = "lua/microml/checkpoint.lua",
      ["microml.data"] = "lua/microml/data.lua",
      ["microml.gradcheck"] = "lua/microml/gradcheck.lua",
      ["microml.nn"] = "lua/microml/nn.lua",
      ["microml.optim"] = "lua/microml/optim.lua",
      ["microml.options"] = "lua/microml/options.lua",
      ["microml.progress"] = "lua/microml/progress.lua",
      ["microml.viz"] = "lua/microml/viz.lua",
    },
    lib = { ["microml.core"] = "build/lua/microml/core.so" },
    bin = { microml = "build/microml" },
  },
  copy_directories = {},
}
-- `make spec`: the busted suite, run by Debian's busted (lua-busted) under
-- lua5.4.  The "busted" test type would need busted installed as a rock in
-- a LuaRocks tree (LuaRocks 3.8 runs <tree>/bin/busted), which Debian's
-- package is not.
test = {
  type = "command",
  command = "make spec",
}
