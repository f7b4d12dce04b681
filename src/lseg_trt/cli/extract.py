"""`lseg-trt extract`: images, folders, globs, list files or videos -> features on disk, resumable.

A thin layer over `lseg_trt.extraction`: one run per network size, each with its own manifest.
Exit code 0 when every item is done, 1 when some were skipped as unreadable or non-finite (the
run still completes and says which), 2 for a user error before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from lseg_trt.cli import Command
from lseg_trt.cli.args import (
    Parser,
    add_device_args,
    add_recipe_args,
    add_weights_args,
    batch_size,
    device_from_args,
    non_negative_int,
    out_dir_from,
    positive_int,
    recipe_from_args,
    recipe_sizes_from,
    sizes_from,
    source_from_args,
)


def run_extract(ns: argparse.Namespace) -> int:
    from lseg_trt.errors import LsegTrtError
    from lseg_trt.extraction import FeatureExtractor, extract
    from lseg_trt.extraction.partition import Task, parse_task
    from lseg_trt.extraction.sources import scan

    if ns.devices is not None and ns.ray is not None:
        raise LsegTrtError("--devices and --ray exclude each other: Ray places its actors itself")
    task = parse_task(ns.shard) if ns.shard is not None else Task()
    if task.count > 1 and ns.force:
        raise LsegTrtError("--force with --shard K/N would remove other tasks' results; each task rewrites its own")
    if task.count > 1 and ns.pca:
        raise LsegTrtError("--pca with --shard K/N: tasks would fit different bases; use --devices or --ray")
    scaled = task.count > 1 or ns.devices is not None or ns.ray is not None
    devices = _devices(ns.devices) if ns.devices is not None else None
    device = devices[0] if devices else device_from_args(ns)
    recipe = recipe_from_args(ns)
    sizes = sizes_from(ns.sizes or ["480x640"]) if recipe is None else recipe_sizes_from(ns, recipe)
    ns.dtype = ns.dtype or (recipe.dtype if recipe is not None else "fp16")  # a recipe stores in its own dtype
    out = out_dir_from(ns.out)
    if ns.ray is not None:  # before anything is loaded or written: a wrong address fails in seconds
        from lseg_trt.extraction.ray_data import connect

        connect(None if ns.ray == "local" else ns.ray)
    if devices is not None:  # its imports overlap this process's own model load and warm-up
        from lseg_trt.extraction.multi_gpu import start_worker_server

        start_worker_server()
    source = source_from_args(ns)
    listing = scan(ns.images) if scaled else None
    ok = True
    # a run handed to worker processes needs no model here (the run folder is opened from the declared
    # feature shape), unless a PCA basis must be fitted first: the workers then start at once
    delegated = (devices is not None or ns.ray is not None) and not ns.pca
    for size in sizes:
        extractor = FeatureExtractor.from_source(
            source, ns.backend, size, batch_size=ns.batch, device=device, cache_dir=ns.cache, workers=ns.workers,
            recipe=recipe,
        )  # fmt: skip
        print(f"backend: {extractor.runner.name} ({extractor.metadata['backend_reason']})", flush=True)
        with contextlib.nullcontext(extractor) if delegated else extractor:
            if scaled:
                summary = _scaled_run(ns, extractor, listing, out, task, devices)
            else:
                summary = extract(
                    extractor, ns.images, out, format=ns.format, dtype=ns.dtype, pool=ns.pool, pca=ns.pca or None,
                    shard_size=ns.shard_size, resume=ns.resume, force=ns.force, verify=ns.verify,
                )  # fmt: skip
        print(summary.describe())
        ok = ok and summary.ok
    return 0 if ok else 1


def _devices(text: str) -> list[str]:
    from lseg_trt.extraction.multi_gpu import parse_devices

    return parse_devices(text)


def _scaled_run(ns: argparse.Namespace, extractor, listing, out, task, devices: list[str] | None):  # noqa: ANN001, ANN202
    """One size of a `--shard`, `--devices` or `--ray` run: this process opens the run and plans the
    shards; with `--devices` or `--ray` the model is released here before the workers load theirs."""
    import torch

    from lseg_trt.extraction.multi_gpu import ExtractorSpec, run_devices
    from lseg_trt.extraction.partition import plan_task
    from lseg_trt.extraction.run import RunOptions, pending_shards, prepare_run, run_shards

    joined = task.count > 1  # tasks of one run share its folder: join it, never wipe it
    options = RunOptions(ns.format, ns.dtype, ns.pool, ns.pca or None, ns.shard_size, ns.resume or joined, ns.force)
    output = prepare_run(extractor, listing.items, out, options, shared=joined)
    shards = plan_task(listing.items, ns.shard_size, task)
    # a joined task, resumed or not, takes its own stale shards out (other tasks' residues are theirs)
    plan = pending_shards(shards, output, owns=task.owns_index, verify=ns.verify) if ns.resume or joined else None
    todo = plan.todo if ns.resume and plan is not None else shards
    if devices is None and ns.ray is None:
        summary = run_shards(extractor, todo, output)
    else:
        extractor.deactivate()
        weights = ns.weights or (None if ns.onnx or ns.engine else "random")
        spec = ExtractorSpec(
            weights, ns.onnx, ns.engine, ns.variant, ns.backend, extractor.size, ns.batch, ns.cache, ns.workers,
            cpu_threads=torch.get_num_threads(),
        )  # fmt: skip
        if devices is not None:
            summary = run_devices(spec, devices, todo, output)
        else:
            from lseg_trt.extraction.ray_data import run_ray

            summary = run_ray(spec, todo, output, actors=ns.actors)
    summary.skipped = sum(len(s.items) for s in shards) - sum(len(s.items) for s in todo)
    summary.removed = plan.removed if plan is not None else []
    summary.notes = listing.notes()
    return summary


def run_manifest(ns: argparse.Namespace) -> int:
    from lseg_trt.errors import LsegTrtError
    from lseg_trt.extraction import list_items
    from lseg_trt.extraction.partition import check_runs, merge_runs

    runs = [Path(r) for r in ns.runs]
    if ns.action == "merge":
        if not ns.out:
            raise LsegTrtError("manifest merge needs --out ROOT (the merged run folder goes under it)")
        check = merge_runs(runs, out_dir_from(ns.out))
    else:
        check = check_runs(runs, list_items(ns.images) if ns.images else None, verify=not ns.quick)
    print(check.describe())
    return 0 if check.ok else 1


def _extract_args(p: Parser) -> None:
    from lseg_trt.extraction.extractor import default_workers
    from lseg_trt.extraction.manifest import FORMATS

    add_weights_args(p, files=True)
    p.add_argument(
        "--backend",
        default="auto",
        help="runner name, or auto: for weights the fastest backend known to pass fidelity on this device (a "
        "verified TensorRT engine, torch-compile-fp16+graph on a GPU; onnxruntime on the CPU), for an ONNX file "
        "onnxruntime, for an engine tensorrt, in the file's precision [%(default)s]",
    )
    p.add_argument("--images", nargs="+", required=True, help="image files, folders (recursive), globs, list files")
    p.add_argument("--sizes", nargs="+", help="network input N or HxW, one run each [480x640]")
    p.add_argument("--batch", type=batch_size, default=8, help="images per network call [%(default)s]")
    p.add_argument("--workers", type=positive_int, default=default_workers(), help="decode threads [%(default)s]")
    p.add_argument(
        "--format", choices=FORMATS, default="shards", help="safetensors shards or per-image .npy [%(default)s]"
    )
    p.add_argument("--shard-size", type=positive_int, default=64, help="items per shard and manifest [%(default)s]")
    p.add_argument("--dtype", choices=("fp16", "fp32"), help="storage dtype [fp16; a recipe's own]")
    p.add_argument("--pool", type=positive_int, default=1, help="average-pool the feature grid by K [%(default)s]")
    p.add_argument("--pca", type=non_negative_int, default=0, help="project to K channels (fitted PCA; 0 = off)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="skip what the manifest says is done")
    again.add_argument("--force", action="store_true", help="redo an existing run folder")
    p.add_argument(
        "--verify",
        action="store_true",
        help="with --resume: read every stored feature and check its checksum (by default only files whose "
        "size, times or inode changed since they were written are read)",
    )
    p.add_argument("--out", default="outputs/features", help="output root [%(default)s]")
    add_device_args(p)
    add_recipe_args(p)
    scale = p.add_argument_group("scale-out", "the same files as a one-GPU run, written by several processes")
    scale.add_argument(
        "--shard", metavar="K/N", help="do task K of N (SLURM array, Kubernetes indexed job): items by sha1 of name"
    )
    scale.add_argument("--devices", help="one worker process per device: all, or e.g. cuda:0,cuda:1")
    scale.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS", help="run on Ray actors (ADDRESS, or a local instance)"
    )
    scale.add_argument("--actors", type=positive_int, default=None, help="Ray actors [one per GPU, else 2]")


def _manifest_args(p: Parser) -> None:
    p.add_argument("action", choices=("check", "merge"), help="check: nothing missing or twice; merge: into --out")
    p.add_argument("runs", nargs="+", help="run folders (<HxW>-<format>.run) of the tasks of one run")
    p.add_argument("--images", nargs="+", help="the run's input, to find missing items (check)")
    p.add_argument("--out", help="output root of the merged run (merge)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="check: read the checksums only of files whose size, times or inode changed since they were written "
        "(default: read every stored feature)",
    )


COMMANDS = {
    "extract": Command("features of images to disk: sharded or per-image, resumable", _extract_args, run_extract),
    "manifest": Command("check or merge the run folders of --shard tasks", _manifest_args, run_manifest),
}
