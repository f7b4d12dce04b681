"""Benchmark result files: JSON (everything), CSV (one row per measurement), Markdown, PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lseg_trt.bench import BenchRow, column_labels, rows_to_dicts, summarize
from lseg_trt.hwinfo import to_markdown
from lseg_trt.reports import ReportPaths, write_report


def _cell(row: BenchRow | None) -> str:
    if row is None:
        return "-"
    if row.status == "ok":
        return f"{row.mean_ms:.2f} ± {row.std_ms:.2f}"
    return {"oom": "OOM", "nonfinite": "NaN"}.get(row.status, "n/a")


def markdown(rows: list[BenchRow], hw: dict[str, Any], command: str, ceiling: dict[str, float] | None) -> str:
    """Tables like the seed's (Size | backend ms ± std | ...) per model, then the summary and the machine."""
    labelled = list(zip(column_labels(rows), rows, strict=True))
    backends = list(dict.fromkeys(label for label, _ in labelled))
    copies = (
        "host<->device copies included" if rows and rows[0].includes_copies else "device compute only, no host copies"
    )
    parts = [f"# lseg-trt bench\n\nCommand: `{command}`\n\nLatency in ms, mean ± std ({copies}); "
             "n/a = backend unavailable (reason below), OOM = out of memory, NaN = timed, but the features "
             "are not finite.\n"]  # fmt: skip
    for model in dict.fromkeys((r.variant, r.weights) for r in rows):
        parts.append(f"\n## {model[0]} / {model[1]}\n")
        parts.append("| Size | " + " | ".join(f"{b} ms" for b in backends) + " |")
        parts.append("|---" * (len(backends) + 1) + "|")
        for size in dict.fromkeys(r.size for r in rows if (r.variant, r.weights) == model):
            cells = []
            for b in backends:
                match = [r for label, r in labelled if (r.variant, r.weights, r.size, label) == (*model, size, b)]
                cells.append(_cell(match[0] if match else None))
            parts.append(f"| {size} | " + " | ".join(cells) + " |")
    summary = summarize(rows, ceiling["tflops"] if ceiling else None)
    if summary:
        parts.append("\n## Fastest backend per size\n")
        parts.append("| model | size | fastest | median ms | × torch fp32 | TFLOP/s | share of bf16 GEMM ceiling |")
        parts.append("|---|---|---|---|---|---|---|")
        for s in summary:
            speedup = f"{s['speedup_vs_torch_fp32']:.1f}×" if s["speedup_vs_torch_fp32"] else "-"
            share = f"{100 * s['share_of_bf16_ceiling']:.0f} %" if s["share_of_bf16_ceiling"] else "-"
            parts.append(
                f"| {s['variant']} / {s['weights']} | {s['size']} | {s['fastest']} | {s['median_ms']:.2f} | "
                f"{speedup} | {s['tflops']:.1f} | {share} |"
            )
    if ceiling:
        parts.append(
            f"\nbf16 GEMM ceiling ({ceiling['n']}³): {ceiling['tflops']:.0f} TFLOP/s ({ceiling['ms']:.3f} ms)."
        )
    reasons = {(label, r.status) for label, r in labelled if r.status not in ("ok", "oom")}
    if reasons:
        parts.append("\n## Not measured\n")
        parts += [f"- `{b}`: {status}" for b, status in sorted(reasons)]
    parts.append("\n## Machine\n\n" + to_markdown(hw) + "\n")
    return "\n".join(parts)


def plot(rows: list[BenchRow], path: Path) -> None:
    """Median latency vs pixels per backend, log-log, one panel per model."""
    from lseg_trt.figures import pyplot, save_figure

    plt = pyplot()
    models = list(dict.fromkeys((r.variant, r.weights) for r in rows))
    labelled = list(zip(column_labels(rows), rows, strict=True))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for backend in dict.fromkeys(name for name, _ in labelled):
            ok = [r for name, r in labelled if name == backend and (r.variant, r.weights) == model and r.status == "ok"]
            if ok:
                ax.plot([r.height * r.width for r in ok], [r.median_ms for r in ok], marker="o", label=backend)
        ax.set(
            xscale="log",
            yscale="log",
            title=f"{model[0]} / {model[1]}",
            xlabel="input pixels (H×W)",
            ylabel="median latency (ms)",
        )
        sizes = sorted(
            {(r.height, r.width) for r in rows if (r.variant, r.weights) == model}, key=lambda s: s[0] * s[1]
        )
        ax.set_xticks([h * w for h, w in sizes], [f"{h}x{w}" for h, w in sizes], rotation=45, fontsize=8)
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@dataclass(frozen=True)
class BenchPaths:
    report: ReportPaths
    plot: Path

    def __iter__(self):  # noqa: ANN204 - every file, for printing
        return iter((*self.report, self.plot))


def write_results(
    rows: list[BenchRow], out_dir: str | Path, hw: dict[str, Any], command: str, settings: dict[str, Any],
    ceiling: dict[str, float] | None = None, stem: str = "bench",
) -> BenchPaths:  # fmt: skip
    """Write `<stem>.md`, `.csv`, `.json` and `.png` into `out_dir`."""
    out_dir = Path(out_dir)
    record = {
        "command": command,
        "settings": settings,
        "machine": hw,
        "matmul_ceiling_bf16": ceiling,
        "summary": summarize(rows, ceiling["tflops"] if ceiling else None),
    }
    report = write_report(out_dir, stem, markdown(rows, hw, command, ceiling), rows_to_dicts(rows), record)
    plot_path = out_dir / f"{stem}.png"
    plot(rows, plot_path)
    return BenchPaths(report, plot_path)
