"""Compare feature trees in float64: backends, checkpoints or sizes."""

from __future__ import annotations

import argparse
import sys

from lseg_trt.cli import Command
from lseg_trt.cli.args import Parser, out_dir_from


def run_compare(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from lseg_trt.compare import compare_tree, markdown, tree_pictures
    from lseg_trt.reports import write_report

    out = out_dir_from(ns.out)
    comparisons = compare_tree(Path(ns.tree), ns.by, ns.reference)
    record = {"tree": ns.tree, "by": ns.by, "reference": ns.reference if ns.by == "backends" else None}
    paths = write_report(out, f"compare_{ns.by}", markdown(comparisons, f"lseg-trt compare --by {ns.by}"),
                         [c.row() for c in comparisons], record, "comparisons")  # fmt: skip
    if ns.by == "backends":
        tree_pictures(Path(ns.tree), out, ns.reference)
    print(paths.markdown.read_text())
    for path in paths:
        print(f"wrote {path}")
    nonfinite = sum(c.metrics.nonfinite for c in comparisons)
    failed = [c for c in comparisons if c.failed]
    unjudged = sorted({c.candidate for c in comparisons if ns.by == "backends" and c.passed is None})
    if unjudged:
        print(f"no tolerance for {', '.join(unjudged)}: not backend names of lseg-trt (metrics only)", file=sys.stderr)
    if nonfinite:
        print(f"{nonfinite} NaN/Inf values in the compared features", file=sys.stderr)
    if failed:
        print(f"{len(failed)} comparison(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _compare_args(p: Parser) -> None:
    p.add_argument("--tree", default="outputs/features", help="root written by `extract --format npy` [%(default)s]")
    p.add_argument("--by", choices=("backends", "checkpoints", "sizes", "recipes"), default="backends")
    p.add_argument("--reference", default="torch", help="reference backend for --by backends [%(default)s]")
    p.add_argument("--out", default="outputs/compare", help="report folder [%(default)s]")


COMMANDS = {
    "compare": Command("compare feature trees in float64: Markdown, CSV, PNG", _compare_args, run_compare),
}
