"""bench/overhead_torch.py — PyTorch's side of the per-op overhead benchmark.

Owns the PyTorch timings that bench/overhead.lua prints beside MicroML's:
microseconds per operation, on one thread, for
  add      a + b on one-element float32 tensors
  mm8      8x8 @ 8x8 matmul with requires_grad, .sum(), backward
  linear1  Linear(64 -> 32) + ReLU forward and backward at batch 1
Each case runs `reps` rounds of `iters` operations after a warm-up; the line
printed per case holds every round's us/op so the driver takes the median.

    /usr/bin/python3 bench/overhead_torch.py [--iters N] [--reps R]

prints lines  RESULT case=NAME us=r1,r2,...  and finally
              RESULT case=vmhwm kib=K"""
import argparse
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--iters", type=int, default=20000)
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--case", default="all")
args = ap.parse_args()

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"
import torch  # noqa: E402  (after the thread variables on purpose)

torch.set_num_threads(1)
torch.manual_seed(1)


def case_add(n):
    a, b = torch.rand(1), torch.rand(1)
    for _ in range(n):
        a + b


def case_mm8(n):
    a = torch.rand(8, 8, requires_grad=True)
    b = torch.rand(8, 8, requires_grad=True)
    for _ in range(n):
        a.grad = None
        b.grad = None
        (a @ b).sum().backward()


lin = torch.nn.Linear(64, 32)
x1 = torch.rand(1, 64)


def case_linear1(n):
    for _ in range(n):
        lin.weight.grad = None
        lin.bias.grad = None
        torch.relu(lin(x1)).sum().backward()


CASES = [("add", case_add, 1), ("mm8", case_mm8, 10), ("linear1", case_linear1, 10)]
for name, fn, div in CASES:
    if args.case not in ("all", name):
        continue
    iters = max(1, args.iters // div)
    fn(iters // 10 + 1)   # warm-up: allocator caches, dispatch tables
    rounds = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        fn(iters)
        rounds.append((time.perf_counter() - t0) / iters * 1e6)
    print("RESULT case=%s us=%s" % (name, ",".join("%.4f" % r for r in rounds)), flush=True)

with open("/proc/self/status") as f:
    kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
print("RESULT case=vmhwm kib=%d" % kib)
