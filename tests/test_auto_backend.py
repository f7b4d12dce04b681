"""`--backend auto`: the choice and its reason. Engines are built for real with TensorRT-RTX (its builder runs
on the CPU, where the GPU target it records is "none", as `gpu_target()` reads here), so the engine rule is
exercised end to end up to running the engine, which needs a GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lseg_trt.artifacts import ModelSource, open_model
from lseg_trt.backends.auto import GPU_TORCH, choose, verified_engine
from lseg_trt.engines import EngineRecord, fidelity_path, record_fidelity
from lseg_trt.export import onnx_from_lseg
from lseg_trt.models import random_lseg
from lseg_trt.tensorrt.options import BuildOptions, Profile

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed")

SHAPES = [(2, 3, 64, 96), (1, 3, 64, 96)]  # a batch and the one-frame path


@pytest.fixture(scope="module")
def weights() -> ModelSource:
    return ModelSource.from_lseg(random_lseg("tiny_vit"))


@pytest.fixture(scope="module")
def engines(weights: ModelSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp16 and fp32 engines of the weights, side by side in one cache folder, not yet verified."""
    from lseg_trt.engines import engine_for

    folder = tmp_path_factory.mktemp("cache") / "engines"
    onnx = onnx_from_lseg(weights.lseg, folder.parent, "fp32", verify=False).path
    profile = Profile((1, 3, 64, 64), (1, 3, 64, 96), (2, 3, 128, 128))
    for fp16 in (True, False):
        engine_for(onnx, BuildOptions(flavour="tensorrt-rtx", fp16=fp16, sparse=False, profile=profile), folder)
    return folder


def _verify(engine: Path, passed: bool = True) -> None:
    record_fidelity(engine, EngineRecord.read(engine), passed, ["64x96"], {})


def test_on_the_cpu_auto_is_onnxruntime(weights: ModelSource) -> None:
    choice = choose(weights, "cpu", SHAPES, "unused")
    assert choice.backend == "onnxruntime" and "CPU cores" in choice.reason


def test_model_files_keep_their_backend(engines: Path) -> None:
    engine = open_model(engine=str(next(engines.glob("*.engine"))))
    assert choose(engine, "cuda", SHAPES, engines.parent).backend == "tensorrt"


def test_on_a_gpu_only_a_verified_engine_of_these_weights_replaces_torch_compile(
    weights: ModelSource, engines: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(engines.parent, cache)
    folder = cache / "engines"
    fp16, fp32 = sorted(folder.glob("*__fp16_*.engine")), sorted(folder.glob("*__fp32_*.engine"))
    assert len(fp16) == len(fp32) == 1
    assert choose(weights, "cuda", SHAPES, cache).backend == GPU_TORCH  # built, never checked
    _verify(fp32[0])
    assert choose(weights, "cuda", SHAPES, cache).backend == "tensorrt-fp32+graph"
    _verify(fp16[0])
    choice = choose(weights, "cuda", SHAPES, cache)
    assert choice.backend == "tensorrt+graph" and choice.source.path == fp16[0] and "passed" in choice.reason
    assert verified_engine(weights, [(4, 3, 64, 96)], folder) is None  # batch 4 is outside the profile
    other = ModelSource.from_lseg(random_lseg("tiny_vit", seed=1))
    assert verified_engine(other, SHAPES, folder) is None  # other weights, same variant and file names
    _verify(fp16[0], passed=False)
    assert choose(weights, "cuda", SHAPES, cache).source.path == fp32[0]
    fidelity_path(fp32[0]).write_text("{not json")
    assert choose(weights, "cuda", SHAPES, cache).backend == GPU_TORCH
    _verify(fp32[0])
    fp32[0].write_bytes(fp32[0].read_bytes() + b"x")  # not the engine its sidecar or its verdict records
    assert verified_engine(weights, SHAPES, folder) is None


def test_extract_without_a_backend_runs_auto_and_says_why(cli, tmp_path: Path) -> None:  # noqa: ANN001
    import json

    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.new("RGB", (96, 64), (40 * i, 90, 200)).save(frames / f"{i}.png")
    result = cli("extract", "--weights", "random", "--variant", "tiny_vit", "--images", frames, "--sizes", "64x96",
                 "--device", "cpu", "--cache", tmp_path / "cache", "--out", tmp_path / "out")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("backend: onnxruntime (onnxruntime: 1.3-1.9x torch on CPU cores")
    (settings,) = (tmp_path / "out").glob("*/*/*/*.run/run.json")
    recorded = json.loads(settings.read_text())
    assert recorded["backend"] == "onnxruntime" and recorded["backend_reason"].startswith("onnxruntime: 1.3-1.9x")
    given = cli("extract", "--weights", "random", "--variant", "tiny_vit", "--backend", "torch", "--images", frames,
                "--sizes", "64x96", "--device", "cpu", "--out", tmp_path / "out2")  # fmt: skip
    assert given.returncode == 0 and given.stdout.startswith("backend: torch (given)")
