"""ONNX -> plan with the TensorRT-RTX builder, which runs for real on a CPU-only machine; builder options.

What is NOT run here: executing an engine (needs a supported GPU; TensorRT-RTX refuses Hopper) and
full TensorRT 10/11 (not installable here; the same code path is taken wherever `tensorrt` imports).
The engine cache and sidecars are tested in test_artifacts.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lseg_trt import LsegTrtError
from lseg_trt.export import onnx_from_lseg
from lseg_trt.files import atomic_path
from lseg_trt.models import LSeg
from lseg_trt.tensorrt import compat
from lseg_trt.tensorrt.builder import plan_from_onnx, select_flags
from lseg_trt.tensorrt.options import (
    DEFAULT_WORKSPACE,
    MAX_WORKSPACE,
    BuildOptions,
    Profile,
    engine_name,
    parse_shape,
    parse_tactic_sources,
    profile_token,
    tactic_sources_token,
)

try:
    RTX = compat.load("tensorrt-rtx")
except LsegTrtError as e:
    pytest.skip(f"TensorRT-RTX builder not installed: {e}", allow_module_level=True)

SMALL = Profile((1, 3, 64, 64), (1, 3, 128, 128), (2, 3, 256, 256))


@pytest.fixture(scope="module")
def vit_onnx(tiny_vit: LSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_from_lseg(tiny_vit, tmp_path_factory.mktemp("trt"), "fp32", verify=False).path


def test_rtx_is_strongly_typed_and_allows_tf32_by_default() -> None:
    assert not RTX.has_fp16_flag
    config = RTX.module.Builder(RTX.logger()).create_builder_config()
    assert config.get_flag(RTX.builder_flag("TF32"))  # why the builder clears it unless asked


def test_plan_and_flags(vit_onnx: Path, capfd: pytest.CaptureFixture[str]) -> None:
    options = BuildOptions(flavour="tensorrt-rtx", profile=SMALL, fp16=False, tf32=True)
    flags = select_flags(RTX, options, fp16_flag=False)
    assert [f.token for f in flags] == ["tf32", "sparse"]
    plan = plan_from_onnx(RTX, vit_onnx, options, flags, strongly_typed=False)
    assert len(plan.data) > 10_000 and (plan.input_name, plan.output_name) == ("image", "features")
    assert capfd.readouterr().out == ""  # results go to stdout; TensorRT never does


def test_out_of_memory_names_the_flag_and_the_log_goes_to_stderr(
    vit_onnx: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    options = BuildOptions(flavour="tensorrt-rtx", fp16=False, workspace=1 << 20)  # default profile up to 1024
    with pytest.raises(LsegTrtError, match="ran out of memory .* raise --workspace"):
        plan_from_onnx(RTX, vit_onnx, options, [], strongly_typed=False)
    out, err = capfd.readouterr()
    assert out == "" and "[tensorrt-rtx] ERROR" in err and "workspace" in err


def test_flags_the_flavour_lacks_are_skipped_visibly(caplog: pytest.LogCaptureFixture) -> None:
    """TensorRT-RTX makes timing caches no-ops: the option is skipped with a warning, never claimed."""
    options = BuildOptions(sparse=False, disable_timing_cache=True, gpu_fallback=True, debug=True)
    assert [f.token for f in select_flags(RTX, options, fp16_flag=False)] == ["gpuFB", "dbg"]
    assert "skipping --disable-timing-cache" in caplog.text


def test_engine_name_shows_options_and_profile() -> None:
    assert DEFAULT_WORKSPACE == 2 << 30
    assert profile_token(Profile()) == "b1_h256-480-1024_w256-480-1024"
    assert profile_token(SMALL) == "b1-1-2_h64-128-256_w64-128-256"
    name = engine_name("lseg_vit_l16_random_fp32", "fp32", ["tf32", "sparse"], 1 << 31, Profile())
    assert name == "lseg_vit_l16_random_fp32__fp32_tf32_sparse_ws2048MiB_b1_h256-480-1024_w256-480-1024.engine"
    assert engine_name("m", "fp32", [], 1 << 31, SMALL) != engine_name("m", "fp32", [], 1 << 31, Profile())


@pytest.mark.parametrize(
    "options, message",
    [
        (BuildOptions(profile=Profile((1, 3, 256, 256), (1, 3, 128, 128), (1, 3, 512, 512))), "exceeds"),
        (BuildOptions(profile=Profile((1, 3, 64, 64), (1, 3, 128, 128), (1, 3, 500, 500))), "multiples of 32"),
        (BuildOptions(profile=Profile((1, 1, 64, 64), (1, 1, 128, 128), (1, 1, 256, 256))), "3 channels"),
        (BuildOptions(workspace=1000), "below 1 MiB"),
        (BuildOptions(workspace=MAX_WORKSPACE + 1), "above 256 GiB"),
        (BuildOptions(workspace=1 << 70), "above 256 GiB"),
        (BuildOptions(timing_cache=Path("t.cache"), disable_timing_cache=True), "exclude each other"),
    ],
)
def test_bad_options(options: BuildOptions, message: str) -> None:
    with pytest.raises(LsegTrtError, match=message):
        options.validate()


def test_bad_inputs(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(LsegTrtError, match="cannot parse"):
        plan_from_onnx(RTX, corrupt, BuildOptions(), [], strongly_typed=False)
    with pytest.raises(LsegTrtError, match="unknown TensorRT flavour"):
        compat.load("tensorrt-9000")
    with pytest.raises(LsegTrtError, match="parse shape"):
        parse_shape("1x3x480")


def test_atomic_path_leaves_nothing_on_interrupt(tmp_path: Path) -> None:
    target = tmp_path / "model.engine"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half an engine")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_tactic_sources_are_set_named_and_checked(vit_onnx: Path, tmp_path: Path) -> None:
    """TensorRT-RTX has two TacticSource members: the option is built for real, and shows in name and sidecar."""
    from lseg_trt.engines import EngineRecord, engine_for

    assert parse_tactic_sources("none") == () and parse_tactic_sources(" jit_convolutions,CUBLAS ") == (
        "CUBLAS",
        "JIT_CONVOLUTIONS",
    )
    for bad in ("", "none,cudnn", "cub las", "cublas;rm"):
        with pytest.raises(LsegTrtError, match="--tactic-sources"):
            parse_tactic_sources(bad)
    assert tactic_sources_token(()) == "tac-none"
    assert RTX.tactic_source_mask(("JIT_CONVOLUTIONS",)) == 1 << int(RTX.module.TacticSource.JIT_CONVOLUTIONS)
    options = BuildOptions(flavour="tensorrt-rtx", fp16=False, sparse=False, profile=SMALL, tactic_sources=())
    engine = engine_for(vit_onnx, options, tmp_path)
    assert "_tac-none_" in engine.name and EngineRecord.read(engine).request["tactic_sources"] == []
    default = engine_for(
        vit_onnx, BuildOptions(flavour="tensorrt-rtx", fp16=False, sparse=False, profile=SMALL), tmp_path
    )
    assert "tac-" not in default.name and "tactic_sources" not in EngineRecord.read(default).request
    with pytest.raises(
        LsegTrtError, match="CUDNN not in tensorrt-rtx .* known: EDGE_MASK_CONVOLUTIONS, JIT_CONVOLUTIONS"
    ):
        engine_for(vit_onnx, BuildOptions(flavour="tensorrt-rtx", profile=SMALL, tactic_sources=("CUDNN",)), tmp_path)


def test_explicit_batch_is_asked_for_only_where_implicit_batch_exists() -> None:
    """TensorRT 8.x keeps implicit batch (its Builder has `max_batch_size`) and has no strongly typed networks;
    its module cannot load here without a GPU, so a stand-in with 8.5's enum values plays it."""
    from types import SimpleNamespace

    strongly_typed = int(RTX.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert not RTX.has_implicit_batch
    assert RTX.network_flags(False) == 0 and RTX.network_flags(True) == 1 << strongly_typed
    trt85 = compat.TensorRT(
        "tensorrt",
        SimpleNamespace(  # type: ignore[arg-type]
            __version__="8.5.3.1",
            Builder=type("Builder", (), {"max_batch_size": 1}),
            NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1),
            BuilderFlag=SimpleNamespace(FP16=0, TF32=7),
        ),
    )
    assert trt85.has_implicit_batch and trt85.has_fp16_flag
    assert trt85.network_flags(False) == trt85.network_flags(True) == 1  # no strong typing to ask for


def test_operators_the_parser_lacks_are_refused_with_the_opset_hint(vit_onnx: Path) -> None:
    """RTX's parser imports every operator of our models (opset 17 included); TensorRT 8.5's lacks
    LayerNormalization, played here by a parser that says so (the real one needs a GPU to exist)."""
    from lseg_trt.onnx_cache import onnx_info
    from lseg_trt.tensorrt.builder import check_operators

    ops = onnx_info(vit_onnx).op_types
    assert "LayerNormalization" in ops and "Conv" in ops
    network = RTX.module.Builder(RTX.logger()).create_network(RTX.network_flags(False))
    check_operators(RTX, RTX.module.OnnxParser(network, RTX.logger()), ops, vit_onnx.name)  # nothing missing

    class Parser85:
        def supports_operator(self, op: str) -> bool:
            return op != "LayerNormalization"

    with pytest.raises(LsegTrtError, match=r"has no LayerNormalization .*`lseg-trt export --opset 16`"):
        check_operators(RTX, Parser85(), ops, vit_onnx.name)
    check_operators(RTX, Parser85(), ops - {"LayerNormalization"}, vit_onnx.name)
