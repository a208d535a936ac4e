# MicroML build.  GNU make.
#
#   make            runtime (build/libmicroml.a), Lua module (build/lua/microml/core.so),
#                   the `microml` program (build/microml)
#   make deps       install missing Debian packages (cheap check first)
#   make test       layer checks + C tests + busted specs (both GEMM paths)
#   make check-layers  no cycle between the objects of runtime/ and of bindings/,
#                   none between headers; bindings include only microml.h
#   make train      the main job: examples/train.lua
#   make bench      benchmarks side by side with OpenBLAS / PyTorch
#   make interop    PyTorch <-> MicroML weights through safetensors (torch names)
#   make install PREFIX=/usr/local   (DESTDIR, LUA_LIBDIR, LUA_SHAREDIR too); make uninstall
#   make install-check  C API test built against a DESTDIR install via pkg-config
#   make rock-check     luarocks-5.4 make/test/lint from a fresh clone, private tree
#   make clean

# ---- dependencies: the one list -------------------------------------------
# Needed to build, test and train.
DEPS_CORE  := gcc make lua5.4 liblua5.4-dev lua-busted libsimde-dev graphviz \
              zlib1g-dev libedit-dev dataset-fashion-mnist pkg-config luarocks git
# Peers for the benchmarks only.
DEPS_BENCH := libopenblas-dev python3-torch
# For `make fuzz` (libFuzzer ships in clang's runtime package).
DEPS_CHECKS := clang libclang-rt-14-dev

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
missing = $(shell for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
             | grep -q 'install ok installed' || echo $$p; done)

# ---- toolchain --------------------------------------------------------------
CC      ?= cc
OPT     ?= -O2
# No -ffast-math, ever: it breaks NaN/inf handling and softmax/GELU numerics.
CFLAGS  ?= $(OPT) -g
# `override`: a CFLAGS given on the command line (luarocks passes its own)
# replaces the optimisation flags above but never these, without which the
# build is wrong (C11, the runtime's headers).  CPPFLAGS: extra -I for
# dependencies outside the default paths (the rockspec passes LuaRocks'
# external_dependencies directories).
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -pthread -Iruntime $(CPPFLAGS)
LUA_INC := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA_LIB := $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
LDLIBS  += -lz -lm -pthread

# SANITIZE=1 builds everything with ASan+UBSan into build-san/ (issue 7).
ifeq ($(SANITIZE),1)
BUILD   ?= build-san
override CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
                   -DMM_CHECK_INTERNAL_VIEWS
override LDFLAGS += -fsanitize=address,undefined
endif
# TSAN=1 builds everything with ThreadSanitizer into build-tsan/ (`make tsan`).
ifeq ($(TSAN),1)
BUILD   ?= build-tsan
override CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer
override LDFLAGS += -fsanitize=thread
endif
BUILD   ?= build

# Kernels compiled for one ISA live in their own translation units and are
# chosen at run time by CPU detection (runtime/cpu.c).
AVX2_FLAGS   := -mavx2 -mfma -O3
AVX512_FLAGS := -mavx512f -mavx512vl -mavx512dq -mavx2 -mfma -O3

RT_SRC   := $(wildcard runtime/*.c)
RT_OBJ   := $(RT_SRC:runtime/%.c=$(BUILD)/runtime/%.o)
BIND_SRC := $(filter-out bindings/main.c,$(wildcard bindings/*.c))
BIND_OBJ := $(BIND_SRC:bindings/%.c=$(BUILD)/bindings/%.o)
LUA_SRC  := $(wildcard lua/microml/*.lua)
CTESTS   := $(patsubst spec/c/%.c,$(BUILD)/ctest/%,$(wildcard spec/c/test_*.c))

# The public headers: microml.h (the umbrella), tensor.h and the op-family
# headers it includes, under include/microml/ so that generic names such as
# io.h cannot collide with other software.  A C program uses
# #include <microml/microml.h>; the headers the runtime keeps to itself
# (internal.h, autograd.h, iter.h, kernels) are not installed.  pointwise.def
# is installed: tensor.h includes the op table to declare enum mm_unary_op.
PUBLIC_H := runtime/microml.h runtime/tensor.h runtime/reduce.h runtime/nnops.h \
            runtime/linalg.h runtime/conv.h runtime/shape.h runtime/index.h runtime/io.h \
            runtime/optim.h runtime/viz.h runtime/pointwise.def
# The same headers staged as they are installed, for spec/c/test_capi.c
# (#include <microml/microml.h>): a public header that includes one missing
# from PUBLIC_H fails the C tests, not only a user's build.
STAGED_H := $(PUBLIC_H:runtime/%=$(BUILD)/include/microml/%)
$(BUILD)/include/microml/%: runtime/% | $(BUILD)/include/microml
	cp $< $@
.SECONDARY: $(STAGED_H)
$(BUILD)/include/microml:
	mkdir -p $@

LIB      := $(BUILD)/libmicroml.a
MODULE   := $(BUILD)/lua/microml/core.so
PROGRAM  := $(BUILD)/microml

.PHONY: all deps deps-core deps-bench deps-checks interop fuzz-run test ctest spec check-layers train bench install uninstall install-check rock-check clean sanitize tsan tsan-run fuzz
all: $(LIB) $(MODULE) $(PROGRAM)

deps:
	@m="$(call missing,$(DEPS_CORE) $(DEPS_BENCH) $(DEPS_CHECKS))"; if [ -n "$$m" ]; then \
	  echo "installing: $$m"; $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$m; fi

deps-core:
	@m="$(call missing,$(DEPS_CORE))"; if [ -n "$$m" ]; then \
	  echo "installing: $$m"; $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$m; fi

deps-bench:
	@m="$(call missing,$(DEPS_BENCH))"; if [ -n "$$m" ]; then \
	  echo "installing: $$m"; $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$m; fi

deps-checks:
	@m="$(call missing,$(DEPS_CHECKS))"; if [ -n "$$m" ]; then \
	  echo "installing: $$m"; $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$m; fi

$(BUILD)/runtime/%_avx2.o: runtime/%_avx2.c runtime/*.h runtime/*.def | $(BUILD)/runtime
	$(CC) $(CFLAGS) $(AVX2_FLAGS) -c $< -o $@
$(BUILD)/runtime/%_avx512.o: runtime/%_avx512.c runtime/*.h runtime/*.def | $(BUILD)/runtime
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -c $< -o $@
$(BUILD)/runtime/%.o: runtime/%.c runtime/*.h runtime/*.def | $(BUILD)/runtime
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/bindings/%.o: bindings/%.c bindings/*.h runtime/*.h runtime/*.def | $(BUILD)/bindings
	$(CC) $(CFLAGS) $(LUA_INC) -c $< -o $@

$(BUILD)/runtime $(BUILD)/bindings $(BUILD)/lua/microml $(BUILD)/ctest $(BUILD)/tools:
	mkdir -p $@

$(LIB): $(RT_OBJ)
	rm -f $@; ar rcs $@ $^

# The Lua C module for the stock interpreter: require "microml" finds
# lua/microml/init.lua, which requires "microml.core" (this file).
$(MODULE): $(BIND_OBJ) $(LIB) | $(BUILD)/lua/microml
	$(CC) -shared $(LDFLAGS) -o $@ $(BIND_OBJ) $(LIB) $(LDLIBS)

# The Lua sources are embedded in the program so that it runs from anywhere.
$(BUILD)/tools/embed: tools/embed.c | $(BUILD)/tools
	$(CC) -O1 -o $@ $<
$(BUILD)/embedded_lua.c: $(LUA_SRC) $(BUILD)/tools/embed
	$(BUILD)/tools/embed $@ $(LUA_SRC)
$(BUILD)/embedded_lua.o: $(BUILD)/embedded_lua.c
	$(CC) $(CFLAGS) -c $< -o $@

$(PROGRAM): bindings/main.c bindings/*.h runtime/*.h runtime/*.def $(BUILD)/embedded_lua.o $(BIND_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LUA_INC) $(LDFLAGS) -o $@ bindings/main.c $(BUILD)/embedded_lua.o \
	  $(BIND_OBJ) $(LIB) $(LUA_LIB) -ledit $(LDLIBS) -ldl

# ---- tests ------------------------------------------------------------------
$(BUILD)/ctest/%: spec/c/%.c spec/c/check.h $(LIB) $(STAGED_H) | $(BUILD)/ctest
	$(CC) $(CFLAGS) -I$(BUILD)/include $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# Environment that lets the stock lua5.4 find the module in the build tree.
LUAENV := LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
          LUA_CPATH="$(CURDIR)/$(BUILD)/lua/?.so;;" MICROML="$(CURDIR)/$(PROGRAM)"
BUSTED := lua5.4 /usr/bin/busted
# Sanitized runs preload the ASan runtime into the stock interpreter, with
# LeakSanitizer on: every process must exit with zero leaks.  Specs ask for
# absurd sizes on purpose, so malloc must return NULL there (the runtime turns
# that into a Lua error) instead of ASan aborting.  .ci/lsan.supp lists the
# leaks of Graphviz's `dot`, a child process that inherits the preload.
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=0 \
           LSAN_OPTIONS=suppressions=$(CURDIR)/.ci/lsan.supp:print_suppressions=0 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ifeq ($(SANITIZE),1)
LUAENV += LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
          $(SAN_ENV)
endif

ctest: $(CTESTS)
	@fail=0; for t in $(CTESTS); do echo "== $$t"; $(if $(filter 1,$(SANITIZE)),$(SAN_ENV)) $$t || fail=1; \
	  $(if $(filter 1,$(SANITIZE)),$(SAN_ENV)) MICROML_KERNEL=portable $$t || fail=1; done; exit $$fail

spec: all
	$(LUAENV) $(BUSTED) --output=utfTerminal spec
	@# the portable (non-AVX2) GEMM path must be correct too
	$(LUAENV) MICROML_KERNEL=portable $(BUSTED) --output=utfTerminal spec/linalg_spec.lua spec/conv_spec.lua

test: deps-core
	@$(MAKE) --no-print-directory all $(CTESTS)
	@$(MAKE) --no-print-directory check-layers ctest spec

# Layering (tools/check_layers.sh, tools/check_includes.sh): within runtime/
# and within bindings/ (helpers <- Tensor class, families <- module entry)
# no object calls into an object that calls back; no header cycle; the
# bindings see the runtime only through microml.h.  The object lists, not
# the directories, so that objects of deleted sources are not counted.
check-layers: all
	@tools/check_layers.sh $(RT_OBJ)
	@tools/check_layers.sh $(BIND_OBJ)
	@tools/check_includes.sh

# The whole suite under ASan+UBSan with LeakSanitizer on (see SAN_ENV).
sanitize:
	@$(MAKE) --no-print-directory test SANITIZE=1

# ThreadSanitizer over the multi-threaded kernels: the GEMM test (1 vs 2
# threads, the pool's chunking) and spec/tsan_workload.lua (elementwise,
# reductions, embedding, conv, a training step) on 4 threads.  Any report
# fails the run (halt_on_error).
TSAN_ENV := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:allocator_may_return_null=1
tsan:
	@$(MAKE) --no-print-directory TSAN=1 tsan-run
tsan-run: all $(CTESTS)
	@set -e; for t in $(CTESTS); do echo "== $$t (TSan)"; \
	  $(TSAN_ENV) MICROML_NUM_THREADS=2 $$t; done
	$(LUAENV) LD_PRELOAD="$$($(CC) -print-file-name=libtsan.so)" $(TSAN_ENV) \
	  MICROML_NUM_THREADS=4 lua5.4 spec/tsan_workload.lua

# libFuzzer harnesses for the file readers (fuzz/README.md), each run for
# FUZZ_SECONDS from the seeds of fuzz/make_seeds.lua.  Needs clang and
# libclang-rt-14-dev.  Prints "fuzz: N passed, N failed" (one per harness).
FUZZ_SECONDS ?= 30
FUZZ_CC      ?= clang
FUZZ_DIR     := build/fuzz
FUZZ_FLAGS   := -g -O1 -std=c11 -D_GNU_SOURCE -Iruntime
FUZZ_OBJ     := $(RT_SRC:runtime/%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_NAMES   := idx npy csv safetensors checkpoint_meta
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)
# Keep the instrumented objects between runs (make would delete them as
# intermediates of the pattern rules and recompile the runtime every time).
.SECONDARY: $(FUZZ_OBJ)
$(FUZZ_DIR)/obj $(FUZZ_DIR)/crashes:
	mkdir -p $@
$(FUZZ_DIR)/obj/%_avx2.o: runtime/%_avx2.c runtime/*.h | $(FUZZ_DIR)/obj
	$(FUZZ_CC) $(FUZZ_FLAGS) -mavx2 -mfma -fsanitize=fuzzer-no-link,address -c $< -o $@
$(FUZZ_DIR)/obj/%.o: runtime/%.c runtime/*.h runtime/*.def | $(FUZZ_DIR)/obj
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,address -c $< -o $@
$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer,address $< $(FUZZ_OBJ) -lz -lm -pthread -o $@
fuzz: deps-checks
	@$(MAKE) --no-print-directory fuzz-run
fuzz-run: all $(FUZZ_BINS) | $(FUZZ_DIR)/crashes
	@$(LUAENV) lua5.4 fuzz/make_seeds.lua $(FUZZ_DIR)/seeds >/dev/null
	@pass=0; fail=0; for h in $(FUZZ_NAMES); do \
	  mkdir -p $(FUZZ_DIR)/corpus_$$h && cp -n $(FUZZ_DIR)/seeds/$$h/* $(FUZZ_DIR)/corpus_$$h/ 2>/dev/null; \
	  echo "== fuzz_$$h for $(FUZZ_SECONDS) s"; \
	  if ASAN_OPTIONS=allocator_may_return_null=1 $(FUZZ_DIR)/fuzz_$$h -max_total_time=$(FUZZ_SECONDS) \
	       -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/crashes/$$h- \
	       $(FUZZ_DIR)/corpus_$$h > $(FUZZ_DIR)/fuzz_$$h.log 2>&1; then \
	    pass=$$((pass+1)); grep -h "stat::number_of_executed_units" $(FUZZ_DIR)/fuzz_$$h.log; \
	  else fail=$$((fail+1)); tail -n 40 $(FUZZ_DIR)/fuzz_$$h.log; fi; done; \
	echo "fuzz: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

train: deps-core
	@$(MAKE) --no-print-directory all
	$(PROGRAM) examples/train.lua $(ARGS)

# PyTorch <-> MicroML through safetensors with torch's names, an MLP and a
# CNN, outputs within 1e-6 both ways (bench/torch_interop.py).  A few
# seconds; prints "torch_interop: N passed, N failed".
interop: deps-bench
	@$(MAKE) --no-print-directory all
	/usr/bin/python3 bench/torch_interop.py $(PROGRAM)

bench: deps all
	@$(MAKE) --no-print-directory -f bench/bench.mk BUILD=$(BUILD) run

# ---- install ----------------------------------------------------------------
# The one version number: MM_VERSION in runtime/tensor.h.  mm.version, the
# program's -v line, microml.pc and CHANGELOG.md follow it; the rockspec is
# scm-1 (built from the repository), a release rockspec would be VERSION-1.
VERSION := $(shell sed -n 's/^\#define MM_VERSION "\(.*\)"/\1/p' runtime/tensor.h)

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
LUAVER     := 5.4
# Where the stock lua5.4 looks for modules.  Debian's lua5.4.pc knows its
# own tree: for PREFIX=/usr, C modules go in the multiarch directory
# (INSTALL_CMOD), which is not on package.cpath under any other prefix;
# there /usr/local/lib/lua/5.4 is (and share/lua/5.4 alike).  Both are
# overridable, e.g. LUA_LIBDIR=$$HOME/.luarocks/lib/lua/5.4.
lua_pc_var = $(shell pkg-config --define-variable=prefix=$(PREFIX) --variable=$(1) lua5.4 2>/dev/null)
ifeq ($(PREFIX),/usr)
LUA_LIBDIR   ?= $(or $(call lua_pc_var,INSTALL_CMOD),$(PREFIX)/lib/lua/$(LUAVER))
else
LUA_LIBDIR   ?= $(PREFIX)/lib/lua/$(LUAVER)
endif
LUA_SHAREDIR ?= $(or $(call lua_pc_var,INSTALL_LMOD),$(PREFIX)/share/lua/$(LUAVER))

# Only a static library is installed, so its own dependencies go in Libs
# (not Libs.private): `pkg-config --libs microml` alone must link.
$(BUILD)/microml.pc: runtime/tensor.h Makefile
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCLUDEDIR)' '' \
	  'Name: microml' 'Description: MicroML tensor, autograd and kernel runtime' \
	  'Version: $(VERSION)' 'Cflags: -I$${includedir} -pthread' \
	  'Libs: -L$${libdir} -lmicroml -lz -lm -pthread' > $@

# Every file install writes, for uninstall (directories are left if other
# software put files in them).
INSTALLED := $(BINDIR)/microml $(LUA_LIBDIR)/microml/core.so \
             $(LUA_SRC:lua/microml/%=$(LUA_SHAREDIR)/microml/%) \
             $(PUBLIC_H:runtime/%=$(INCLUDEDIR)/microml/%) \
             $(LIBDIR)/libmicroml.a $(PKGCONFIGDIR)/microml.pc

install: all $(BUILD)/microml.pc
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LUA_LIBDIR)/microml $(DESTDIR)$(LUA_SHAREDIR)/microml \
	  $(DESTDIR)$(INCLUDEDIR)/microml $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 755 $(PROGRAM) $(DESTDIR)$(BINDIR)/microml
	install -m 755 $(MODULE) $(DESTDIR)$(LUA_LIBDIR)/microml/core.so
	install -m 644 $(LUA_SRC) $(DESTDIR)$(LUA_SHAREDIR)/microml/
	install -m 644 $(PUBLIC_H) $(DESTDIR)$(INCLUDEDIR)/microml/
	install -m 644 $(LIB) $(DESTDIR)$(LIBDIR)/libmicroml.a
	install -m 644 $(BUILD)/microml.pc $(DESTDIR)$(PKGCONFIGDIR)/microml.pc

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)$(LUA_LIBDIR)/microml $(DESTDIR)$(LUA_SHAREDIR)/microml \
	  $(DESTDIR)$(INCLUDEDIR)/microml 2>/dev/null

# make install into a temporary DESTDIR, then build and run the C API test
# against it with pkg-config alone (no -Iruntime, no build/ paths), run the
# installed program and module, and uninstall leaving no file behind.
# Prints "install-check: N passed, N failed".
install-check: all
	@set -u; d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; pass=0; fail=0; \
	ok() { echo "ok   $$1"; pass=$$((pass+1)); }; ko() { echo "FAIL $$1"; fail=$$((fail+1)); }; \
	$(MAKE) --no-print-directory install DESTDIR="$$d" PREFIX=/opt/mm >"$$d.log" 2>&1 \
	  && ok "make install DESTDIR PREFIX=/opt/mm" || { cat "$$d.log"; ko "make install"; }; \
	$(MAKE) --no-print-directory -s -n install PREFIX=/usr \
	  | grep -qF "$$(pkg-config --variable=INSTALL_CMOD lua5.4)/microml/core.so" \
	  && ok "PREFIX=/usr puts core.so in INSTALL_CMOD" || ko "PREFIX=/usr module path"; \
	export PKG_CONFIG_PATH="$$d/opt/mm/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$$d"; \
	[ "$$(pkg-config --modversion microml)" = "$(VERSION)" ] && ok "pkg-config --modversion = $(VERSION)" \
	  || ko "pkg-config --modversion microml"; \
	$(CC) -std=c11 -o "$$d/test_capi" spec/c/test_capi.c $$(pkg-config --cflags --libs microml) \
	  && ok "test_capi.c builds with pkg-config --cflags --libs microml" || ko "test_capi.c build"; \
	[ -x "$$d/test_capi" ] && "$$d/test_capi" | tail -n 1 | grep -q ', 0 failed$$' \
	  && ok "test_capi runs against the installed library" || ko "test_capi run"; \
	"$$d/opt/mm/bin/microml" -v | grep -qF "MicroML $(VERSION) " && ok "installed microml -v" || ko "microml -v"; \
	LUA_PATH="$$d/opt/mm/share/lua/$(LUAVER)/?.lua;$$d/opt/mm/share/lua/$(LUAVER)/?/init.lua" \
	  LUA_CPATH="$$d/opt/mm/lib/lua/$(LUAVER)/?.so" lua5.4 -e \
	  'local mm = require "microml"; assert(mm.version == "$(VERSION)"); assert(mm.nn.Linear(2, 3)(mm.ones(4, 2)):shape()[2] == 3)' \
	  && ok "lua5.4 requires the installed module" || ko "lua5.4 require microml"; \
	$(MAKE) --no-print-directory uninstall DESTDIR="$$d" PREFIX=/opt/mm >/dev/null 2>&1; \
	left=$$(find "$$d/opt" -type f 2>/dev/null); [ -z "$$left" ] && ok "make uninstall removes every file" \
	  || ko "uninstall left: $$left"; rm -f "$$d.log"; \
	echo "install-check: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

# The LuaRocks package (microml-scm-1.rockspec) from a fresh clone of HEAD
# into a temporary tree: lint, make, test, use, remove (tools/rock_check.sh).
rock-check:
	@tools/rock_check.sh

clean:
	rm -rf build build-san build-tsan
