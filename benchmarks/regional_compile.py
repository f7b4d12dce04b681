"""torch.compile of the whole encoder against each ViT block and the decoder compiled on their own.

Every `--devices` worker and every new process pays a warm-up (6-8 s on the H200 hosts with the compile
caches warm, most of issue 12's fixed cost) and a cold compile of about a minute (issue 13). Dynamo traces
all 24 blocks of ViT-L/16 and Inductor compiles the whole graph; compiled region by region (PyTorch's
"regional compilation" recipe), the 24 blocks share one code object and one compiled graph, so one
block is traced and compiled. What that costs in steady-state latency (no fusion across a block's
edges, the glue between regions left eager) is the other half of the question.

Each (mode, cache) pair runs in a fresh process with its own Inductor cache: `cold` on an empty one,
`warm` on the one `cold` filled, `warm, no pool` on it again with TORCH_WARM_POOL=0: Inductor then starts
no process pool for Triton compiles, which it otherwise spawns (`compile_threads` processes, each
importing torch) at the first compile even when every kernel comes from the cache. Reported: imports +
model, first call (trace, compile or cache load; on a GPU also the CUDA graph capture), and the
steady-state median over `--iterations` calls (CUDA graphs on a GPU, as `torch-compile-fp16+graph` runs).
Writes regional_compile.{json,md}.

    python benchmarks/regional_compile.py OUT [--device cuda] [--size 480x640] [--batch 8] [--precision fp16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

MARK = "REGIONAL "
MODES = ("whole", "regional")
CACHES = (("cold", {}), ("warm", {}), ("warm, no pool", {"TORCH_WARM_POOL": "0"}))


def child(mode: str, variant: str, device_name: str, shape: tuple[int, ...], precision: str, iterations: int) -> None:
    started = time.perf_counter()
    import torch

    from lseg_trt.backends.base import GraphCache, placed_encoder
    from lseg_trt.bench import time_ms
    from lseg_trt.models import load_lseg

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = placed_encoder(load_lseg("random", variant=variant).image_encoder, device, precision)
    if mode == "whole":
        fn = torch.compile(model, dynamic=False)
    else:
        for block in model.pretrained.model.blocks:
            block.compile(dynamic=False)
        model.scratch.compile(dynamic=False)
        fn = model
    if device.type == "cuda":
        fn = GraphCache(fn, device, Counter())
    x = torch.randn(shape, device=device)
    loaded = time.perf_counter()
    with torch.inference_mode():
        fn(x).float().sum().item()  # the sync: compiled, captured and run once
        first = time.perf_counter()
        steady = time_ms(lambda _: fn(x), device, iterations, warmup=2)
    report = {
        "imports_model_s": loaded - started,
        "first_call_s": first - loaded,
        "median_ms": statistics.median(steady),
    }
    print(MARK + json.dumps(report), flush=True)


def run_child(mode: str, cache: Path, ns: argparse.Namespace, env: dict[str, str]) -> dict:
    env = dict(
        os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"), **env
    )
    command = [sys.executable, __file__, "--child", mode, "--variant", ns.variant, "--device", ns.device]
    command += ["--size", ns.size, "--batch", str(ns.batch)]
    command += ["--precision", ns.precision, "--iterations", str(ns.iterations)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, check=False)
    reports = [json.loads(line[len(MARK) :]) for line in done.stdout.splitlines() if line.startswith(MARK)]
    if not reports:
        tail = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        print(f"regional_compile.py: the {mode} process failed: {tail[-1]}", file=sys.stderr)
        raise SystemExit(2)
    return {"process_s": time.perf_counter() - started, **reports[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--variant", default="vit_l16", help="a ViT variant (tiny_vit: the CPU smoke test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="224x224", help="HxW")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", default=None, help="fp32 | fp16 | bf16 [fp16 on a GPU, fp32 on a CPU]")
    p.add_argument("--iterations", type=int, default=None, help="steady-state calls [30 on a GPU, 5 on a CPU]")
    p.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    ns = p.parse_args()
    from lseg_trt.errors import LsegTrtError
    from lseg_trt.sizes import parse_size

    try:
        size = parse_size(ns.size)
    except LsegTrtError as e:
        p.error(str(e))
    if ns.batch < 1:
        p.error("--batch must be positive")
    shape = (ns.batch, 3, *size)
    cuda = ns.device.startswith("cuda")
    ns.precision = ns.precision or ("fp16" if cuda else "fp32")
    ns.iterations = ns.iterations or (30 if cuda else 5)
    if ns.child is not None:
        child(ns.child, ns.variant, ns.device, shape, ns.precision, ns.iterations)
        return
    if ns.out is None:
        p.error("OUT is required")
    from lseg_trt import hwinfo
    from lseg_trt.reports import write_result

    rows = []
    with tempfile.TemporaryDirectory(prefix="lseg-regional-") as scratch:
        for mode in MODES:
            for cache, env in CACHES:  # warm: the cache the cold process just filled
                row = {"mode": mode, "cache": cache, **run_child(mode, Path(scratch) / mode, ns, env)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    lines = [
        f"# {ns.variant} compiled whole vs region by region ({ns.device}, {ns.precision}, "
        f"{ns.batch}x{size[0]}x{size[1]})",
        "",
        "Fresh process each; cold: empty Inductor cache, warm: the cache the cold process filled (no pool: "
        "TORCH_WARM_POOL=0). "
        f"Steady state: median of {ns.iterations} calls{' (CUDA graph replays)' if cuda else ''}.",
        "",
        "| mode | cache | process s | imports + model s | first call s | steady-state ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['mode']} | {r['cache']} | {r['process_s']:.1f} | {r['imports_model_s']:.1f} | "
            f"{r['first_call_s']:.2f} | {r['median_ms']:.2f} |"
            for r in rows
        ),
    ]
    markdown = "\n".join(lines) + "\n"
    settings = {"variant": ns.variant, "device": ns.device, "shape": list(shape), "precision": ns.precision}
    settings["iterations"] = ns.iterations
    write_result(ns.out, "regional_compile", {"machine": hwinfo.collect(), **settings, "rows": rows}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
