"""Model load in worker processes side by side: each on every core, or on its share (issue 12).

Two `--devices` workers on a 2x H200 host loaded their model in 10.5-11 s side by side against 2.2 s
alone. This times the same step (`open_model` on a lang-seg checkpoint: read, NaN/Inf check, casts) in
fresh processes: one alone on every core, N at once on every core, N at once on cores / N threads each,
which is what `ExtractorSpec.gpu_threads` now gives GPU workers. Writes oversubscription.{json,md}.

    python benchmarks/oversubscription.py OUT [--weights CKPT] [--variant vit_l16] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "LOAD_SECONDS "


def child(weights: str, variant: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from lseg_trt.artifacts import open_model
    from lseg_trt.errors import LsegTrtError

    started = time.perf_counter()
    try:
        open_model(weights=weights, variant=variant)
    except LsegTrtError as e:  # a bad --weights: one line from each process, not a traceback
        print(f"oversubscription.py: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(MARK + json.dumps(time.perf_counter() - started), flush=True)


def side_by_side(weights: str, variant: str, threads: int, processes: int) -> list[float]:
    """Each process's load seconds, all started together (imports are outside the timed part)."""
    command = [sys.executable, __file__, "--child", str(threads), "--weights", weights, "--variant", variant]
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    seconds = []
    for process in running:
        out, _ = process.communicate(timeout=600)
        seconds += [json.loads(line[len(MARK) :]) for line in out.splitlines() if line.startswith(MARK)]
    if len(seconds) != processes:
        print(f"oversubscription.py: a load process failed ({len(seconds)} of {processes} reported)", file=sys.stderr)
        raise SystemExit(2)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--weights", default=None, help="a lang-seg checkpoint [random weights saved as one]")
    p.add_argument("--variant", default="vit_l16")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.child is not None:
        child(ns.weights, ns.variant, ns.child)
        return
    if ns.out is None:
        p.error("OUT is required")
    from lseg_trt import hwinfo
    from lseg_trt.extraction.extractor import usable_cores
    from lseg_trt.reports import write_result

    cores = usable_cores()
    share = max(1, cores // ns.workers)
    with tempfile.TemporaryDirectory(prefix="lseg-oversub-") as scratch:
        weights = ns.weights
        if weights is None:
            from lseg_trt.models import load_lseg
            from lseg_trt.models.synthetic import save_lightning_checkpoint

            weights = str(Path(scratch) / f"random-{ns.variant}.ckpt")
            save_lightning_checkpoint(load_lseg("random", variant=ns.variant), Path(weights))
        side_by_side(weights, ns.variant, cores, 1)  # untimed: the file into the page cache
        rows = {
            f"1 process, {cores} threads": side_by_side(weights, ns.variant, cores, 1),
            f"{ns.workers} at once, {cores} threads each": side_by_side(weights, ns.variant, cores, ns.workers),
            f"{ns.workers} at once, {share} thread(s) each": side_by_side(weights, ns.variant, share, ns.workers),
        }
    lines = [
        f"# Model load ({ns.variant}, `open_model`) in processes side by side",
        "",
        f"{cores} cores; weights {Path(weights).name if ns.weights else 'random, saved as a lang-seg checkpoint'}.",
        "",
        "| processes | load seconds each |",
        "|---|---|",
        *(f"| {label} | {', '.join(f'{s:.2f}' for s in seconds)} |" for label, seconds in rows.items()),
    ]
    markdown = "\n".join(lines) + "\n"
    record = {"machine": hwinfo.collect(), "variant": ns.variant, "cores": cores, "load_seconds": rows}
    write_result(ns.out, "oversubscription", record, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
