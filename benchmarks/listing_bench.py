"""How long `list_items` takes to list a folder of many frames: the first thing a run does, before any
worker starts (`extract --devices` lists, then opens the run, then spawns its workers), so a dataset of
millions of frames pays it in its fixed cost. Frames are distinct files of 256 bytes, 4096 a folder
(`distinct_frames`): a listing reads no frame, and hard links to a few frames, as earlier runs used, are
now one item each (one file reached by many paths is listed once). Writes listing.{json,md}.

    python benchmarks/listing_bench.py OUT [--frames 65536] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def distinct_frames(folder: Path, count: int) -> None:
    """`count` distinct small files named like frames, 4096 a folder (not images: nothing decodes them)."""
    for i in range(count):
        path = folder / f"{i // 4096:03d}" / f"{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(8, "little") * 32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args()
    if ns.frames < 1 or ns.repeats < 1:
        p.error("--frames and --repeats must be at least 1")
    from lseg_trt import hwinfo
    from lseg_trt.extraction import list_items
    from lseg_trt.reports import write_result

    with tempfile.TemporaryDirectory(prefix="lseg-listing-") as scratch:
        root = Path(scratch) / "frames"
        distinct_frames(root, ns.frames)
        seconds = []
        for _ in range(ns.repeats):
            started = time.perf_counter()
            count = len(list_items(root))
            seconds.append(time.perf_counter() - started)
    if count != ns.frames:
        raise SystemExit(f"listing_bench.py: listed {count} of {ns.frames} frames")
    best = min(seconds)
    markdown = (
        f"# list_items on {ns.frames} frames (folders of 4096 files)\n\n"
        f"Seconds per listing: {', '.join(f'{s:.2f}' for s in seconds)} (median {statistics.median(seconds):.2f}); "
        f"{best / ns.frames * 1e6:.1f} us a frame at best, {best / ns.frames * 2.5e6:.0f} s for ScanNet's 2.5 M.\n"
    )
    record = {"machine": hwinfo.collect(), "frames": ns.frames, "seconds": seconds}
    write_result(ns.out, "listing", record, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
