"""bench/torch_interop.py — MicroML <-> PyTorch through safetensors files.

For an MLP and a small CNN: PyTorch's weights are saved as safetensors,
MicroML (bench/torch_interop.lua) loads them into the same architecture by
torch's names and must give the same outputs on the same input; MicroML's
own weights, saved with state_dict{torch_names = true}, must load into
PyTorch with load_state_dict(strict=True) and give MicroML's outputs.
Tolerance 1e-6 (absolute, float32).

    /usr/bin/python3 bench/torch_interop.py [path/to/microml]

The Python safetensors package is not in Debian, so the format is read and
written here: 8 bytes of little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}}, then the raw little-endian data.
Prints "torch_interop: N passed, N failed"; exit status 1 on a failure.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from torch import nn

TOL = 1e-6
DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8")}
NAMES = {v: k for k, v in DTYPES.items()}


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name].detach().contiguous().numpy()
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        data = a.tobytes()
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(chunks))


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        a = np.frombuffer(body[lo:hi], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(a.copy())
    return out


class MLP(nn.Module):
    """MicroML's nn.MLP{sizes = {8, 16, 16, 4}}: the stack is `layers`."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                                    nn.Linear(16, 4))

    def forward(self, x):
        return self.layers(x)


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))


ARCHS = {"mlp": (MLP, (5, 8)), "cnn": (cnn, (3, 1, 8, 8))}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    microml = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "build", "microml")
    torch.manual_seed(0)
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok   " if ok else "FAIL ") + what)
        passed, failed = passed + ok, failed + (not ok)

    with tempfile.TemporaryDirectory() as d:
        expected = {}
        for name, (make, shape) in ARCHS.items():
            model = make().eval()
            x = torch.randn(*shape)
            with torch.no_grad():
                expected[name] = (x, model(x))
            tensors = dict(model.state_dict())
            tensors["input"] = x
            write_safetensors(os.path.join(d, name + "_torch.safetensors"), tensors)
        run = subprocess.run([microml, os.path.join(here, "torch_interop.lua"), d],
                             capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        check(run.returncode == 0, "microml bench/torch_interop.lua ran" +
              ("" if run.returncode == 0 else ": " + run.stderr.strip()))
        if run.returncode == 0:
            for name, (make, _) in ARCHS.items():
                x, y = expected[name]
                outs = read_safetensors(os.path.join(d, name + "_mm_out.safetensors"))
                diff = (outs["from_torch"] - y).abs().max().item()
                check(diff <= TOL, f"{name}: PyTorch weights in MicroML, max |diff| {diff:.2e} <= {TOL:g}")
                back = make().eval()
                try:
                    back.load_state_dict(read_safetensors(os.path.join(d, name + "_mm.safetensors")),
                                         strict=True)
                    loaded = True
                except RuntimeError as e:
                    print(e)
                    loaded = False
                check(loaded, f"{name}: MicroML's file loads with torch load_state_dict(strict=True)")
                if loaded:
                    with torch.no_grad():
                        diff = (back(x) - outs["own"]).abs().max().item()
                    check(diff <= TOL, f"{name}: MicroML weights in PyTorch, max |diff| {diff:.2e} <= {TOL:g}")
    print(f"torch_interop: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
