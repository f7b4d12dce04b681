"""The benchmark scripts run end to end on the CPU, so a GPU session (scarce device time) never finds a
script that breaks before it measures anything. Their figures are not checked: they are not tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_fused_work_counts_less_work_for_the_rewrite(tmp_path: Path) -> None:
    run_script("fused_work.py", str(tmp_path), "--no-latency")
    record = json.loads((tmp_path / "fused_work.json").read_text())
    assert record["machine"] and len(record["work"]) == 5
    assert all(0 < row["gflop_removed"] < 0.5 and row["written_removed"] > 0 for row in record["work"])


def test_gpu_speed_runs_its_sections_on_the_cpu(tmp_path: Path) -> None:
    """The sections the next GPU run starts with, on the tiny network: baseline with the rewrite, candidates."""
    out = tmp_path / "out"
    run_script(
        "gpu_speed.py", str(out), "--device", "cpu", "--variant", "tiny_vit", "--quick",
        "--only", "baseline,candidates", "--budget-s", "300", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    record = json.loads((out / "gpu_speed.json").read_text())
    rows = [r for r in record["rows"] if r["section"] in ("baseline", "candidates") and "backend" in r]
    assert {"torch", "torch-compile-fp16", "torch-compile-fused"} <= {r["backend"] for r in rows}
    assert all(r["status"] == "ok" for r in rows), rows


def test_recipes_bench_runs_on_the_cpu(tmp_path: Path) -> None:
    """The GPU command with the tiny network on three recipes: one row each, the batched output agreeing
    with the project's loop on this device, and the machine recorded."""
    run_script(
        "recipes_bench.py", "--out", str(tmp_path), "--variant", "tiny_vit", "--device", "cpu", "--precisions", "fp32",
        "--recipes", "openscene,lseg-minimal,vlmaps", "--frames", "2", "--loop-frames", "1", "--batch", "4",
    )  # fmt: skip
    record = json.loads((tmp_path / "recipes_bench.json").read_text())
    assert record["machine"] and [r["recipe"] for r in record["rows"]] == ["openscene", "lseg-minimal", "vlmaps"]
    for row in record["rows"]:
        assert row["pixel_cosine_min"] >= 0.99999 and row["batched_fps"] > 0 and row["loop_fp32_fps"] > 0, row
        assert 0 < row["network_ms_per_frame"] < 2 * 1000 / row["batched_fps"], row  # the network is within a frame
    assert [r["forwards_per_frame"] for r in record["rows"]] == [2, 1, 2]
    assert "| openscene | 320x240 |" in (tmp_path / "recipes_bench.md").read_text()


def test_recipes_bench_refuses_an_unknown_backend_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recipes_bench.py"), "--out", str(tmp_path / "out"),
         "--fp16-backend", "nonsense"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown backend 'nonsense'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pipeline_and_multi_gpu_benches_run_on_the_cpu(tmp_path: Path) -> None:
    tiny = ("--variant", "tiny_vit", "--size", "64x96", "--batch", "4")
    run_script("pipeline_bench.py", "--device", "cpu", *tiny, "--frames", "8", "--out", str(tmp_path / "p"))
    run_script("multi_gpu_bench.py", *tiny, "--frames", "16", "--out", str(tmp_path / "m"))
    assert json.loads((tmp_path / "p" / "pipeline.json").read_text())["device_only_images_per_s"] > 0
    multi = json.loads((tmp_path / "m" / "multi_gpu.json").read_text())
    assert multi["many"]["images"] == multi["one"]["images"] == 16
    assert multi["first_run"]["images"] == 2 * 4  # one batch per device warms each device's cache first
    assert multi["many"]["worker_startup_s"] and multi["efficiency_data_path"] > 0
    for arm in ("one", "many"):  # where each worker's time went, and what the disk still had to do before
        assert sum(s["commit"] for s in multi[arm]["worker_stages_s"].values()) > 0 and multi[arm]["sync_before_s"] >= 0


def test_fp8_linears_quantise_like_e4m3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp8 candidate's arithmetic, on the CPU (`torch._scaled_mm` runs there too): the product keeps
    e4m3's precision (3 significand bits: a few per cent), no more and no less, and every ViT linear layer
    is swapped. A lost or inverted scale moves the error far outside that band (0.97 with scales of 1);
    bf16 operands would stay below it (0.003)."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from fp8_linears import Fp8Linear, to_fp8_linears

    from lseg_trt.models import load_lseg

    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(3, 7, 64, generator=generator, dtype=torch.float64)
    x[0, 0] *= 1e4  # an outlier token, far past e4m3's 448
    with torch.no_grad():
        exact = torch.nn.functional.linear(x, linear.weight.double(), linear.bias.double())
        fp8 = Fp8Linear(linear)
        got = fp8(x.to(torch.bfloat16)).double()
    error = ((got - exact).norm(dim=-1) / exact.norm(dim=-1)).flatten()
    assert fp8.weight.dtype == torch.float8_e4m3fn
    assert got.shape == exact.shape and bool(torch.isfinite(got).all())
    assert 0.01 < float(error.max()) < 0.08, error

    encoder = load_lseg("random", variant="tiny_vit").image_encoder.to(torch.bfloat16)
    linears = sum(type(m) is torch.nn.Linear for m in encoder.modules())
    assert to_fp8_linears(encoder) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in encoder.modules())


@pytest.mark.slow
def test_oversubscription_bench_times_each_layout(tmp_path: Path) -> None:
    run_script("oversubscription.py", str(tmp_path), "--variant", "tiny_vit")
    record = json.loads((tmp_path / "oversubscription.json").read_text())
    assert [len(seconds) for seconds in record["load_seconds"].values()] == [1, 2, 2]
    assert all(s > 0 for seconds in record["load_seconds"].values() for s in seconds) and record["machine"]


@pytest.mark.slow  # two Inductor compiles on the CPU (~50 s)
def test_regional_compile_bench_times_both_modes_cold_and_warm(tmp_path: Path) -> None:
    run_script(
        "regional_compile.py",
        str(tmp_path),
        "--variant",
        "tiny_vit",
        "--size",
        "64x64",
        "--batch",
        "2",
        "--iterations",
        "2",
    )
    record = json.loads((tmp_path / "regional_compile.json").read_text())
    caches = ("cold", "warm", "warm, no pool")
    assert [(r["mode"], r["cache"]) for r in record["rows"]] == [(m, c) for m in ("whole", "regional") for c in caches]
    assert record["shape"] == [2, 3, 64, 64]
    assert all(r["first_call_s"] > 0 and r["median_ms"] > 0 for r in record["rows"])


def test_listing_bench_lists_every_frame(tmp_path: Path) -> None:
    run_script("listing_bench.py", str(tmp_path), "--frames", "1500", "--repeats", "1")
    record = json.loads((tmp_path / "listing.json").read_text())
    assert record["frames"] == 1500 and len(record["seconds"]) == 1 and record["seconds"][0] > 0


@pytest.mark.slow
def test_demo_screenshot_on_the_tiny_network(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'lseg-trt[demo]')")
    pytest.importorskip("playwright", reason="playwright not installed (the dev extra has it)")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    run_script("demo_screenshot.py", "--variant", "tiny_vit", "--out", str(tmp_path / "demo.png"))
    assert Image.open(tmp_path / "demo.png").size[0] == 1280


def test_store_integrity_bench_resumes_an_unchanged_run(tmp_path: Path) -> None:
    run_script("store_integrity_bench.py", str(tmp_path), "--frames", "300", "--shard-size", "16", "--repeats", "1")
    record = json.loads((tmp_path / "store_integrity.json").read_text())
    assert record["resume"]["shards"] == 19 and record["resume"]["check_s"][0] > 0
    assert {r["format"] for r in record["per_frame"]} == {"JPEG", "PNG"} and record["per_tensor"]["xxh3-128_ms"] > 0


@pytest.mark.slow  # fresh processes, each importing torch: about a minute on 2 cores
def test_fixed_cost_times_every_stage_of_two_trees(tmp_path: Path, tiny_vit_ckpt: Path) -> None:
    out = tmp_path / "out"
    run_script(
        "fixed_cost.py", str(out), "--weights", str(tiny_vit_ckpt), "--variant", "tiny_vit", "--tree", f"a={ROOT}",
        "--tree", f"b={ROOT / 'src'}", "--conditions", "image", "--repeats", "1", "--frames", "4", "--size", "64x96",
        "--device", "cpu", "--backend", "torch", "--commands", "extract", "--scratch", str(tmp_path / "scratch"),
    )  # fmt: skip
    record = json.loads((out / "fixed_cost.json").read_text())
    assert set(record["results"]) == {"a (image)", "b (image)"}
    for result in record["results"].values():
        (stages,) = result["stages"]
        assert stages["stages"]["exit after last write"] >= 0 and stages["stages"]["whole process"] > 0
        (commands,) = result["commands"]
        assert commands["extract --pool 4 (4 frames)"]["run_phase_s"] is not None


def test_trt85_summary_pairs_speed_and_fidelity_per_engine(tmp_path: Path) -> None:
    """A recorded run (2026-12-08, one RN101-ZS engine) with a second fp16 engine of another profile added the way
    bench and fidelity record it, and the verdict `fidelity --engine` leaves among the sidecars: one row per
    engine, each beside its own fidelity, and one build row per engine."""
    run = tmp_path / "run"
    shutil.copytree(ROOT / "benchmarks/results/h100-2026-12-08/trt85", run)
    first = next((run / "engines").glob("*.json"))
    second = first.name.replace("_b1-1-8_", "_b1_")
    sidecar = json.loads(first.read_text())
    (run / "engines" / second).write_text(json.dumps(sidecar | {"build_seconds": 7.0}))
    (run / "engines" / f"{first.stem}.fidelity.json").write_text(json.dumps({"passed": True, "worst": {}}))
    bench = json.loads((run / "bench-rn101-b1/bench.json").read_text())
    engine_rows = [r for r in bench["rows"] if r["backend"] == "tensorrt+graph"]
    for r in engine_rows:
        r["engine"] = first.with_suffix(".engine").name
    bench["rows"] += [r | {"engine": Path(second).with_suffix(".engine").name, "median_ms": 9.5} for r in engine_rows]
    (run / "bench-rn101-b1/bench.json").write_text(json.dumps(bench))
    fidelity = json.loads((run / "fidelity-rn101-fp16/fidelity.json").read_text())
    trt = [c for c in fidelity["comparisons"] if c["candidate"] == "tensorrt"]
    for c in trt:
        c["engine"] = first.with_suffix(".engine").name
    fidelity["comparisons"] += [c | {"engine": Path(second).with_suffix(".engine").name, "pixel_cosine_min": 0.5}
                                for c in trt]  # fmt: skip
    (run / "fidelity-rn101-fp16/fidelity.json").write_text(json.dumps(fidelity))

    run_script("trt85/summarize.py", str(run))
    lines = (run / "summary.md").read_text().splitlines()
    rows = [line for line in lines if "| tensorrt+graph `" in line and "| 480x480 |" in line]
    assert len(rows) == 2
    assert "_b1-1-8_" in rows[0] and "| 1.774 |" in rows[0] and "| 0.99951 |" in rows[0]
    assert "_b1_h256" in rows[1] and "| 9.500 |" in rows[1] and "| 0.50000 |" in rows[1]
    builds = [line for line in lines if line.startswith("| `lseg_rn101")]
    assert len(builds) == 2 and not any("fidelity" in line for line in builds)
