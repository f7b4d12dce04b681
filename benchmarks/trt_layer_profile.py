"""Where a TensorRT engine spends its time, layer by layer (TensorRT's `IProfiler`), grouped by kind.

Runs the engine through lseg-trt's own runner (torch buffers, `execute_async_v3`), without CUDA graphs:
the profiler is called per layer after each synchronous execution, so the per-layer sum is a little above
the graph-replayed latency that `lseg-trt bench` reports. Writes `<out>/<name>.json` and `.md`.

    python benchmarks/trt_layer_profile.py --engine models/engines/X.engine --shape 1x3x480x480 --out results/
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import torch

from lseg_trt import hwinfo
from lseg_trt.artifacts import open_model
from lseg_trt.backends import backend_for, make_runner
from lseg_trt.reports import write_result
from lseg_trt.tensorrt.compat import load
from lseg_trt.tensorrt.options import parse_shape

# first match wins; TensorRT names fused layers after their parts ("Conv_12 + Relu_13"), Myelin regions
# "{ForeignNode[...]}" and its own copies "Reformatting CopyNode"
KINDS = (
    ("reformat (layout/precision copies)", r"reformat|copynode"),
    ("myelin region (fused transformer ops)", r"foreignnode|myelin"),
    ("convolution", r"conv"),
    ("matrix multiply", r"matmul|gemm|fc_|fully"),
    ("attention softmax", r"softmax"),
    ("normalisation", r"norm|reducemean|pow|sqrt"),
    ("resize", r"resize|upsample"),
    ("element-wise / other", r""),
)


def kind_of(layer: str) -> str:
    name = layer.lower()
    return next(kind for kind, pattern in KINDS if re.search(pattern, name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--shape", default="1x3x480x480")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--out", required=True)
    ns = p.parse_args()

    source = open_model(engine=ns.engine)
    trt = load(source.record.flavour)
    times: dict[str, float] = defaultdict(float)

    class LayerTimes(trt.module.IProfiler):
        def __init__(self) -> None:
            trt.module.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            times[layer_name] += ms

    shape = parse_shape(ns.shape)
    with make_runner(backend_for(source), source, "cuda") as runner:
        x = torch.randn(shape, device="cuda")
        for _ in range(3):
            runner.infer(x)
        torch.cuda.synchronize()
        runner.context.profiler = LayerTimes()
        for _ in range(ns.iterations):
            runner.infer(x)
            torch.cuda.synchronize()
    per_call = {layer: ms / ns.iterations for layer, ms in times.items()}
    total = sum(per_call.values())
    by_kind: dict[str, float] = defaultdict(float)
    for layer, ms in per_call.items():
        by_kind[kind_of(layer)] += ms
    top = sorted(per_call.items(), key=lambda kv: -kv[1])[:25]
    result = {
        "machine": hwinfo.collect(),
        "engine": Path(ns.engine).name,
        "tensorrt": trt.describe(),
        "shape": list(shape),
        "iterations": ns.iterations,
        "layers": len(per_call),
        "total_ms": total,
        "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top_layers_ms": dict(top),
    }
    lines = [
        f"# Per-layer profile: {result['engine']} at {ns.shape} ({result['tensorrt']})",
        "",
        f"{len(per_call)} layers, {total:.3f} ms per inference summed over layers (IProfiler, synchronous "
        f"execution, mean of {ns.iterations}).",
        "",
        "| kind | ms | share |",
        "|---|---|---|",
        *(f"| {k} | {v:.3f} | {100 * v / total:.1f} % |" for k, v in result["by_kind_ms"].items()),
        "",
        "| top layers | ms | share |",
        "|---|---|---|",
        *(f"| `{name[:110]}` | {ms:.3f} | {100 * ms / total:.1f} % |" for name, ms in top),
    ]
    markdown = "\n".join(lines) + "\n"
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    write_result(Path(ns.out), f"layers_{Path(ns.engine).stem[:60]}_{ns.shape}", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
