"""How long `list_items` takes to list a folder of many frames: the first thing a run does, before any
worker starts (`extract --devices` lists, then opens the run, then spawns its workers), so a dataset of
millions of frames pays it in its fixed cost. Frames are hard links (`multi_gpu_bench.linked_frames`:
4096 names a folder, one distinct frame per 1024 names), so the tree costs little disk. Writes
listing.{json,md}.

    python benchmarks/listing_bench.py OUT [--frames 65536] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from multi_gpu_bench import linked_frames  # noqa: E402

NAMES_PER_FRAME = 1024  # hard links per distinct frame (ext4 allows 65000)


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
        linked_frames(root, ns.frames, max(1, ns.frames // NAMES_PER_FRAME), parts=1)
        seconds = []
        for _ in range(ns.repeats):
            started = time.perf_counter()
            count = len(list_items(root))
            seconds.append(time.perf_counter() - started)
    if count != ns.frames:
        raise SystemExit(f"listing_bench.py: listed {count} of {ns.frames} frames")
    best = min(seconds)
    markdown = (
        f"# list_items on {ns.frames} frames (folders of 4096 hard links)\n\n"
        f"Seconds per listing: {', '.join(f'{s:.2f}' for s in seconds)} (median {statistics.median(seconds):.2f}); "
        f"{best / ns.frames * 1e6:.1f} us a frame at best, {best / ns.frames * 2.5e6:.0f} s for ScanNet's 2.5 M.\n"
    )
    record = {"machine": hwinfo.collect(), "frames": ns.frames, "seconds": seconds}
    write_result(ns.out, "listing", record, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
