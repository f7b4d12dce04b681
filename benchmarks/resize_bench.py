"""Antialiased resize of the device pre-processing: torch's `F.interpolate(antialias=True)` vs two GEMMs.

A batch of 8 1280x720 uint8 frames -> 480x640 float32, the camera case of issue 11. Prints and writes
(resize_bench.json / .md in OUT_DIR) the median time per frame of each and their max abs difference on the
0..255 scale, with the machine. On CUDA it also reports the difference with TF32 matmuls switched on.

    python benchmarks/resize_bench.py benchmarks/results/cpu-2026-11-25
    python benchmarks/resize_bench.py benchmarks/results/h100-2026-11-25 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lseg_trt import hwinfo
from lseg_trt.extraction.preprocess import gemm_resized
from lseg_trt.reports import write_result

BATCH, SOURCE, SIZE = 8, (720, 1280), (480, 640)


def interpolate(pixels: torch.Tensor) -> torch.Tensor:
    return F.interpolate(pixels.float(), size=SIZE, mode="bilinear", antialias=True, align_corners=False)


def gemm(pixels: torch.Tensor) -> torch.Tensor:
    return gemm_resized(pixels, SIZE)


def median_ms(fn: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, runs: int) -> float:
    """Median wall time of one call, after a warm-up call (weights built, kernels chosen)."""
    times = []
    for _ in range(runs + 1):
        synchronize(pixels.device)
        start = time.perf_counter()
        fn(pixels)
        synchronize(pixels.device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tf32_difference(pixels: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference when a user has switched TF32 on globally (the resize does not override it)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return (gemm(pixels) - expected).abs().max().item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (BATCH, *SOURCE, 3), dtype=torch.uint8, generator=generator)
    pixels = frames.to(device).permute(0, 3, 1, 2)  # channels last in memory, as decoded frames arrive
    expected = interpolate(pixels)
    record = {
        "device": str(device),
        "batch": BATCH,
        "source": list(SOURCE),
        "size": list(SIZE),
        "runs": args.runs,
        "torch_threads": torch.get_num_threads(),
        "interpolate_ms_per_frame": median_ms(interpolate, pixels, args.runs) / BATCH,
        "gemm_ms_per_frame": median_ms(gemm, pixels, args.runs) / BATCH,
        "max_abs_diff": (gemm(pixels) - expected).abs().max().item(),
        "max_abs_diff_tf32": tf32_difference(pixels, expected) if device.type == "cuda" else None,
        "machine": hwinfo.collect(),
    }
    tf32 = record["max_abs_diff_tf32"]
    markdown = "\n".join([
        f"# Antialiased resize, {BATCH} x {SOURCE[1]}x{SOURCE[0]} uint8 -> {SIZE[1]}x{SIZE[0]} float32 on {device}",
        "",
        f"| resize | ms per frame (median of {args.runs}) |",
        "|---|---|",
        f"| F.interpolate(antialias=True) | {record['interpolate_ms_per_frame']:.3f} |",
        f"| two float32 GEMMs | {record['gemm_ms_per_frame']:.3f} |",
        "",
        f"Max abs difference on the 0..255 scale: {record['max_abs_diff']:.2e}"
        + (f" ({tf32:.2e} with TF32 matmuls on)." if tf32 is not None else "."),
        f"torch threads: {record['torch_threads']}.",
        "",
        hwinfo.to_markdown(record["machine"]),
        "",
    ])  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(markdown)
    print(*write_result(args.out_dir, "resize_bench", record, markdown), sep="\n")


if __name__ == "__main__":
    main()
