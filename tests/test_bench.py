"""Benchmark rows and result files (formats, not speed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lseg_trt import hwinfo
from lseg_trt.backends import parse_backend
from lseg_trt.bench import BenchRow, BenchSettings, bench, column_labels, forward_flops
from lseg_trt.bench_report import write_results
from lseg_trt.models import LSeg


@pytest.fixture(scope="module")
def rows(tiny_vit: LSeg, tiny_rn: LSeg, tmp_path_factory: pytest.TempPathFactory) -> list:
    settings = BenchSettings(
        sizes=((64, 64), (64, 96)), iterations=3, warmup=1, cache_dir=str(tmp_path_factory.mktemp("cache"))
    )
    specs = [parse_backend(b) for b in ("torch", "onnxruntime", "torch-fp16+graph")]
    return bench([tiny_vit, tiny_rn], specs, settings)


def test_rows_cover_every_combination(rows: list) -> None:
    assert len(rows) == 2 * 3 * 2
    ok = [r for r in rows if r.status == "ok"]
    assert {r.backend for r in ok} == {"torch", "onnxruntime"}
    for r in ok:
        assert r.iterations == 3 and 0 < r.min_ms <= r.median_ms <= r.p99_ms
        assert r.gflops > 0 and r.tflops_achieved > 0 and not r.includes_copies
    unavailable = [r for r in rows if r.backend == "torch-fp16+graph"]
    assert all(r.status.startswith("unavailable: ") and "CUDA" in r.status for r in unavailable)


def test_flop_count_scales_with_pixels() -> None:
    small, large = forward_flops("tiny_rn", 1, 64, 64), forward_flops("tiny_rn", 1, 128, 128)
    assert small > 0 and 3.5 < large / small < 4.5
    assert forward_flops("tiny_rn", 2, 64, 64) == 2 * small


def test_result_files(rows: list, tmp_path: Path) -> None:
    paths = write_results(rows, tmp_path, hwinfo.collect(), "lseg-trt bench --test", {"iterations": 3})
    assert [p.suffix for p in paths] == [".md", ".csv", ".json", ".png"]
    record = json.loads(paths.report.json.read_text())
    assert record["command"] == "lseg-trt bench --test" and record["machine"]["cpu_cores"] >= 1
    assert len(record["rows"]) == len(rows) and record["summary"]
    with open(paths.report.csv) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and {"backend", "median_ms", "p99_ms", "status"} <= set(table[0])
    md = paths.report.markdown.read_text()
    assert "| Size | torch ms | onnxruntime ms | torch-fp16+graph ms |" in md
    assert "| 64x96 |" in md and "n/a" in md and "## Machine" in md
    assert paths.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_reports_bad_input(cli, tmp_path: Path) -> None:  # noqa: ANN001 - the conftest fixture
    def run(*args: str):  # noqa: ANN202
        return cli("bench", "--out", tmp_path, *args)

    result = run("--variants", "tiny_rn", "--backends", "torch,warp-drive")
    assert result.returncode == 2 and "unknown backend" in result.stderr
    result = run("--variants", "tiny_rn", "--sizes", "100")
    assert result.returncode == 2 and "nearest: 96 or 128" in result.stderr
    result = run("--variants", "tiny_rn", "--sizes", "64", "--backends", "torch", "--iterations", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bench.md").is_file() and "| 64x64 |" in result.stdout


def test_nan_weights_are_timed_but_reported(cli, tiny_rn: LSeg, tmp_path: Path) -> None:  # noqa: ANN001
    """Latency of a broken network is real, but the row and the exit code must say its features are not finite."""
    import copy

    import torch

    from lseg_trt.models.synthetic import save_lightning_checkpoint

    broken = copy.deepcopy(tiny_rn)
    with torch.no_grad():
        broken.image_encoder.scratch.head1.weight.fill_(float("nan"))
    ckpt = save_lightning_checkpoint(broken, tmp_path / "nan.ckpt")
    result = cli("bench", "--weights", ckpt, "--sizes", "64", "--backends", "torch", "--iterations", "2",
                 "--warmup", "0", "--out", tmp_path / "out")  # fmt: skip
    assert result.returncode == 1 and "NaN or Inf" in result.stderr
    record = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [r["status"] for r in record["rows"]] == ["nonfinite"] and record["rows"][0]["median_ms"] > 0
    assert "| NaN |" in (tmp_path / "out" / "bench.md").read_text()


def test_columns_keep_apart_what_ran_under_one_backend_name() -> None:
    """A backend name holds one column unless its rows ran different engines: then each given engine is labelled
    with the options its file name spells, or its whole name where those agree or are absent."""

    def row(backend: str, engine: str = "") -> BenchRow:
        return BenchRow("vit_l16", "random", backend, 480, 480, 1, engine=engine)

    a = "lseg_vit_l16_random_fp32__fp16_sparse_ws2048MiB_b1_h480_w480.engine"
    b = "lseg_vit_l16_random_fp32__fp16_sparse_ws2048MiB_b1-1-8_h480_w480.engine"
    same_options = "lseg_vit_l16_other_fp32__fp16_sparse_ws2048MiB_b1_h480_w480.engine"
    assert column_labels([row("torch"), row("tensorrt+graph", a)]) == ["torch", "tensorrt+graph"]
    assert column_labels([row("tensorrt+graph", a), row("tensorrt+graph", b)]) == [
        "tensorrt+graph [fp16_sparse_ws2048MiB_b1_h480_w480]",
        "tensorrt+graph [fp16_sparse_ws2048MiB_b1-1-8_h480_w480]",
    ]
    built_here_and_given = column_labels([row("tensorrt+graph"), row("tensorrt+graph", a)])
    assert built_here_and_given == ["tensorrt+graph", "tensorrt+graph [fp16_sparse_ws2048MiB_b1_h480_w480]"]
    assert column_labels([row("tensorrt", a), row("tensorrt", same_options), row("tensorrt", "x.engine")]) == [
        f"tensorrt [{a}]",
        f"tensorrt [{same_options}]",
        "tensorrt [x.engine]",
    ]
