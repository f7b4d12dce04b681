"""Extraction to disk on 1 and on N devices of one host, same data, and the scaling efficiency (issue 12).

Synthesises U distinct 1280x720 JPEG frames (the generator of pipeline_bench.py, in parallel) and copies
them under M names (frame i is distinct frame i mod U: decoding costs the same, and the synthesis, about
0.1 s a frame, would otherwise cost more device time than the runs; copies, not hard links, since a file
reached by several paths is one item of a listing), then for the first device alone and
for all of --devices runs the same extraction (safetensors shards, fp16, pooled)
through `run_devices`: one worker process per device, as `lseg-trt extract --devices` does. Reports
images/s end to end (from opening the run, the weights read, to the last worker's exit: process start
and model load included)
and the data path's own rate: images per worker-second once the models are loaded and warm (workers
take shards from one queue, so they start and stop at different times: images / the slowest worker
would charge one worker's late start to the whole run). Scaling efficiency: throughput_N / (N *
throughput_1) end to end, and (images per worker-second)_N / (...)_1 for the data path. Each worker's
startup is split into imports, device (CUDA initialisation), model (checkpoint, runner) and warm-up
(compile or kernel load, graph capture). Before each timed run the weights file and the compile caches
are read once, untimed: a run writes gigabytes of features, which can push them out of the page cache,
and the run that came second would then read them from disk while the first did not.
Writes multi_gpu.json and multi_gpu.md.

    python benchmarks/multi_gpu_bench.py --devices cuda:0,cuda:1 --frames 8192 --out benchmarks/results/multi_gpu
    python benchmarks/multi_gpu_bench.py --devices cpu,cpu --variant tiny_vit --frames 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import lseg_trt
from lseg_trt import hwinfo
from lseg_trt.extraction import list_items, plan_shards
from lseg_trt.extraction.extractor import usable_cores
from lseg_trt.extraction.multi_gpu import ExtractorSpec, parse_devices, run_devices, start_worker_server
from lseg_trt.extraction.run import RunOptions, prepare_run
from lseg_trt.reports import write_result
from lseg_trt.sizes import parse_size

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_bench import make_frames  # noqa: E402


def copied_frames(folder: Path, count: int, unique: int, parts: int) -> None:
    """`count` frame files in `folder`, copies of `unique` synthesised frames (made beside it); a folder
    left by an earlier call is kept only if it was made for the same two numbers."""
    made = folder / "made.json"
    if made.is_file() and json.loads(made.read_text()) == [count, unique]:
        return
    shutil.rmtree(folder, ignore_errors=True)
    source = folder.with_name(folder.name + "-unique")
    make_frames(source, unique, parts)
    distinct = sorted(source.rglob("*.jpg"))
    for i in range(count):
        target = folder / f"{i // 4096:03d}" / f"{i:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(distinct[i % len(distinct)], target)
    made.write_text(json.dumps([count, unique]))


def read_through(paths: list[Path]) -> None:
    """Read every file under `paths`, so that each timed run finds them in the page cache."""
    for root in paths:
        for path in [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()):
            with contextlib.suppress(OSError), path.open("rb") as f:
                while f.read(1 << 24):
                    pass


def measure(
    spec: ExtractorSpec, devices: list[str], frames: Path, out: Path, ns: argparse.Namespace, shard_size: int = 0
) -> dict:
    """One to-disk run of every frame on `devices`; the run folder is made (and its model released) first."""
    shutil.rmtree(out, ignore_errors=True)
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    triton = os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache"
    read_through([Path(spec.weights), Path(cache_dir()), Path(triton)])
    items = list_items(frames)
    shard_size = shard_size or ns.shard_size
    # every arm starts on a quiet disk: the frames just made and the previous arm's deleted output (tens of
    # GB on ext4) would otherwise still be written back, or their blocks freed, inside the next timed run
    synced = time.perf_counter()
    os.sync()
    synced = time.perf_counter() - synced
    start = time.perf_counter()
    # as `lseg-trt extract --devices` does: the weights are read (and hashed) to open the run; no model runs
    # here, nor does CUDA start in this process
    output = prepare_run(spec.open_on(devices[0]), items, out, RunOptions(pool=ns.pool, shard_size=shard_size))
    prepared = time.perf_counter() - start
    summary = run_devices(spec, devices, plan_shards(items, shard_size), output)
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)  # the features are not needed; two full runs would need twice the disk
    workers = {k: v for k, v in summary.timings.items() if k.startswith("worker")}
    return {
        "coordinator_s": prepared,  # opening the run, before any worker starts
        "worker_startup_s": summary.startup_by_worker,
        "worker_stages_s": summary.stages_by_worker,
        "devices": devices,
        "images": summary.done,
        "ok": summary.ok,
        "seconds_end_to_end": round(seconds, 3),
        "images_per_s_end_to_end": summary.done / seconds,
        "worker_seconds": workers,
        "images_per_worker_second": summary.done / sum(workers.values()),
        # what the run cost beyond its data path (opening the run, worker startup, the last shards' tail):
        # a run of F frames takes about fixed_s + F / (workers * images_per_worker_second)
        "fixed_s": seconds - sum(workers.values()) / len(workers),
        "sync_before_s": synced,  # untimed: how much the disk still had to do from before this run
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
    p.add_argument(
        "--backend",
        default="torch-compile-fp16+graph" if gpu else "torch",
        help="the fastest measured on a GPU; compiled backends compile in the untimed first run",
    )
    p.add_argument("--size", default="480x640")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=4096)
    p.add_argument("--unique-frames", type=int, default=4096, help="distinct frames among them [%(default)s]")
    p.add_argument("--pool", type=int, default=4, help="average-pool the stored grid [%(default)s]")
    p.add_argument("--shard-size", type=int, default=64, help="at most; lowered to give each device 4 shards")
    p.add_argument("--workers", type=int, default=None, help="decode threads per device [cores / devices - 1, <= 8]")
    p.add_argument("--work", default=None, help="scratch folder for frames and outputs [a temporary folder]")
    p.add_argument("--cache", default="models")
    p.add_argument("--out", default="outputs/multi_gpu_bench")
    p.add_argument("--no-warm-run", action="store_true", help="skip the untimed run that warms every device's cache")
    ns = p.parse_args()

    devices = parse_devices(ns.devices)
    start_worker_server()  # as `lseg-trt extract --devices` does, before its own preparation
    ns.shard_size = max(1, min(ns.shard_size, ns.frames // (4 * len(devices))))
    cores = usable_cores()
    workers = ns.workers or max(1, min(8, cores // len(devices) - 1))
    size = parse_size(ns.size)
    work = Path(ns.work or tempfile.mkdtemp(prefix="lseg-multi-gpu-"))
    unique = max(1, min(ns.unique_frames, ns.frames))
    copied_frames(work / "frames", ns.frames, unique, max(1, min(16, cores, unique)))
    if ns.weights is None:
        from lseg_trt.models import load_lseg
        from lseg_trt.models.synthetic import save_lightning_checkpoint

        ns.weights = str(work / f"random-{ns.variant}.ckpt")
        save_lightning_checkpoint(load_lseg("random", variant=ns.variant), Path(ns.weights))
    spec = ExtractorSpec(
        ns.weights, variant=ns.variant, backend=ns.backend, size=size, batch_size=ns.batch, cache_dir=ns.cache,
        workers=workers, cpu_threads=max(1, torch.get_num_threads() // len(devices)),
    )  # fmt: skip
    # Compiled backends cache their kernels per device (the generated code names its GPU), and the parent
    # prepares each run on the first device only: without this run, the N-device run would compile for the
    # other devices inside its timed region while the one-device run finds its cache warm. Untimed, it
    # gives every device a warm cache, as on a user's second run; its figures are kept as `first_run`.
    first_run = None
    if not ns.no_warm_run:
        make_frames(work / "warm", len(devices) * ns.batch, 1)
        first_run = measure(spec, devices, work / "warm", work / "out-warm", ns, shard_size=ns.batch)
    one = measure(spec, devices[:1], work / "frames", work / "out-1", ns)
    many = measure(spec, devices, work / "frames", work / "out-n", ns)
    n = len(devices)
    result = {
        "machine": hwinfo.collect(),
        "lseg_trt": lseg_trt.__version__,
        "settings": {"variant": ns.variant, "weights": Path(ns.weights).name, "backend": ns.backend, "size": list(size),
                     "batch": ns.batch, "frames": ns.frames, "unique_frames": unique, "frame_size": [720, 1280],
                     "pool": ns.pool, "dtype": "fp16", "format": "shards", "shard_size": ns.shard_size,
                     "decode_workers": workers},
        "first_run": first_run,
        "one": one,
        "many": many,
        "efficiency_end_to_end": many["images_per_s_end_to_end"] / (n * one["images_per_s_end_to_end"]),
        "efficiency_data_path": many["images_per_worker_second"] / one["images_per_worker_second"],
    }  # fmt: skip
    markdown = render(result)
    write_result(Path(ns.out), "multi_gpu", result, markdown)
    print(markdown)
    if not ns.work:
        shutil.rmtree(work, ignore_errors=True)


def render(r: dict) -> str:
    s, one, many, machine = r["settings"], r["one"], r["many"], r["machine"]
    n = len(many["devices"])
    lines = [
        f"# Extraction on 1 and {n} devices ({', '.join(many['devices'])})",
        "",
        f"{s['frames']} frames ({s.get('unique_frames', s['frames'])} distinct) 1280x720 JPEG -> {s['variant']} "
        f"{s['backend']} {s['size'][0]}x{s['size'][1]}, "
        f"batch {s['batch']}, pool {s['pool']}, fp16 shards of {s['shard_size']}, "
        f"{s['decode_workers']} decode threads per device; torch {machine['packages']['torch']}, "
        f"{machine['cpu_cores']} cores, {', '.join(g['name'] for g in machine['gpus']) or 'no GPU'}.",
        "",
        "| devices | images/s end to end | seconds end to end | worker startup s (imports + device + model + warm-up) "
        "| worker seconds | images per worker-second | fixed s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in (one, many):
        workers = ", ".join(f"{v:.1f}" for v in row["worker_seconds"].values())
        startup = ", ".join(
            f"{v['total']:.1f} ({v['imports']:.1f} + {v.get('device', 0):.1f} + {v['model']:.1f} + {v['warmup']:.1f})"
            for v in row["worker_startup_s"].values()
        )
        lines.append(
            f"| {len(row['devices'])} | {row['images_per_s_end_to_end']:.1f} | {row['seconds_end_to_end']:.1f} | "
            f"{startup} | {workers} | {row['images_per_worker_second']:.1f} | {row.get('fixed_s', float('nan')):.1f} |"
        )
    lines += [
        "",
        f"Scaling efficiency: end to end (throughput_{n} / ({n} x throughput_1)) "
        f"**{r['efficiency_end_to_end']:.3f}** ({n * r['efficiency_end_to_end']:.2f}x); data path (images per "
        f"worker-second, {n} workers / 1) **{r['efficiency_data_path']:.3f}** "
        f"({n * r['efficiency_data_path']:.2f}x with all {n} working).",
        "End to end: from opening the run (reading the weights) to the last worker's exit (process start, "
        "model load and warm-up included). Worker seconds: each worker's time after its model is loaded and "
        "warm, taking shards from one queue until it is empty. Worker startup: from spawn to that point. "
        "Fixed: end to end minus images / (devices x images per worker-second), the cost a longer run "
        "does not repeat.",
    ]
    stages = ("compute", "wait_input", "wait_write", "write", "commit")
    lines += [
        "",
        "Where each worker's seconds went (the pipeline's stages overlap, so they do not add up to its worker "
        "seconds; wait_input: the GPU loop waiting for decoded frames, wait_write: waiting for room in the "
        "writers' queues, commit: making each finished shard durable, fsync'ed):",
        "",
        "| devices | worker | " + " | ".join(stages) + " |",
        "|---|---|" + "---|" * len(stages),
    ]
    for row in (one, many):
        for worker, seconds in row.get("worker_stages_s", {}).items():
            cells = " | ".join(f"{seconds.get(stage, 0.0):.2f}" for stage in stages)
            lines.append(f"| {len(row['devices'])} | {worker} | {cells} |")
    parts = ("warmup: activate", "warmup: warm-up calls", "warmup: graph capture")
    lines += [
        "",
        "Before the workers start, the coordinator opens the run (reads and hashes the weights): "
        + ", ".join(f"{row['coordinator_s']:.1f} s" for row in (one, many) if "coordinator_s" in row)
        + ". Where each worker's warm-up went (activate: the weights placed on the device; warm-up calls: "
        "the first compiles or loads the kernels; rest: the remainder of the warm-up batch):",
        "",
        "| devices | worker | warm-up | activate | warm-up calls | graph capture | rest |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in (one, many):
        for worker, startup in row["worker_startup_s"].items():
            known = [startup.get(part, 0.0) for part in parts]
            cells = " | ".join(f"{v:.2f}" for v in [startup["warmup"], *known, startup["warmup"] - sum(known)])
            lines.append(f"| {len(row['devices'])} | {worker} | {cells} |")
    if "sync_before_s" in one:
        lines += [
            "",
            "Before each run, untimed, the disk finished what it still had to write or free: "
            f"{one['sync_before_s']:.1f} s before the one-device run, {many['sync_before_s']:.1f} s before the "
            f"{n}-device run.",
        ]
    if r.get("first_run"):
        first = r["first_run"]
        startup = ", ".join(f"{k} {v['total']:.1f}" for k, v in first["worker_startup_s"].items())
        lines += [
            "",
            f"Before these, an untimed run of {first['images']} frames on all devices filled each device's compile "
            f"cache (a first run): {first['seconds_end_to_end']:.1f} s end to end, worker startup {startup} s.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
