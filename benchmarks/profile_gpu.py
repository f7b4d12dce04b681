"""Where the time goes: CUDA kernel time of the encoder by kernel class, and how fast its matrix work runs.

Usage: python benchmarks/profile_gpu.py VARIANT SIZE [SIZE ...] [--backend NAME] > profile.md
SIZE is `480` (batch 1, 480x480), `480x640` (batch 1) or `8x480x640` (batch x height x width).
Runs the backend (default torch-fp16 eager; no `+graph`, so the host gap shows and every kernel is traced)
under torch.profiler for 10 iterations per size and prints, per size, the wall time per forward, the summed
kernel time per forward (their gap is host overhead that CUDA graphs remove), and kernel time per class
(GEMM, convolution, attention, normalisation/elementwise, copies). For the matrix work it adds the FLOPs
lang-seg's network does (`torch.utils.flop_counter`, counted on the meta device) and the rate and share of
the same run's bf16 GEMM ceiling that the kernel time gives: the question is whether the gap to the ceiling
is in the matrix kernels themselves or around them. GEMMs and convolutions are rated together: Inductor
runs some convolutions (1x1 ones) as GEMM kernels, so the kernels' split is not the operators'. A rewrite
that does less work (the fused backends) shows an effective rate.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.bench import matmul_ceiling
from lseg_trt.models import VARIANTS, LSegImageEncoder, load_lseg

# Inductor's generated kernels (pointwise, persistent and looped reductions) are named after the operators
# they fused, `triton_per_fused_..._convolution_div_...` among them: element-wise work whatever the name.
INDUCTOR_ELEMENTWISE = ("triton_poi_", "triton_per_", "triton_red_")
# Otherwise the first class whose keys a kernel's name holds; convolutions before GEMMs, since cuDNN names
# its convolution kernels `..._fprop_implicit_gemm_...`.
CLASSES = (
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa")),
    ("convolution", ("fprop", "implicit", "conv", "winograd", "dgrad")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "matmul")),
    ("resize / interpolation", ("upsample", "interp", "bilinear")),
    ("copy / cast / layout", ("copy", "cast", "transpose", "nchw", "nhwc", "permute", "cat")),
    (
        "norm / elementwise / reduce",
        ("norm", "elementwise", "reduce", "gelu", "relu", "add", "mul", "triton", "vectorized"),
    ),
)
# aten operator -> the matrix work it is rated as. On the meta device SDPA takes its math path, two batched
# matmuls: the network's only `bmm`s, which the GPU runs as one attention kernel.
MATRIX = "GEMM + convolution"
FLOP_CLASSES = {"mm": MATRIX, "addmm": MATRIX, "convolution": MATRIX, "bmm": "attention"}
KERNEL_CLASSES = {MATRIX: ("gemm", "convolution"), "attention": ("attention",)}  # the kernels doing it


def kernel_class(name: str) -> str:
    if name.startswith(INDUCTOR_ELEMENTWISE):
        return "norm / elementwise / reduce"
    low = name.lower()
    return next((label for label, keys in CLASSES if any(k in low for k in keys)), "other")


def parse_size(text: str) -> tuple[int, int, int]:
    """`480` -> (1, 480, 480); `480x640` -> (1, 480, 640); `8x480x640` -> (8, 480, 640)."""
    parts = [int(p) for p in text.split("x")]
    if len(parts) == 1:
        return 1, parts[0], parts[0]
    if len(parts) == 2:
        return 1, parts[0], parts[1]
    return parts[0], parts[1], parts[2]


def flops_by_class(variant: str, batch: int, height: int, width: int) -> dict[str, int]:
    """FLOPs of one forward per kind of matrix work (`FLOP_CLASSES`), counted on the meta device."""
    with torch.device("meta"):
        encoder = LSegImageEncoder(VARIANTS[variant]).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            encoder(torch.empty(batch, 3, height, width))
    totals: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[1] if "." in str(op) else str(op)
        totals[FLOP_CLASSES.get(name, "other")] += flops
    return totals


def main(variant: str, sizes: list[str], backend: str) -> None:
    lseg = load_lseg("random", variant=variant)
    cache = tempfile.mkdtemp(prefix="lseg-profile-")  # ONNX/engine caches of backends that need them
    runner = make_runner(parse_backend(backend), lseg, "cuda", cache).activate()
    torch.backends.cudnn.benchmark = True
    ceiling = matmul_ceiling("cuda")["tflops"]
    print(f"# {variant} {backend}: CUDA kernel time per forward ({torch.cuda.get_device_name()})\n")
    print(f"Same run's bf16 GEMM ceiling: {ceiling:.1f} TFLOP/s.\n")
    for size in sizes:
        batch, height, width = parse_size(size)
        x = torch.randn(batch, 3, height, width, device="cuda")
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
        flops = flops_by_class(variant, batch, height, width)
        busy = sum(per_class.values())
        print(
            f"## batch {batch}, {height}x{width}: {wall:.2f} ms per forward, kernels busy {busy:.2f} ms "
            f"({100 * busy / wall:.0f} %), {sum(flops.values()) / 1e12:.3f} TFLOP\n"
        )
        print("| kernel class | ms per forward | share of kernel time |\n|---|---|---|")
        for label, ms in sorted(per_class.items(), key=lambda kv: -kv[1]):
            print(f"| {label} | {ms:.3f} | {100 * ms / busy:.1f} % |")
        print("\n| matrix work | TFLOP | kernel ms | TFLOP/s | share of ceiling |\n|---|---|---|---|---|")
        for work, classes in KERNEL_CLASSES.items():
            ms = sum(per_class.get(c, 0.0) for c in classes)
            if flops.get(work) and ms:
                rate = flops[work] / ms / 1e9
                print(f"| {work} | {flops[work] / 1e12:.3f} | {ms:.3f} | {rate:.1f} | {100 * rate / ceiling:.1f} % |")
        print("\n| top kernels | ms per forward |\n|---|---|")
        for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:15]:
            print(f"| `{name}` | {ms:.3f} |")
        print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("sizes", nargs="+", help="480, 480x640 (batch 1) or 8x480x640")
    parser.add_argument("--backend", default="torch-fp16")
    args = parser.parse_args()
    main(args.variant, args.sizes, args.backend)
