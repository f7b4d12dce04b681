"""How long `list_items` takes to list a folder of many frames: the first thing a run does, before any
worker starts (`extract --devices` lists, then opens the run, then spawns its workers), so a dataset of
millions of frames pays it in its fixed cost. Frames are hard links (one small JPEG per folder of
1024), so the tree costs no disk. Writes listing.{json,md}.

    python benchmarks/listing_bench.py OUT [--frames 65536] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

PER_FOLDER = 1024


def make_tree(root: Path, frames: int) -> None:
    for folder in range((frames + PER_FOLDER - 1) // PER_FOLDER):
        scene = root / f"scene{folder:04d}"
        scene.mkdir(parents=True)
        first = scene / "000000.jpg"
        Image.new("RGB", (64, 48)).save(first)
        for i in range(1, min(PER_FOLDER, frames - folder * PER_FOLDER)):
            os.link(first, scene / f"{i:06d}.jpg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args()
    from lseg_trt import hwinfo
    from lseg_trt.extraction import list_items
    from lseg_trt.reports import write_result

    with tempfile.TemporaryDirectory(prefix="lseg-listing-") as scratch:
        root = Path(scratch) / "frames"
        make_tree(root, ns.frames)
        seconds = []
        for _ in range(ns.repeats):
            started = time.perf_counter()
            count = len(list_items(root))
            seconds.append(time.perf_counter() - started)
    if count != ns.frames:
        raise SystemExit(f"listing_bench.py: listed {count} of {ns.frames} frames")
    best = min(seconds)
    markdown = (
        f"# list_items on {ns.frames} frames ({ns.frames // PER_FOLDER} folders of {PER_FOLDER})\n\n"
        f"Seconds per listing: {', '.join(f'{s:.2f}' for s in seconds)} (median {statistics.median(seconds):.2f}); "
        f"{best / ns.frames * 1e6:.1f} us a frame at best, {best / ns.frames * 2.5e6:.0f} s for ScanNet's 2.5 M.\n"
    )
    record = {"machine": hwinfo.collect(), "frames": ns.frames, "seconds": seconds}
    write_result(ns.out, "listing", record, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
