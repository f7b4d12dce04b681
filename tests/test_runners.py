"""Every backend against torch fp32 on the tiny networks, and the runner contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lseg_trt import LsegTrtError
from lseg_trt.backends import REGISTRY, known_backends, make_runner, parse_backend, parse_backends
from lseg_trt.backends.base import DTYPES, Runner, placed_encoder
from lseg_trt.metrics import compare_features
from lseg_trt.models import LSeg
from lseg_trt.tolerances import TOLERANCES


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        "torch-fp16",
        "torch-bf16",
        pytest.param("torch-compile", marks=pytest.mark.slow),  # an Inductor compile on the CPU (~25 s)
        "torch-fused",  # fp16: the inference rewrite (lseg_trt.models.fused)
        "torch-fused-fp32",
        "onnxruntime",
        "onnxruntime-fp16",
    ],
)
def test_runner_matches_torch_fp32(tiny: LSeg, backend: str, batch: torch.Tensor, tmp_path: Path) -> None:
    spec = parse_backend(backend)
    with torch.inference_mode():
        reference = tiny.image_encoder(batch)
    with make_runner(spec, tiny, "cpu", cache_dir=tmp_path) as runner:
        runner.prepare(tuple(batch.shape))
        out = runner.infer(batch)
    assert out.shape == reference.shape and out.dtype == torch.float32
    metrics = compare_features(out, reference)
    assert TOLERANCES[spec.precision].passes(metrics), metrics


def test_backend_names() -> None:
    assert parse_backend("torch-compile-fp16+graph").name == "torch-compile-fp16+graph"
    fused = parse_backend("torch-compile-fused-bf16+graph")  # the longest registry key wins
    assert (fused.base, fused.precision, fused.cuda_graph) == ("torch-compile-fused", "bf16", True)
    spec = parse_backend("tensorrt")
    assert (spec.base, spec.precision) == ("tensorrt", "fp16")
    assert parse_backend("tensorrt-fp32").name == "tensorrt-fp32"
    for bad in ("pytorch", "torch-fp8", "onnxruntime+graph", "tensorrt-bf16", ""):
        with pytest.raises(LsegTrtError, match="unknown backend"):
            parse_backend(bad)
    assert [s.name for s in parse_backends(" torch, ,onnxruntime,torch")] == ["torch", "onnxruntime"]
    for empty in ("", " , "):
        with pytest.raises(LsegTrtError, match="no backend"):
            parse_backends(empty)
    for name in known_backends():
        assert parse_backend(name).name == name
        assert issubclass(REGISTRY[parse_backend(name).base].runner_class(), Runner)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_placed_encoder_is_a_private_copy(tiny_rn: LSeg, precision: str) -> None:
    """Made without a host copy first, the placed encoder must still share nothing with the source: not on
    the same device in the same dtype either (fp32 on the CPU), where `Tensor.to` would hand back the tensor
    itself."""
    source = tiny_rn.image_encoder
    before = {k: v.clone() for k, v in source.state_dict().items()}
    placed = placed_encoder(source, torch.device("cpu"), precision)
    originals = source.state_dict()
    for name, tensor in placed.state_dict().items():
        original = originals[name]
        assert tensor.data_ptr() != original.data_ptr(), name
        assert tensor.dtype == (DTYPES[precision] if original.is_floating_point() else original.dtype), name
        torch.testing.assert_close(tensor.to(original.dtype), original, rtol=1e-2, atol=1e-2)
    assert any(not t.is_floating_point() for t in placed.state_dict().values())  # BatchNorm's step counters
    assert all(isinstance(p, torch.nn.Parameter) for p in placed.parameters())
    with torch.no_grad():
        for tensor in placed.state_dict().values():
            tensor.zero_()
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, before[name]) and tensor.dtype == before[name].dtype, name


def test_runner_life_cycle(tiny_vit: LSeg) -> None:
    runner = make_runner(parse_backend("torch"), tiny_vit, "cpu")
    with pytest.raises(RuntimeError, match="before activate"):
        runner.infer(torch.zeros(1, 3, 64, 64))
    with pytest.raises(LsegTrtError, match="CUDA graphs need a CUDA device"):
        make_runner(parse_backend("torch+graph"), tiny_vit, "cpu")


def test_tensorrt_runner_checks_without_gpu(tiny_rn: LSeg, tmp_path: Path) -> None:
    """Everything of the engine runner that needs no GPU: engine lookup, sidecar profile, shape checks.
    Executing the engine needs an RTX/Ampere+ GPU; no machine here has one TensorRT-RTX accepts."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX not installed")
    from lseg_trt.backends.tensorrt import TensorRTRunner
    from lseg_trt.tensorrt.options import Profile

    profile = Profile((1, 3, 64, 64), (1, 3, 64, 64), (2, 3, 128, 128))
    runner = make_runner(parse_backend("tensorrt-fp32"), tiny_rn, "cpu", cache_dir=tmp_path, profile=profile)
    assert isinstance(runner, TensorRTRunner) and runner.input_name == "image"
    runner.prepare((2, 3, 128, 96))  # inside the profile: fine
    with pytest.raises(LsegTrtError, match="outside the profile"):
        runner.prepare((1, 3, 256, 256))
    with pytest.raises(LsegTrtError, match="needs an NVIDIA GPU"):
        runner.activate()
    engine = runner.engine_path
    engine.with_suffix(".json").write_text(json.dumps({"broken": True}))
    with pytest.raises(LsegTrtError, match="sidecar"):
        TensorRTRunner(engine, parse_backend("tensorrt-fp32"), "cuda")
    with pytest.raises(LsegTrtError, match="engine not found"):
        TensorRTRunner(tmp_path / "none.engine", parse_backend("tensorrt"), "cuda")


def test_a_run_refuses_a_batch_outside_the_engine_profile_before_touching_files(tiny_rn: LSeg, tmp_path: Path) -> None:
    """A `--devices --force` run opens its folder without running a model: a batch the engine cannot take
    must be refused before `--force` removes the previous results, not in the workers after it."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX not installed")
    from lseg_trt.extraction import FeatureExtractor
    from lseg_trt.extraction.run import RunOptions, layout_for, prepare_run
    from lseg_trt.tensorrt.options import Profile

    profile = Profile((1, 3, 64, 96), (1, 3, 64, 96), (1, 3, 64, 96))
    engine = make_runner(parse_backend("tensorrt-fp32"), tiny_rn, "cpu", cache_dir=tmp_path, profile=profile)
    extractor = FeatureExtractor.open(engine=engine.engine_path, size=(64, 96), batch_size=2, device="cpu")
    earlier = layout_for(extractor, tmp_path / "out", "shards").run_dir / "manifest" / "00000.jsonl"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}\n")
    with pytest.raises(LsegTrtError, match="outside the profile"):
        prepare_run(extractor, [], tmp_path / "out", RunOptions(force=True))
    assert earlier.read_text() == "{}\n"


@pytest.mark.slow
def test_an_fp16_engine_from_weights_is_built_from_the_cached_fp16_model(tiny_rn: LSeg, tmp_path: Path) -> None:
    """TensorRT-RTX is strongly typed: the fp16 model comes from the weights in memory, into the ONNX cache
    that onnxruntime-fp16 shares; nothing is exported beside the engines. (Building runs here; executing
    the engine needs a GPU TensorRT-RTX accepts.)"""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX not installed")
    from lseg_trt.engines import EngineRecord
    from lseg_trt.onnx_cache import onnx_info
    from lseg_trt.tensorrt.options import Profile

    profile = Profile((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64))
    runner = make_runner(parse_backend("tensorrt"), tiny_rn, "cpu", cache_dir=tmp_path, profile=profile)
    record = EngineRecord.read(runner.engine_path)
    (fp16_model,) = (tmp_path / "onnx").glob("*_fp16.onnx")
    assert record.request["precision"] == "fp16" and record.request["onnx"] == fp16_model.name
    assert onnx_info(fp16_model).precision == "fp16"
    assert not list((tmp_path / "engines").glob("*.onnx"))
    assert not list((tmp_path / "onnx").glob("*_fp32.onnx"))  # no fp32 export on the way
