"""Merge the JSON of several `lseg-trt bench` runs into one result set (JSON, CSV-free MD, PNG).

Usage: python benchmarks/combine_results.py OUT_STEM MAIN.json [MORE.json ...]
Rows measured on the CPU beside GPU rows are labelled `<backend>@cpu`. The first file's machine record and
bf16 GEMM ceiling head the report; every part's command and ceiling are kept in the JSON under `parts`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from lseg_trt.bench import BenchRow, rows_to_dicts, summarize
from lseg_trt.bench_report import markdown, plot


def main(out_stem: str, paths: list[str]) -> None:
    parts = [json.loads(Path(p).read_text()) for p in paths]
    known = {f.name for f in fields(BenchRow)}  # results before 2026-12-08 carry an always-empty `note`
    rows = [BenchRow(**{k: v for k, v in r.items() if k in known}) for part in parts for r in part["rows"]]
    gpu_run = any(r.device.startswith("cuda") for r in rows)
    for r in rows:
        if gpu_run and r.device == "cpu":
            r.backend += "@cpu"  # reference rows from the same machine's CPU
    ceiling = parts[0]["matmul_ceiling_bf16"]
    commands = "`; `".join(p["command"] for p in parts)
    out = Path(out_stem)
    record = {
        "machine": parts[0]["machine"],
        "matmul_ceiling_bf16": ceiling,
        "parts": [{k: p[k] for k in ("command", "settings", "matmul_ceiling_bf16")} for p in parts],
        "summary": summarize(rows, ceiling["tflops"] if ceiling else None),
        "rows": rows_to_dicts(rows),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, parts[0]["machine"], commands, ceiling))
    plot([r for r in rows if r.device.startswith("cuda")], out.with_suffix(".png"))
    print(f"wrote {out}.{{json,md,png}}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
