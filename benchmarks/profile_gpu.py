"""Where the time goes: CUDA kernel time of the fp16 encoder by kernel class (GPU only).

Usage: python benchmarks/profile_gpu.py VARIANT SIZE [SIZE ...] [--backend NAME] > profile.md
Runs the backend (default torch-fp16 eager; no `+graph`, so the host gap shows) under torch.profiler for
10 iterations per size and prints, per size, the wall
time per forward, the summed kernel time per forward (their gap is host overhead that CUDA graphs
remove), and kernel time per class (GEMM, attention, convolution, normalisation/elementwise, copies).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.models import load_lseg

CLASSES = (
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("gemm", ("gemm", "cutlass", "nvjet", "sm90_xmma", "matmul")),
    ("convolution", ("conv", "implicit", "fprop", "dgrad", "winograd", "cudnn")),
    ("resize / interpolation", ("upsample", "interp", "bilinear")),
    ("copy / cast / layout", ("copy", "cast", "transpose", "nchw", "nhwc", "permute", "cat")),
    (
        "norm / elementwise / reduce",
        ("norm", "elementwise", "reduce", "gelu", "relu", "add", "mul", "triton", "vectorized"),
    ),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((label for label, keys in CLASSES if any(k in low for k in keys)), "other")


def main(variant: str, sizes: list[int], backend: str) -> None:
    lseg = load_lseg("random", variant=variant)
    cache = tempfile.mkdtemp(prefix="lseg-profile-")  # ONNX/engine caches of backends that need them
    runner = make_runner(parse_backend(backend), lseg, "cuda", cache).activate()
    torch.backends.cudnn.benchmark = True
    print(f"# {variant} {backend}: CUDA kernel time per forward ({torch.cuda.get_device_name()})\n")
    for size in sizes:
        x = torch.randn(1, 3, size, size, device="cuda")
        for _ in range(5):
            runner.infer(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters = 10
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start.record()
            for _ in range(iters):
                runner.infer(x)
            end.record()
            torch.cuda.synchronize()
        wall = start.elapsed_time(end) / iters
        per_class: dict[str, float] = defaultdict(float)
        per_kernel: dict[str, float] = defaultdict(float)
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                ms = event.device_time / 1000 / iters
                per_class[kernel_class(event.name)] += ms
                per_kernel[event.name[:90]] += ms
        busy = sum(per_class.values())
        print(f"## {size}x{size}: {wall:.2f} ms per forward, kernels busy {busy:.2f} ms ({100 * busy / wall:.0f} %)\n")
        print("| kernel class | ms per forward | share of kernel time |\n|---|---|---|")
        for label, ms in sorted(per_class.items(), key=lambda kv: -kv[1]):
            print(f"| {label} | {ms:.3f} | {100 * ms / busy:.1f} % |")
        print("\n| top kernels | ms per forward |\n|---|---|")
        for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]:
            print(f"| `{name}` | {ms:.3f} |")
        print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--backend", default="torch-fp16")
    args = parser.parse_args()
    main(args.variant, args.sizes, args.backend)
