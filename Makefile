# MicroML build.  GNU make.
#
#   make            runtime (build/libmicroml.a), Lua module (build/lua/microml/core.so),
#                   the `microml` program (build/microml)
#   make deps       install missing Debian packages (cheap check first)
#   make test       C tests + busted specs (both GEMM paths)
#   make train      the main job: examples/train.lua
#   make bench      benchmarks side by side with OpenBLAS / PyTorch
#   make install PREFIX=/usr/local
#   make clean

# ---- dependencies: the one list -------------------------------------------
# Needed to build, test and train.
DEPS_CORE  := gcc make lua5.4 liblua5.4-dev lua-busted libsimde-dev graphviz \
              zlib1g-dev libedit-dev dataset-fashion-mnist
# Peers for the benchmarks only.
DEPS_BENCH := libopenblas-dev python3-torch

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
missing = $(shell for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
             | grep -q 'install ok installed' || echo $$p; done)

# ---- toolchain --------------------------------------------------------------
CC      ?= cc
OPT     ?= -O2
# No -ffast-math, ever: it breaks NaN/inf handling and softmax/GELU numerics.
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -pthread -Iruntime
LUA_INC := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA_LIB := $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
LDLIBS  += -lz -lm -pthread

# SANITIZE=1 builds everything with ASan+UBSan into build-san/ (issue 7).
ifeq ($(SANITIZE),1)
BUILD   ?= build-san
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
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

LIB      := $(BUILD)/libmicroml.a
MODULE   := $(BUILD)/lua/microml/core.so
PROGRAM  := $(BUILD)/microml

.PHONY: all deps deps-core test ctest spec train bench install clean sanitize
all: $(LIB) $(MODULE) $(PROGRAM)

deps:
	@m="$(call missing,$(DEPS_CORE) $(DEPS_BENCH))"; if [ -n "$$m" ]; then \
	  echo "installing: $$m"; $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$m; fi

deps-core:
	@m="$(call missing,$(DEPS_CORE))"; if [ -n "$$m" ]; then \
	  echo "installing: $$m"; $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$m; fi

$(BUILD)/runtime/%_avx2.o: runtime/%_avx2.c runtime/*.h | $(BUILD)/runtime
	$(CC) $(CFLAGS) $(AVX2_FLAGS) -c $< -o $@
$(BUILD)/runtime/%_avx512.o: runtime/%_avx512.c runtime/*.h | $(BUILD)/runtime
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -c $< -o $@
$(BUILD)/runtime/%.o: runtime/%.c runtime/*.h | $(BUILD)/runtime
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/bindings/%.o: bindings/%.c bindings/*.h runtime/*.h | $(BUILD)/bindings
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

$(PROGRAM): bindings/main.c bindings/*.h runtime/*.h $(BUILD)/embedded_lua.o $(BIND_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LUA_INC) $(LDFLAGS) -o $@ bindings/main.c $(BUILD)/embedded_lua.o \
	  $(BIND_OBJ) $(LIB) $(LUA_LIB) -ledit $(LDLIBS) -ldl

# ---- tests ------------------------------------------------------------------
$(BUILD)/ctest/%: spec/c/%.c $(LIB) | $(BUILD)/ctest
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# Environment that lets the stock lua5.4 find the module in the build tree.
LUAENV := LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
          LUA_CPATH="$(CURDIR)/$(BUILD)/lua/?.so;;" MICROML="$(CURDIR)/$(PROGRAM)"
BUSTED := lua5.4 /usr/bin/busted
# Sanitized runs preload the ASan runtime into the stock interpreter.
ifeq ($(SANITIZE),1)
LUAENV += LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
          ASAN_OPTIONS=detect_leaks=0
endif

ctest: $(CTESTS)
	@fail=0; for t in $(CTESTS); do echo "== $$t"; $$t || fail=1; \
	  MICROML_KERNEL=portable $$t || fail=1; done; exit $$fail

spec: all
	$(LUAENV) $(BUSTED) --output=utfTerminal spec
	@# the portable (non-AVX2) GEMM path must be correct too
	$(LUAENV) MICROML_KERNEL=portable $(BUSTED) --output=utfTerminal spec/linalg_spec.lua spec/conv_spec.lua

test: deps-core
	@$(MAKE) --no-print-directory all $(CTESTS)
	@$(MAKE) --no-print-directory ctest spec

sanitize:
	@$(MAKE) --no-print-directory test SANITIZE=1

train: deps-core
	@$(MAKE) --no-print-directory all
	$(PROGRAM) examples/train.lua $(ARGS)

bench: deps all
	@$(MAKE) --no-print-directory -f bench/bench.mk BUILD=$(BUILD) run

# ---- install ----------------------------------------------------------------
PREFIX ?= /usr/local
# microml.h and the op-family headers it includes.
PUBLIC_H := runtime/microml.h runtime/reduce.h runtime/nnops.h runtime/linalg.h \
            runtime/combine.h runtime/io.h runtime/optim.h runtime/viz.h
LUAVER := 5.4
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/lua/$(LUAVER)/microml \
	  $(DESTDIR)$(PREFIX)/share/lua/$(LUAVER)/microml $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(PREFIX)/lib
	install -m 755 $(PROGRAM) $(DESTDIR)$(PREFIX)/bin/microml
	install -m 755 $(MODULE) $(DESTDIR)$(PREFIX)/lib/lua/$(LUAVER)/microml/core.so
	install -m 644 $(LUA_SRC) $(DESTDIR)$(PREFIX)/share/lua/$(LUAVER)/microml/
	install -m 644 $(PUBLIC_H) $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/libmicroml.a

clean:
	rm -rf build build-san
