"""`lseg-trt extract`: images, folders, globs, list files or videos -> features on disk, resumable.

A thin layer over `lseg_trt.extraction`: one run per network size, each with its own manifest.
Exit code 0 when every item is done, 1 when some were skipped as unreadable or non-finite (the
run still completes and says which), 2 for a user error before anything is written.
"""

from __future__ import annotations

import argparse

from lseg_trt.cli import Command
from lseg_trt.cli.args import (
    Parser,
    add_device_args,
    add_weights_args,
    device_from_args,
    non_negative_int,
    out_dir_from,
    positive_int,
    sizes_from,
    source_from_args,
)


def run_extract(ns: argparse.Namespace) -> int:
    from lseg_trt.errors import LsegTrtError
    from lseg_trt.extraction import FeatureExtractor, extract

    if ns.resume and ns.force:
        raise LsegTrtError("--resume and --force exclude each other")
    device = device_from_args(ns)
    sizes = sizes_from(ns.sizes)
    out = out_dir_from(ns.out)
    source = source_from_args(ns)
    ok = True
    for size in sizes:
        extractor = FeatureExtractor.from_source(
            source, ns.backend, size, batch_size=ns.batch, device=device, cache_dir=ns.cache, workers=ns.workers
        )
        with extractor:
            summary = extract(
                extractor, ns.images, out, format=ns.format, dtype=ns.dtype, pool=ns.pool, pca=ns.pca or None,
                shard_size=ns.shard_size, resume=ns.resume, force=ns.force,
            )  # fmt: skip
        print(summary.describe())
        ok = ok and summary.ok
    return 0 if ok else 1


def _extract_args(p: Parser) -> None:
    from lseg_trt.extraction.extractor import default_workers
    from lseg_trt.extraction.manifest import FORMATS

    add_weights_args(p, files=True)
    p.add_argument(
        "--backend",
        default=None,
        help="runner name; default: torch for weights, onnxruntime for ONNX, tensorrt for engines, in the file's "
        "precision",
    )
    p.add_argument("--images", nargs="+", required=True, help="image files, folders (recursive), globs, list files")
    p.add_argument("--sizes", nargs="+", default=["480x640"], help="network input N or HxW, one run each [%(default)s]")
    p.add_argument("--batch", type=positive_int, default=8, help="images per network call [%(default)s]")
    p.add_argument("--workers", type=positive_int, default=default_workers(), help="decode threads [%(default)s]")
    p.add_argument(
        "--format", choices=FORMATS, default="shards", help="safetensors shards or per-image .npy [%(default)s]"
    )
    p.add_argument("--shard-size", type=positive_int, default=64, help="items per shard and manifest [%(default)s]")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="storage dtype [%(default)s]")
    p.add_argument("--pool", type=positive_int, default=1, help="average-pool the feature grid by K [%(default)s]")
    p.add_argument("--pca", type=non_negative_int, default=0, help="project to K channels (fitted PCA; 0 = off)")
    p.add_argument("--resume", action="store_true", help="skip what the manifest says is done")
    p.add_argument("--force", action="store_true", help="redo an existing run folder")
    p.add_argument("--out", default="outputs/features", help="output root [%(default)s]")
    add_device_args(p)


COMMANDS = {
    "extract": Command("features of images to disk: sharded or per-image, resumable", _extract_args, run_extract)
}
