# Benchmarks.  Run by `make bench` as `make -f bench/bench.mk BUILD=build run`
# after the main Makefile has built $(BUILD)/libmicroml.a.  Each benchmark
# gets a run-NAME target; `run` depends on all of them.

BUILD   ?= build
CC      ?= cc
CFLAGS  := -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -pthread -Iruntime
LDLIBS  := -lz -lm -pthread

# OpenBLAS is the peer when it is installed (libopenblas-dev); otherwise the
# benchmark prints "OpenBLAS not installed" in its columns.
CBLAS_H := /usr/include/x86_64-linux-gnu/cblas.h
HAVE_OPENBLAS := $(shell [ -f $(CBLAS_H) ] && echo 'int main(void){return 0;}' | \
                   $(CC) -x c - -lopenblas -o /dev/null 2>/dev/null && echo 1)
ifeq ($(HAVE_OPENBLAS),1)
BLAS_CFLAGS := -DHAVE_OPENBLAS -I$(dir $(CBLAS_H))
BLAS_LIBS   := -lopenblas
endif

.PHONY: run run-gemm run-train run-overhead run-startup
run: run-gemm run-train run-overhead run-startup run-soak run-soak-mixed

$(BUILD)/bench:
	mkdir -p $@

$(BUILD)/bench/gemm_bench: bench/gemm_bench.c $(BUILD)/libmicroml.a runtime/gemm.h | $(BUILD)/bench
	$(CC) $(CFLAGS) $(BLAS_CFLAGS) -o $@ $< $(BUILD)/libmicroml.a $(BLAS_LIBS) $(LDLIBS)

# OpenBLAS worker threads spin for ~0.1 s after each call by default, which
# would steal the second core from whatever is timed next; 2^20 cycles keeps
# them warm between back-to-back calls and out of the way otherwise.
run-gemm: $(BUILD)/bench/gemm_bench
	OPENBLAS_THREAD_TIMEOUT=20 $(BUILD)/bench/gemm_bench

# The PyTorch peer is /usr/bin/python3 (Debian's python3-torch), not whatever
# python3 comes first on PATH; PYTHON=... overrides.  Each benchmark runs
# both sides alternately, prints medians and ratios, and prints MicroML's
# figures alone when torch cannot be imported.
PYTHON ?= /usr/bin/python3

# 3 epochs per run, 1 and 2 threads, 3 rounds: 1.5 minutes on a quiet machine,
# up to ~4 when another process competes for the cores.
run-train: $(BUILD)/microml
	PYTHON=$(PYTHON) $(BUILD)/microml bench/train_bench.lua --epochs 3 --rounds 3 --threads 1,2

run-overhead: $(BUILD)/microml
	PYTHON=$(PYTHON) $(BUILD)/microml bench/overhead.lua --rounds 3

run-startup: $(BUILD)/microml
	PYTHON=$(PYTHON) sh bench/startup.sh $(BUILD) 11

# Resident memory of 50,000 MLP training steps on synthetic data (owner Rel):
# prints the RSS growth from step 2,000 to the end (target < 5%) and the peak.
.PHONY: run-soak
run-soak:
	$(BUILD)/microml bench/soak.lua 50000

# Resident memory of 20,000 steps of tensors of random sizes from 1 B to
# 64 MiB (the bounded size-class cache): prints the RSS growth from step
# 2,000 to the end (target < 10%).
.PHONY: run-soak-mixed
run-soak-mixed:
	$(BUILD)/microml bench/soak_mixed.lua 20000
