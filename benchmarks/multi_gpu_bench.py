"""Extraction to disk on 1 and on N devices of one host, same data, and the scaling efficiency (issue 12).

Synthesises M 1280x720 JPEG frames (the generator of pipeline_bench.py, in parallel), then for the
first device alone and for all of --devices runs the same extraction (safetensors shards, fp16, pooled)
through `run_devices`: one worker process per device, as `lseg-trt extract --devices` does. Reports
images/s end to end (process start and model load included: the parent's clock from spawn to join)
and steady (images / the slowest worker's seconds after its model is loaded and warm), and the
scaling efficiency throughput_N / (N * throughput_1) of each. Writes multi_gpu.json and multi_gpu.md.

    python benchmarks/multi_gpu_bench.py --devices cuda:0,cuda:1 --frames 8192 --out benchmarks/results/multi_gpu
    python benchmarks/multi_gpu_bench.py --devices cpu,cpu --variant tiny_vit --frames 32
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import lseg_trt
from lseg_trt.extraction import list_items, plan_shards
from lseg_trt.extraction.multi_gpu import ExtractorSpec, parse_devices, run_devices
from lseg_trt.extraction.run import RunOptions, prepare_run
from lseg_trt.reports import write_result
from lseg_trt.sizes import parse_size

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_bench import make_frames  # noqa: E402


def measure(spec: ExtractorSpec, devices: list[str], frames: Path, out: Path, ns: argparse.Namespace) -> dict:
    """One to-disk run of every frame on `devices`; the run folder is made (and its model released) first."""
    shutil.rmtree(out, ignore_errors=True)
    items = list_items(frames)
    with spec.build(devices[0]) as extractor:
        output = prepare_run(extractor, items, out, RunOptions(pool=ns.pool, shard_size=ns.shard_size))
    summary = run_devices(spec, devices, plan_shards(items, ns.shard_size), output)
    workers = {k: v for k, v in summary.timings.items() if k.startswith("worker")}
    slowest = max(workers.values())
    return {
        "worker_startup_s": summary.startup_by_worker,
        "devices": devices,
        "images": summary.done,
        "ok": summary.ok,
        "seconds_end_to_end": round(summary.seconds, 3),
        "images_per_s_end_to_end": summary.done / summary.seconds,
        "worker_seconds": workers,
        "images_per_s_steady": summary.done / slowest,
    }


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="all" if gpu else "cpu,cpu", help="all, or e.g. cuda:0,cuda:1 [%(default)s]")
    p.add_argument("--variant", default="vit_l16")
    p.add_argument(
        "--weights",
        default=None,
        help="a checkpoint [random weights saved as a lang-seg checkpoint "
        "first, so that workers load a file as a user's run does, instead of each building its own]",
    )
    p.add_argument("--backend", default="torch-fp16" if gpu else "torch", help="compiled ones add ~1 min per process")
    p.add_argument("--size", default="480x640")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=4096)
    p.add_argument("--pool", type=int, default=4, help="average-pool the stored grid [%(default)s]")
    p.add_argument("--shard-size", type=int, default=64, help="at most; lowered to give each device 4 shards")
    p.add_argument("--workers", type=int, default=None, help="decode threads per device [cores / devices - 1, <= 8]")
    p.add_argument("--work", default=None, help="scratch folder for frames and outputs [a temporary folder]")
    p.add_argument("--cache", default="models")
    p.add_argument("--out", default="outputs/multi_gpu_bench")
    ns = p.parse_args()

    devices = parse_devices(ns.devices)
    ns.shard_size = max(1, min(ns.shard_size, ns.frames // (4 * len(devices))))
    cores = os.cpu_count() or 2
    workers = ns.workers or max(1, min(8, cores // len(devices) - 1))
    size = parse_size(ns.size)
    work = Path(ns.work or tempfile.mkdtemp(prefix="lseg-multi-gpu-"))
    make_frames(work / "frames", ns.frames, max(1, min(16, cores, ns.frames)))
    if ns.weights is None:
        from lseg_trt.models import load_lseg
        from lseg_trt.models.synthetic import save_lightning_checkpoint

        ns.weights = str(work / f"random-{ns.variant}.ckpt")
        save_lightning_checkpoint(load_lseg("random", variant=ns.variant), Path(ns.weights))
    spec = ExtractorSpec(
        ns.weights, variant=ns.variant, backend=ns.backend, size=size, batch_size=ns.batch, cache_dir=ns.cache,
        workers=workers, cpu_threads=max(1, torch.get_num_threads() // len(devices)),
    )  # fmt: skip
    one = measure(spec, devices[:1], work / "frames", work / "out-1", ns)
    many = measure(spec, devices, work / "frames", work / "out-n", ns)
    n = len(devices)
    result = {
        "machine": {"host": platform.node(), "cpus": cores, "torch": torch.__version__,
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if gpu else []},
        "lseg_trt": lseg_trt.__version__,
        "settings": {"variant": ns.variant, "weights": Path(ns.weights).name, "backend": ns.backend, "size": list(size),
                     "batch": ns.batch, "frames": ns.frames, "frame_size": [720, 1280], "pool": ns.pool,
                     "dtype": "fp16", "format": "shards", "shard_size": ns.shard_size, "decode_workers": workers},
        "one": one,
        "many": many,
        "efficiency_end_to_end": many["images_per_s_end_to_end"] / (n * one["images_per_s_end_to_end"]),
        "efficiency_steady": many["images_per_s_steady"] / (n * one["images_per_s_steady"]),
    }  # fmt: skip
    markdown = render(result)
    write_result(Path(ns.out), "multi_gpu", result, markdown)
    print(markdown)
    if not ns.work:
        shutil.rmtree(work, ignore_errors=True)


def render(r: dict) -> str:
    s, one, many = r["settings"], r["one"], r["many"]
    n = len(many["devices"])
    lines = [
        f"# Extraction on 1 and {n} devices ({', '.join(many['devices'])})",
        "",
        f"{s['frames']} frames 1280x720 JPEG -> {s['variant']} {s['backend']} {s['size'][0]}x{s['size'][1]}, "
        f"batch {s['batch']}, pool {s['pool']}, fp16 shards of {s['shard_size']}, "
        f"{s['decode_workers']} decode threads per device; torch {r['machine']['torch']}, "
        f"{r['machine']['cpus']} cores, {', '.join(r['machine']['gpus']) or 'no GPU'}.",
        "",
        "| devices | images/s end to end | images/s steady | seconds end to end | worker startup s | worker seconds |",
        "|---|---|---|---|---|---|",
    ]
    for row in (one, many):
        workers = ", ".join(f"{v:.1f}" for v in row["worker_seconds"].values())
        startup = ", ".join(f"{v:.1f}" for v in row["worker_startup_s"].values())
        lines.append(
            f"| {len(row['devices'])} | {row['images_per_s_end_to_end']:.1f} | {row['images_per_s_steady']:.1f} | "
            f"{row['seconds_end_to_end']:.1f} | {startup} | {workers} |"
        )
    lines += [
        "",
        f"Scaling efficiency (throughput_{n} / ({n} x throughput_1)): end to end "
        f"**{r['efficiency_end_to_end']:.3f}** ({n * r['efficiency_end_to_end']:.2f}x), steady "
        f"**{r['efficiency_steady']:.3f}** ({n * r['efficiency_steady']:.2f}x).",
        "End to end: from spawning the workers to the last one's exit (process start, model load and warm-up "
        "included); steady: images / the slowest worker's seconds after its model is loaded; worker startup: from "
        "spawn to model loaded and warm (interpreter, imports, checkpoint, warm-up batch).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
