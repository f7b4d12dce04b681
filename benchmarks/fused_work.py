"""How much work the inference rewrite (`lseg_trt.models.fused`) removes, measured where no GPU is needed.

Usage: python benchmarks/fused_work.py OUT_DIR [--latency-iterations 7] [--no-latency]

For each GPU benchmark case of issue 13 it counts, on the meta device (no memory, no compute):
- FLOPs of one forward (torch's FlopCounterMode: matmuls, convolutions, attention), lang-seg's encoder
  against the rewrite;
- bytes written by every non-view ATen op of an fp16 channels-last forward, attention as one fused
  kernel: what an eager forward writes to memory, a proxy for its memory-bound share (Inductor fuses
  some of it away in both networks).
It then times fp32 forwards of both on this machine's CPU at 480x480 (batch 1), in PyTorch eager and in
ONNX Runtime (each network exported as `lseg_trt.export` exports: TorchScript exporter, opset 17), all
four taking turns in each round (median and min), and checks the rewrite's features against the
original's with the fp32 tolerance. GPU latencies come from gpu_speed.py;
this script says what the rewrite removes, not what an H100 gains from it. Writes OUT_DIR/fused_work.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from lseg_trt import hwinfo
from lseg_trt.models import LSegImageEncoder, random_lseg
from lseg_trt.models.config import VARIANTS
from lseg_trt.models.fused import fuse_for_inference
from lseg_trt.reports import write_result

CASES = (("vit_l16", 1, 480, 480), ("vit_l16", 1, 480, 640), ("vit_l16", 8, 480, 640), ("vit_l16", 1, 1024, 1024))
CASES += (("rn101_zs", 1, 480, 480),)


NOT_WRITES = ("aten::detach", "aten::lift_fresh", "aten::_unsafe_view")  # views in all but name


class BytesWritten(TorchDispatchMode):
    """Sums the bytes of every tensor an ATen op returns, views excepted. Attention counts its output
    only: on the meta device it decomposes into the math path (a tokens x tokens score matrix per head),
    which no GPU backend of ours runs (they run fused flash or cuDNN kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if not self.paused and not func.is_view and func._schema.name not in NOT_WRITES:
            self.bytes += _nbytes(out)
        return out


class FusedAttention(TorchFunctionMode):
    """Counts `scaled_dot_product_attention` as one kernel writing its output (see BytesWritten)."""

    def __init__(self, written: BytesWritten) -> None:
        super().__init__()
        self.written = written

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        self.written.paused = True
        try:
            out = func(*args, **(kwargs or {}))
        finally:
            self.written.paused = False
        self.written.bytes += _nbytes(out)
        return out


def _nbytes(out: object) -> int:
    tensors = out if isinstance(out, tuple | list) else (out,)
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def work(variant: str, batch: int, height: int, width: int) -> dict[str, Any]:
    with torch.device("meta"):
        original = LSegImageEncoder(VARIANTS[variant]).eval()
        networks = {"original": original, "fused": fuse_for_inference(original)}
        row: dict[str, Any] = {"case": f"{variant} b{batch} {height}x{width}"}
        for label, network in networks.items():
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                network(torch.empty(batch, 3, height, width))
            row[f"{label}_gflop"] = counter.get_total_flops() / 1e9
            half = network.half().to(memory_format=torch.channels_last)
            written = BytesWritten()
            with written, FusedAttention(written), torch.no_grad():
                half(torch.empty(batch, 3, height, width))
            row[f"{label}_fp16_written_mb"] = written.bytes / 1e6
    row["gflop_removed"] = 1 - row["fused_gflop"] / row["original_gflop"]
    row["written_removed"] = 1 - row["fused_fp16_written_mb"] / row["original_fp16_written_mb"]
    return row


def latency(variant: str, iterations: int) -> dict[str, Any]:
    from lseg_trt.metrics import compare_features
    from lseg_trt.tolerances import TOLERANCES

    original = random_lseg(variant).image_encoder.eval()
    fused = fuse_for_inference(original)
    x = torch.randn(1, 3, 480, 480, generator=torch.Generator().manual_seed(0))
    row: dict[str, Any] = {"case": f"{variant} b1 480x480", "threads": torch.get_num_threads()}
    with torch.inference_mode():
        outputs = {"original": original(x), "fused": fused(x)}  # also the warm-up
    calls = {}
    for label, network in (("original", original), ("fused", fused)):
        calls[f"{label}_torch"] = lambda n=network: _inference(n, x)
        calls[f"{label}_ort"] = _ort_session(network, x)
    row.update(_interleaved_ms(calls, iterations))
    metrics = compare_features(outputs["fused"], outputs["original"])
    row["pixel_cosine_min"] = metrics.pixel_cosine_min
    row["fp32_tolerance_passes"] = TOLERANCES["fp32"].passes(metrics)
    return row


def _inference(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return network(x)


def _interleaved_ms(calls: dict[str, Any], iterations: int) -> dict[str, float]:
    """Median and min ms of each call, the calls taking turns in every round, so that a shared machine's
    slow spells hit all of them alike instead of whichever ran then."""
    for call in calls.values():
        call()  # warm-up
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(iterations):
        for label, call in calls.items():
            started = time.perf_counter()
            call()
            times[label].append((time.perf_counter() - started) * 1000)
    return {
        f"{label}_{stat.__name__}_ms": stat(values)
        for label, values in times.items()
        for stat in (statistics.median, min)
    }


def _ort_session(network: torch.nn.Module, x: torch.Tensor) -> Any:
    """ONNX Runtime (CPU) on an export of `network` with dynamic batch and size; returns a call on `x`."""
    import tempfile
    import warnings

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        path = f"{tmp}/model.onnx"
        axes = {"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h2", 3: "w2"}}
        torch.onnx.export(
            network, (torch.zeros(1, 3, 64, 64),), path, input_names=["x"], output_names=["y"],
            opset_version=17, dynamo=False, dynamic_axes=axes,
        )  # fmt: skip
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def markdown(record: dict[str, Any]) -> str:
    lines = ["# Work the inference rewrite removes (lseg_trt.models.fused)", ""]
    lines += [f"- {k}: {v}" for k, v in record["machine"].items() if not isinstance(v, dict | list)]
    for section in ("work", "latency"):
        rows = record.get(section) or []
        if not rows:
            continue
        keys = list(rows[0])
        lines += ["", f"## {section}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in rows:
            cells = (f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values())
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--latency-iterations", type=int, default=7)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    record: dict[str, Any] = {"machine": hwinfo.collect(), "work": [], "latency": []}
    for case in CASES:
        record["work"].append(work(*case))
        print(record["work"][-1], flush=True)
    if not args.no_latency:
        for variant in ("vit_l16", "rn101_zs"):
            record["latency"].append(latency(variant, args.latency_iterations))
            print(record["latency"][-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_result(args.out, "fused_work", record, markdown(record))
    print(f"wrote {paths[1]}")


if __name__ == "__main__":
    main()
