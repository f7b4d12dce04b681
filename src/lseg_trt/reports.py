"""Report files shared by bench, compare and fidelity: Markdown for people, CSV for spreadsheets,
JSON with everything; each written atomically, returned by name."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lseg_trt.files import atomic_path, write_json


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    csv: Path
    json: Path

    def __iter__(self):  # noqa: ANN204 - iterate like a tuple of paths, for printing
        return iter((self.markdown, self.csv, self.json))


def write_result(out_dir: Path, stem: str, record: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """`<stem>.json` and `<stem>.md` of one benchmark script's run (atomically); returns both paths."""
    paths = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json(paths[0], record)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown)
    return paths


def write_report(
    out_dir: Path, stem: str, markdown: str, rows: list[dict[str, Any]], record: dict[str, Any], rows_key: str = "rows"
) -> ReportPaths:
    """`<stem>.md` (the given text), `<stem>.csv` (one line per row) and `<stem>.json` (`record` plus
    the rows under `rows_key`)."""
    paths = ReportPaths(*(out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")))
    with atomic_path(paths.markdown) as tmp:
        tmp.write_text(markdown)
    with atomic_path(paths.csv) as tmp, open(tmp, "w", newline="") as f:
        fields = list(dict.fromkeys(k for row in rows for k in row)) or ["empty"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    write_json(paths.json, {**record, rows_key: rows})
    return paths
