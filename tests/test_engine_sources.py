"""Engines as model sources of `bench` and `fidelity`, TF32 engines as their own backend, and the opset the
ONNX cache exports for a TensorRT parser. Engines are built for real with TensorRT-RTX on the CPU; running
them needs a GPU, so here they end as the `n/a` row or the one-line error a GPU-less machine gets. `bench
--engine` ran on the H100 with TensorRT 8.5.3.1 through `benchmarks/trt85/run.sh`
(benchmarks/results/h100-2026-12-07-trt85/); `fidelity --engine` has not run on a GPU yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lseg_trt import LsegTrtError
from lseg_trt.artifacts import open_model
from lseg_trt.backends import backend_for
from lseg_trt.compare import precision_of
from lseg_trt.export import onnx_from_lseg
from lseg_trt.models import LSeg, random_lseg
from lseg_trt.onnx_cache import onnx_for, onnx_info
from lseg_trt.tensorrt.options import BuildOptions, Profile
from lseg_trt.tolerances import TOLERANCES

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed")

SMALL = Profile((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 128, 128))


@pytest.fixture(scope="module")
def tf32_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lseg_trt.engines import engine_for

    lseg = random_lseg("tiny_vit")  # the `--weights random --variant tiny_vit` network, bit for bit
    folder = tmp_path_factory.mktemp("engines")
    onnx = onnx_from_lseg(lseg, folder, "fp32", verify=False).path
    options = BuildOptions(flavour="tensorrt-rtx", fp16=False, tf32=True, sparse=False, profile=SMALL)
    return engine_for(onnx, options, folder)


def test_a_tf32_engine_is_judged_as_tf32_not_strict_fp32(tf32_engine: Path) -> None:
    source = open_model(engine=str(tf32_engine))
    assert source.info.precision == "tf32" and backend_for(source).name == "tensorrt-tf32"
    assert precision_of("tensorrt-tf32+graph") == "tf32" and TOLERANCES["tf32"] == TOLERANCES["fp16"]
    with pytest.raises(LsegTrtError, match="asks for fp32, but .* is an tf32 model"):
        backend_for(source, "tensorrt-fp32")


def test_bench_times_an_engine_alone(cli, tf32_engine: Path, tmp_path: Path) -> None:  # noqa: ANN001
    result = cli("bench", "--engine", tf32_engine, "--sizes", "64", "--device", "cpu", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["variant"], r["backend"]) for r in rows] == [("tiny_vit", "tensorrt-tf32")]  # no random weights
    assert "needs an NVIDIA GPU" in rows[0]["status"]


def test_bench_tells_two_engines_of_one_backend_apart(cli, tf32_engine: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Two engines of one precision (here two profiles) are one backend name: each row names its engine file,
    and the report's columns spell the build options where the name alone would merge them."""
    from lseg_trt.engines import engine_for

    onnx = next(tf32_engine.parent.glob("*.onnx"))
    batch2 = Profile(SMALL.min, SMALL.opt, (2, 3, 128, 128))
    options = BuildOptions(flavour="tensorrt-rtx", fp16=False, tf32=True, sparse=False, profile=batch2)
    second = engine_for(onnx, options, tf32_engine.parent)
    result = cli("bench", "--engine", tf32_engine, "--engine", second, "--sizes", "64", "--device", "cpu",
                 "--out", tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["backend"], r["engine"]) for r in rows] == [("tensorrt-tf32", e.name) for e in (tf32_engine, second)]
    header = next(line for line in (tmp_path / "bench.md").read_text().splitlines() if line.startswith("| Size |"))
    assert "_b1_h64-64-128_w64-64-128] ms" in header and "_b1-1-2_h64-64-128_w64-64-128] ms" in header


def test_fidelity_pairs_an_engine_with_its_own_weights(cli, tf32_engine: Path, tmp_path: Path) -> None:  # noqa: ANN001
    other = cli("fidelity", "--weights", "random", "--variant", "tiny_rn", "--engine", tf32_engine,
                "--device", "cpu", "--out", tmp_path / "a")  # fmt: skip
    assert other.returncode == 2 and "built from none of the weights given" in other.stderr
    assert not (tmp_path / "a").exists()  # refused before any work
    own = cli("fidelity", "--weights", "random", "--variant", "tiny_vit", "--engine", tf32_engine,
              "--sizes", "64", "--device", "cpu", "--out", tmp_path / "b")  # fmt: skip
    assert own.returncode == 2 and "tensorrt-tf32: tensorrt-tf32: running a TensorRT engine needs" in own.stderr


def test_the_onnx_cache_exports_at_the_opset_a_parser_takes(tiny_vit: LSeg, tmp_path: Path) -> None:
    """TensorRT 8.x parses nothing past opset 16 (no LayerNormalization): an opset-17 export in the cache is
    redone at 16 for it, and an opset-16 one serves every later request (it runs wherever 17 does)."""
    newest = onnx_for(tiny_vit, "fp32", tmp_path)
    assert onnx_info(newest).opset == 17 and "LayerNormalization" in onnx_info(newest).op_types
    older = onnx_for(tiny_vit, "fp32", tmp_path, opset=16)
    assert older == newest and onnx_info(older).opset == 16
    assert "LayerNormalization" not in onnx_info(older).op_types
    stamp = older.stat().st_mtime_ns
    assert onnx_for(tiny_vit, "fp32", tmp_path).stat().st_mtime_ns == stamp  # reused, not exported again
