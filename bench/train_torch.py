"""bench/train_torch.py — the PyTorch side of the training benchmark.

Owns one PyTorch training run of exactly the recipe bench/train_bench.lua
runs in MicroML (and examples/train.lua by default): Fashion-MNIST pixels
scaled to [0, 1] then standardised with the training set's mean and
(unbiased) std, an MLP 784-256-128-10 with ReLU, AdamW (lr 1e-3, betas
0.9/0.999, eps 1e-8, weight decay 1e-2), batches of 128 drawn through a
permutation per epoch (the last, short batch kept), mean cross-entropy, and
the lr following a per-step cosine from 1e-3 to 0 over all the run's steps.
Test accuracy is computed in batches of 1000 under no_grad after the last
epoch.

    /usr/bin/python3 bench/train_torch.py --threads N --epochs E [--seed S] [--init DIR]

With --init DIR (what the driver passes) the run starts from MicroML's
initial weights and walks MicroML's batch order, so its accuracy can be
compared with the MicroML run of the same round pair by pair instead of
through two unrelated seeds' noise.  DIR holds, written by the driver:
    param_K.npy  the K-th parameter in model.parameters() order (Linear
                 weight [out, in] then bias [out], layer by layer; MicroML's
                 nn.MLP lists its parameters in the same order and layout);
    perm_E.npy   epoch E's order of the training rows, int64, 0-based.
Without --init it uses torch's default Linear init under torch.manual_seed(S)
and a torch.randperm per epoch, as a stand-alone PyTorch run would.

prints one machine-readable line that the driver parses:

    RESULT side=torch threads=N epoch_times=t1,t2,... test_acc=A vmhwm_kib=K

The thread count is fixed in the environment BEFORE torch is imported
(OpenMP and any BLAS read it once at load), and again with
torch.set_num_threads, or the process oversubscribes the cores."""
import argparse
import gzip
import math
import os
import struct
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--batch-size", type=int, default=128)
ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
ap.add_argument("--init", metavar="DIR", help="initial weights and batch orders (see above)")
args = ap.parse_args()

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402  (after the thread variables on purpose)
import torch  # noqa: E402

torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)


def read_idx(path):
    """An IDX file (optionally gzipped) as a numpy array of its stored dtype."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code != 0x08:
        sys.exit(f"train_torch.py: {path}: expected an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(base):
    for name in (base + ".gz", base):
        p = os.path.join(args.data, name)
        if os.path.exists(p):
            return p
    sys.exit(f"train_torch.py: cannot find {base}[.gz] in {args.data}")


def images(base):
    x = torch.from_numpy(read_idx(find(base)).copy()).to(torch.float32)
    return x.reshape(x.shape[0], -1).div_(255)


def labels(base):
    return torch.from_numpy(read_idx(find(base)).astype(np.int64))


train_x, train_y = images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")
test_x, test_y = images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte")
mean, std = train_x.mean().item(), train_x.std().item()
# In place, as the MicroML side does: one copy of the pixels, not three.
train_x.sub_(mean).div_(std)
test_x.sub_(mean).div_(std)

torch.manual_seed(args.seed)
model = torch.nn.Sequential(
    torch.nn.Linear(784, 256), torch.nn.ReLU(),
    torch.nn.Linear(256, 128), torch.nn.ReLU(),
    torch.nn.Linear(128, 10))
n, bs = train_x.shape[0], args.batch_size


def load_params(d):
    """Copies DIR's weights into the model."""
    with torch.no_grad():
        for k, p in enumerate(model.parameters(), 1):
            src = np.load(os.path.join(d, "param_%d.npy" % k))
            if tuple(src.shape) != tuple(p.shape):
                sys.exit("train_torch.py: param_%d.npy holds %s, parameter %d is %s"
                         % (k, src.shape, k, tuple(p.shape)))
            p.copy_(torch.from_numpy(src))


def load_perm(d, e):
    """DIR's order for epoch e (0-based row numbers)."""
    perm = np.load(os.path.join(d, "perm_%d.npy" % e))
    if perm.dtype != np.int64 or perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        sys.exit("train_torch.py: perm_%d.npy is not an int64 permutation of 0..%d" % (e, n - 1))
    return torch.from_numpy(perm)


def own_perm(e):
    g = torch.Generator().manual_seed(args.seed * 100003 + e)
    return torch.randperm(n, generator=g)


if args.init:
    load_params(args.init)
base_lr = 1e-3
opt = torch.optim.AdamW(model.parameters(), lr=base_lr, betas=(0.9, 0.999), eps=1e-8,
                        weight_decay=1e-2)
steps_per_epoch = (n + bs - 1) // bs
total_steps = args.epochs * steps_per_epoch
step = 0
loss_fn = torch.nn.functional.cross_entropy

epoch_times = []
for epoch in range(1, args.epochs + 1):
    # Read or drawn before the clock starts, as on the MicroML side.
    perm = load_perm(args.init, epoch) if args.init else own_perm(epoch)
    model.train()
    t0 = time.perf_counter()
    for start in range(0, n, bs):
        idx = perm[start:start + bs]
        xb, yb = train_x.index_select(0, idx), train_y.index_select(0, idx)
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # The same per-step cosine as optim.CosineAnnealingLR(T_max = all steps).
        step += 1
        lr = 0.5 * base_lr * (1 + math.cos(math.pi * step / total_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss.item()   # MicroML's loop reads every loss too
    epoch_times.append(time.perf_counter() - t0)

model.eval()
correct = 0
with torch.no_grad():
    for start in range(0, test_x.shape[0], 1000):
        pred = model(test_x[start:start + 1000]).argmax(1)
        correct += (pred == test_y[start:start + 1000]).sum().item()
acc = correct / test_x.shape[0]


def vmhwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


print("RESULT side=torch threads=%d epoch_times=%s test_acc=%.4f vmhwm_kib=%d" % (
    args.threads, ",".join("%.4f" % t for t in epoch_times), acc, vmhwm_kib()))
