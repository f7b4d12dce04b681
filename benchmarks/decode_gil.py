"""JPEG decode threads against the thread that launches GPU work: PIL's path and the libjpeg-turbo one.

Extraction decodes frames on a thread pool while one thread launches the network's kernels. Every torch
call releases the GIL and takes it back, so a decode that holds the GIL keeps that thread waiting and the
GPU idle. This decodes 1280x720 photo-like JPEGs on N threads, through PIL's path (what `load_rgb_array`
did for every JPEG before) and through `load_rgb_array` (simplejpeg for plain JPEGs), and meanwhile times
a stand-in launch loop on the main thread: 20 small torch calls, then a 2 ms sleep, as a batch's
launches and its wait for the next batch. Writes decode_gil.{json,md}.

    python benchmarks/decode_gil.py OUT [--threads 2,6,14] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pipeline_bench import synth_frames

from lseg_trt.hwinfo import collect
from lseg_trt.images import _rgb_from_pil, load_rgb_array


def pil_path(path: Path) -> np.ndarray:
    """The decode every JPEG took before simplejpeg: PIL's load, transpose, conversion and copies."""
    with Image.open(path) as image:
        image.load()
        return _rgb_from_pil(image)


def measure(decode: Callable[[Path], np.ndarray], frames: list[Path], threads: int, seconds: float) -> dict:
    """Decodes per second on `threads` threads, and the launch loop's milliseconds per 20 calls."""
    stop = threading.Event()
    counts = [0] * threads

    def work(slot: int) -> None:
        while not stop.is_set():
            decode(frames[counts[slot] % len(frames)])
            counts[slot] += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    x, loops = torch.zeros(16), []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        for _ in range(20):
            x.add(1)
        loops.append(time.perf_counter() - begin)
        time.sleep(0.002)
    stop.set()
    elapsed = time.perf_counter() - start
    for thread in pool:
        thread.join()
    ms = np.array(loops, dtype=np.float64) * 1e3
    return {
        "threads": threads,
        "decodes_per_s": sum(counts) / elapsed,
        "launch_ms_mean": float(ms.mean()),
        "launch_ms_p90": float(np.percentile(ms, 90)),
        "launch_ms_p99": float(np.percentile(ms, 99)),
    }


def render(r: dict) -> str:
    lines = [
        "# JPEG decode threads against a launch loop (issue 12)",
        "",
        f"{r['frames']} distinct 1280x720 JPEGs, decoded round and round for {r['seconds']} s per row; "
        f"{r['machine']['cpu_cores']} cores, torch {r['machine']['packages']['torch']}. Launch loop: "
        "20 small torch calls on the main thread (each releases and retakes the GIL, as a kernel launch "
        "does), then a 2 ms sleep.",
        "",
        "| decoder | threads | decodes/s | launch loop ms: mean | p90 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['decoder']} | {row['threads']} | {row['decodes_per_s']:.1f} | {row['launch_ms_mean']:.3f} "
            f"| {row['launch_ms_p90']:.3f} | {row['launch_ms_p99']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--threads", default="2,6,14", help="decode thread counts, comma-separated [%(default)s]")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--frames", type=int, default=16)
    args = p.parse_args()
    try:
        counts = [int(n) for n in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads wants comma-separated integers, not {args.threads!r}")
    if min(counts) < 1 or args.seconds <= 0 or args.frames < 1:
        p.error("--threads, --seconds and --frames must be positive")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        synth_frames(Path(tmp), args.frames)
        frames = sorted(Path(tmp).glob("*.jpg"))
        for path in frames:  # the claim the figures rest on: both decoders give the same pixels
            if not np.array_equal(pil_path(path), load_rgb_array(path)):
                sys.exit(f"decode_gil.py: the two decoders disagree on {path.name}")
        rows = [{"decoder": "none", **measure(pil_path, frames, 0, args.seconds)}]
        for threads in counts:
            for name, decode in (("PIL", pil_path), ("load_rgb_array (simplejpeg)", load_rgb_array)):
                rows.append({"decoder": name, **measure(decode, frames, threads, args.seconds)})
                print(rows[-1], flush=True)
    result = {"machine": collect(), "frames": args.frames, "seconds": args.seconds, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_gil.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "decode_gil.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
