"""End-to-end extraction throughput beside device-only throughput and the disk's write speed (issue 11).

Synthesises N 1280x720 JPEG frames, then measures, with one model, backend, size and batch:
- device only: `runner.infer` on a device batch (no decode, no copies), and batch-1 latency;
- streaming API into device memory (no sink);
- to disk in each format (npy, safetensors shards) with fp16 and a pooled grid;
- the disk's sequential write speed (write + fsync) and one 720p uint8 frame -> features latency;
- GPU vs PIL pre-processing agreement on the sample photos, and the fidelity cost of each reduction.
Writes pipeline.json and pipeline.md to --out and prints the Markdown.

    python benchmarks/pipeline_bench.py --device cuda --variant vit_l16 --backend torch-compile-fp16+graph \\
        --size 480x640 --batch 8 --frames 512 --out benchmarks/results/pipeline
    python benchmarks/pipeline_bench.py --device cpu --variant tiny_vit --frames 16 --size 64x96 --batch 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lseg_trt
from lseg_trt import hwinfo
from lseg_trt.extraction import FeatureExtractor, Reduction, extract, fit_pca, reduction_fidelity
from lseg_trt.extraction.preprocess import gpu_vs_pil
from lseg_trt.images import samples
from lseg_trt.reports import write_result
from lseg_trt.sizes import parse_size


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synth_frames(folder: Path, count: int, seed: int = 0) -> None:
    """1280x720 JPEGs with structure (gradients, blocks) plus noise, so they compress like photos."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:720, 0:1280]
    for i in range(count):
        base = (np.sin(x / rng.uniform(20, 200) + i) + np.cos(y / rng.uniform(20, 200))) * 60 + 128
        image = np.stack([base, np.roll(base, i * 7, axis=1), base[::-1]], axis=2)
        for _ in range(6):
            top, left = rng.integers(0, 620), rng.integers(0, 1180)
            image[top : top + 100, left : left + 100] = rng.integers(0, 255, 3)
        image += rng.normal(0, 8, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def make_frames(folder: Path, count: int, parts: int) -> None:
    """`count` frames in `parts` sub-folders, synthesised in parallel (one seed per part)."""
    if len(list(folder.rglob("*.jpg"))) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    sizes = [count // parts + (i < count % parts) for i in range(parts)]
    with ProcessPoolExecutor(parts) as pool:
        list(pool.map(synth_frames, [folder / f"part{i:02d}" for i in range(parts)], sizes, range(parts)))


def device_only(extractor: FeatureExtractor, seconds: float) -> tuple[float, float]:
    """(images/s at the batch size, median batch-1 latency in ms) of the runner alone."""
    runner, device = extractor.runner, extractor.device
    x = torch.randn((extractor.batch_size, 3, *extractor.size), device=device)
    runner.prepare(tuple(x.shape))
    for _ in range(3):
        runner.infer(x)
    synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.infer(x)
        count += 1
        if count % 8 == 0:
            synchronize(device)
    synchronize(device)
    throughput = count * extractor.batch_size / (time.perf_counter() - start)
    one = x[:1].contiguous()
    runner.prepare(tuple(one.shape))
    return throughput, latency(lambda: runner.infer(one), device)


def latency(fn, device: torch.device, repeats: int = 30) -> float:  # noqa: ANN001
    """Median ms of `fn` until its results are ready on the host clock: what a camera loop waits (device
    events, as in `lseg_trt.bench.time_ms`, would leave out the host's own work)."""
    for _ in range(3):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def disk_write_speed(folder: Path, total_bytes: int) -> float:
    """MB/s of a sequential write of `total_bytes` with fsync, like `dd conv=fsync`."""
    block = os.urandom(16 << 20)
    path = folder / "disk-speed.bin"
    start = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(max(1, total_bytes // len(block))):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return max(1, total_bytes // len(block)) * len(block) / seconds / 1e6


def stream_rate(extractor: FeatureExtractor, frames: Path) -> float:
    count, start = 0, time.perf_counter()
    for _, _features in extractor.stream(frames):
        count += 1
    synchronize(extractor.device)
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", default="vit_l16")
    p.add_argument("--weights", default="random")
    p.add_argument("--engine", default=None, help="a TensorRT engine (from `lseg-trt build`) instead of --weights")
    p.add_argument("--backend", default="torch")
    p.add_argument("--size", default="480x640")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--pool", type=int, default=4, help="pooling factor of the to-disk runs [%(default)s]")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    p.add_argument("--disk-bytes", type=float, default=1e9, help="bytes for the disk write test [%(default)s]")
    p.add_argument("--device-seconds", type=float, default=5.0)
    p.add_argument("--work", default=None, help="scratch folder for frames and outputs [a temporary folder]")
    p.add_argument("--cache", default="models")
    p.add_argument("--out", default="outputs/pipeline_bench")
    ns = p.parse_args()

    size = parse_size(ns.size)
    work = Path(ns.work or tempfile.mkdtemp(prefix="lseg-pipeline-"))
    frames = work / "frames"
    make_frames(frames, ns.frames, parts=max(1, min(16, os.cpu_count() or 1, ns.frames)))
    extractor = FeatureExtractor.open(
        weights=None if ns.engine else ns.weights, engine=ns.engine, variant=None if ns.engine else ns.variant,
        backend=ns.backend, size=size, batch_size=ns.batch, device=ns.device, cache_dir=ns.cache, workers=ns.workers,
    )  # fmt: skip
    result: dict = {
        "machine": hwinfo.collect(),
        "lseg_trt": lseg_trt.__version__,
        "settings": {"variant": extractor.metadata["variant"], "weights": extractor.metadata["weights"],
                     "engine": Path(ns.engine).name if ns.engine else None, "backend": ns.backend, "size": list(size),
                     "batch": ns.batch, "frames": ns.frames, "frame_size": [720, 1280], "workers": ns.workers,
                     "pool": ns.pool, "device": ns.device},
    }  # fmt: skip
    with extractor:
        device = extractor.device
        throughput, device_latency = device_only(extractor, ns.device_seconds)
        result["device_only_images_per_s"] = throughput
        result["device_latency_batch1_ms"] = device_latency
        frame = np.asarray(Image.open(next(frames.rglob("*.jpg"))).convert("RGB")).copy()
        result["frame_720p_latency_ms"] = latency(lambda: extractor.frame(frame), device)
        stream_rate(extractor, frames)  # warm-up: pinned-memory cache, allocator, page cache
        result["stream_to_device_images_per_s"] = stream_rate(extractor, frames)
        bytes_per_item = {}
        result["to_disk"] = {}
        for fmt in ("npy", "shards"):
            out = work / f"out-{fmt}"
            shutil.rmtree(out, ignore_errors=True)
            summary = extract(extractor, frames, out, format=fmt, pool=ns.pool, progress=False)
            item = np.prod(Reduction(pool=ns.pool).output_shape(extractor.feature_shape)) * 2
            bytes_per_item[fmt] = int(item)
            result["to_disk"][fmt] = {"images_per_s": summary.done / summary.seconds, "timings_s": summary.timings,
                                      "ok": summary.ok, "bytes_per_item": int(item)}  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
        result["disk_write_MB_per_s"] = disk_write_speed(work, int(ns.disk_bytes))
        disk_bound = result["disk_write_MB_per_s"] * 1e6 / bytes_per_item["shards"]
        result["to_disk_bound_images_per_s"] = min(throughput, disk_bound)
        result["gpu_vs_pil"] = gpu_vs_pil(extractor.runner, samples(), size, extractor.mean, extractor.std)
        sample = torch.stack([features for _, (_, features) in zip(range(8), extractor.stream(frames), strict=False)])
        text = torch.nn.functional.normalize(
            torch.randn(20, sample.shape[1], generator=torch.Generator().manual_seed(0)), dim=1
        )
        channels = sample.shape[1]
        options = {"fp32": Reduction("fp32"), "fp16": Reduction("fp16")}
        for pool in (2, 4):
            options[f"fp16 pool{pool}"] = Reduction(pool=pool)
        for k in sorted({min(channels, 64), min(channels, 16)}, reverse=True):
            options[f"fp16 pca{k}"] = Reduction(pca=fit_pca([sample], k))
        result["reduction_fidelity"] = reduction_fidelity(sample, options, text.to(sample.device))
    markdown = render(result)
    write_result(Path(ns.out), "pipeline", result, markdown)
    print(markdown)
    if not ns.work:
        shutil.rmtree(work, ignore_errors=True)


def render(r: dict) -> str:
    s = r["settings"]
    device = r["device_only_images_per_s"]
    lines = [
        f"# Extraction pipeline: {s['variant']} ({s['weights']}), {s['backend']}, {s['size'][0]}x{s['size'][1]}, "
        f"batch {s['batch']}, {s['frames']} 1280x720 JPEG frames, {s['workers']} decode workers",
        "",
        f"Machine: {', '.join(g['name'] for g in r['machine']['gpus']) or 'CPU'} on {r['machine']['host']} "
        f"({r['machine']['cpu_cores']} CPUs), torch {r['machine']['packages']['torch']}, lseg-trt {r['lseg_trt']}",
        "",
        "| path | images/s | share of device-only |",
        "|---|---|---|",
        f"| device only (runner.infer, same backend/batch/size) | {device:.1f} | 100 % |",
        f"| stream() into device memory, no sink | {r['stream_to_device_images_per_s']:.1f} | "
        f"{100 * r['stream_to_device_images_per_s'] / device:.0f} % |",
    ]
    for fmt, row in r["to_disk"].items():
        lines.append(f"| to disk, {fmt}, fp16, pool {s['pool']} ({row['bytes_per_item'] / 1e6:.2f} MB/item) | "
                     f"{row['images_per_s']:.1f} | {100 * row['images_per_s'] / device:.0f} % |")  # fmt: skip
    bound = r["to_disk_bound_images_per_s"]
    lines += [
        "",
        f"Disk sequential write (fsync): {r['disk_write_MB_per_s']:.0f} MB/s; to-disk bound "
        f"min(device, disk / bytes per item) = {bound:.1f} images/s.",
        f"Latency: one 720p uint8 frame -> features on the device {r['frame_720p_latency_ms']:.2f} ms; "
        f"device only at batch 1 {r['device_latency_batch1_ms']:.2f} ms.",
        "",
        "Time per stage of the to-disk runs (s; decode is summed over worker threads):",
        "",
        "| format | " + " | ".join(next(iter(r["to_disk"].values()))["timings_s"]) + " |",
        "|---|" + "---|" * len(next(iter(r["to_disk"].values()))["timings_s"]),
    ]
    for fmt, row in r["to_disk"].items():
        lines.append(f"| {fmt} | " + " | ".join(f"{v:.2f}" for v in row["timings_s"].values()) + " |")
    lines += [
        "",
        "GPU vs PIL pre-processing, features per-pixel cosine:",
        "",
        "| image | mean | min |",
        "|---|---|---|",
    ]
    for name, m in r["gpu_vs_pil"].items():
        lines.append(f"| {name} | {m['pixel_cosine_mean']:.6f} | {m['pixel_cosine_min']:.6f} |")
    lines += [
        "",
        "Reductions vs full features (restored to the full grid; segmentation: argmax over 20 random text vectors):",
        "",
        "| option | bytes/item | pixel cosine mean | p1 | min | segmentation agreement |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in r["reduction_fidelity"].items():
        lines.append(f"| {name} | {m['bytes_per_item']} | {m['pixel_cosine_mean']:.5f} | {m['pixel_cosine_p1']:.5f} | "
                     f"{m['pixel_cosine_min']:.5f} | {m['segmentation_agreement']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
