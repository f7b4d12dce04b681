"""ONNX -> plan with the TensorRT-RTX builder, which runs for real on a CPU-only machine; builder options.

What is NOT run here: executing an engine (needs a supported GPU; TensorRT-RTX refuses Hopper) and
building with full TensorRT (8.x, 10.x, 11.x: their Builder needs CUDA). Stand-in modules play those
generations with the API facts read off the registry's real wheels on a machine without a GPU
(8.5.3.1, 8.6.0 and 8.6.1, 10.0.1, 10.16.1.11, 11.0.0.114, 11.4.0.106): which names exist, enum values,
and what `Builder(logger)` does without a GPU. The engine cache and sidecars are tested in test_artifacts.py.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType, SimpleNamespace

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
    names_token,
    parse_enum_names,
    parse_shape,
    profile_token,
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
    assert not RTX.has_fp16_flag and not RTX.has_implicit_batch
    strongly_typed = int(RTX.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert RTX.network_flags(False) == 0 and RTX.network_flags(True) == 1 << strongly_typed
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

    assert parse_enum_names("--tactic-sources", "none") == () and parse_enum_names(
        "--tactic-sources", " jit_convolutions,CUBLAS "
    ) == (
        "CUBLAS",
        "JIT_CONVOLUTIONS",
    )
    for bad in ("", "none,cudnn", "cub las", "cublas;rm"):
        with pytest.raises(LsegTrtError, match="--tactic-sources"):
            parse_enum_names("--tactic-sources", bad)
    assert names_token("tac", ()) == "tac-none"
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


def test_preview_features_are_set_named_and_checked(vit_onnx: Path, tmp_path: Path) -> None:
    """TensorRT-RTX's PreviewFeature members are not 8.5's, but the option's path is the same: built for real,
    named, recorded, and a name the flavour lacks is refused before anything is built, listing what it has."""
    from lseg_trt.engines import EngineRecord, engine_for

    assert parse_enum_names("--preview-features", "faster_dynamic_shapes_0805") == ("FASTER_DYNAMIC_SHAPES_0805",)
    options = BuildOptions(
        flavour="tensorrt-rtx", fp16=False, sparse=False, profile=SMALL, preview_features=("ALIASED_PLUGIN_IO_10_03",)
    )
    engine = engine_for(vit_onnx, options, tmp_path)
    assert "_pv-aliasedpluginio1003_" in engine.name
    assert replace(options, preview_features=("aliased_plugin_io_10_03",) * 2) == options  # one choice, one name
    assert EngineRecord.read(engine).request["preview_features"] == ["ALIASED_PLUGIN_IO_10_03"]
    with pytest.raises(
        LsegTrtError,
        match="--preview-features: FASTER_DYNAMIC_SHAPES_0805 not in tensorrt-rtx .*"
        "known: ALIASED_PLUGIN_IO_10_03, RUNTIME_ACTIVATION_RESIZE_10_10",
    ):
        engine_for(vit_onnx, replace(options, preview_features=("FASTER_DYNAMIC_SHAPES_0805",)), tmp_path)
    with pytest.raises(LsegTrtError, match="NOPE not in"):  # refused before RTX's fp16 model is exported for it
        engine_for(vit_onnx, replace(options, fp16=True, preview_features=("NOPE",)), tmp_path)
    assert [p.name for p in tmp_path.glob("*.engine")] == [engine.name] and not list(tmp_path.glob("*fp16*.onnx"))


def enum(**members: int) -> SimpleNamespace:
    """A stand-in for a pybind11 enum: its members as attributes and in `__members__`."""
    return SimpleNamespace(__members__=members, **members)


# What each generation's bindings hold, as read off the registry's wheels (8.6.0 and 8.6.1 agree with 8.5 here,
# 10.0.1 with 10.16.1.11 except the plugin flags, 11.0.0.114 with 11.4.0.106). 8.x's Builder keeps `max_batch_size`;
# 10 drops it and makes EXPLICIT_BATCH an ignored flag; 11 drops EXPLICIT_BATCH and FP16, keeps STRONGLY_TYPED
# (now member 0, ignored: always strongly typed) and only two TacticSources, renumbered.
GENERATIONS = {
    "8.5.3.1": dict(
        builder={"max_batch_size": 1},
        creation=enum(EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1),
        flags=enum(FP16=0, DEBUG=2, GPU_FALLBACK=3, DISABLE_TIMING_CACHE=6, TF32=7, SPARSE_WEIGHTS=8),
        tactics=enum(CUBLAS=0, CUBLAS_LT=1, CUDNN=2, EDGE_MASK_CONVOLUTIONS=3, JIT_CONVOLUTIONS=4),
        previews=enum(FASTER_DYNAMIC_SHAPES_0805=0, DISABLE_EXTERNAL_TACTIC_SOURCES_FOR_CORE_0805=1),
    ),
    "10.16.1.11": dict(
        builder={},
        creation=enum(EXPLICIT_BATCH=0, STRONGLY_TYPED=1, PREFER_JIT_PYTHON_PLUGINS=2, PREFER_AOT_PYTHON_PLUGINS=3),
        flags=enum(FP16=0, DEBUG=2, GPU_FALLBACK=3, DISABLE_TIMING_CACHE=5, TF32=6, SPARSE_WEIGHTS=7),
        tactics=enum(CUBLAS=0, CUBLAS_LT=1, CUDNN=2, EDGE_MASK_CONVOLUTIONS=3, JIT_CONVOLUTIONS=4),
    ),
    "11.4.0.106": dict(
        builder={},
        creation=enum(STRONGLY_TYPED=0, PREFER_JIT_PYTHON_PLUGINS=1, PREFER_AOT_PYTHON_PLUGINS=2),
        flags=enum(DEBUG=2, GPU_FALLBACK=3, DISABLE_TIMING_CACHE=5, TF32=6, SPARSE_WEIGHTS=7),
        tactics=enum(EDGE_MASK_CONVOLUTIONS=0, JIT_CONVOLUTIONS=1),
    ),
}
CUDA_FAILURE = (
    "CUDA initialization failure with error: 35. Please check your CUDA installation:  "
    "http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html"
)


def stand_in(version: str) -> ModuleType:
    """A `tensorrt` module of `version`'s generation on a machine without a GPU: its Builder and Runtime log
    what 8.5/8.6 log there, then fail as pybind11 does when TensorRT returns none."""
    facts = GENERATIONS[version]

    def no_cuda(self: object, logger: object) -> None:
        logger.log(RTX.module.ILogger.Severity.WARNING, CUDA_FAILURE)  # type: ignore[attr-defined]
        raise TypeError("pybind11::init(): factory function returned nullptr")

    module = ModuleType("tensorrt")
    module.__dict__.update(
        __version__=version,
        ILogger=RTX.module.ILogger,
        Builder=type("Builder", (), {"__init__": no_cuda, **facts["builder"]}),
        Runtime=type("Runtime", (), {"__init__": no_cuda}),
        NetworkDefinitionCreationFlag=facts["creation"],
        BuilderFlag=facts["flags"],
        TacticSource=facts["tactics"],
        PreviewFeature=facts.get("previews"),
    )
    return module


ALL_TACTICS = ["CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"]


@pytest.mark.parametrize(
    "version, implicit_batch, fp16_flag, weak, strong, tactic_sources",
    [
        ("8.5.3.1", True, True, 1, 1, ALL_TACTICS),
        ("10.16.1.11", False, True, 0, 2, ALL_TACTICS),
        ("11.4.0.106", False, False, 0, 1, ["EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"]),
    ],
)
def test_probes_per_generation(
    version: str, implicit_batch: bool, fp16_flag: bool, weak: int, strong: int, tactic_sources: list[str]
) -> None:
    """Explicit batch is asked for only where implicit batch exists (8.x), strong typing only where the flag
    exists (none in 8.x; bit 1 in 10, bit 0 in 11); 11 has no FP16 flag and its TacticSource bits moved."""
    trt = compat.TensorRT("tensorrt", stand_in(version))
    assert (trt.has_implicit_batch, trt.has_fp16_flag) == (implicit_batch, fp16_flag)
    assert (trt.network_flags(False), trt.network_flags(True)) == (weak, strong)
    assert trt.enum_names("TacticSource") == tactic_sources
    if version.startswith("8.5"):  # 8.6 turned it on by default; 10 deprecated it
        [faster] = trt.enum_members("PreviewFeature", ("FASTER_DYNAMIC_SHAPES_0805",), "--preview-features")
        assert faster is trt.module.PreviewFeature.FASTER_DYNAMIC_SHAPES_0805
    assert trt.tactic_source_mask(("JIT_CONVOLUTIONS",)) == 1 << int(trt.module.TacticSource.JIT_CONVOLUTIONS)
    tokens = [f.token for f in select_flags(trt, BuildOptions(tf32=True, debug=True), trt.has_fp16_flag)]
    assert tokens == (["", "tf32", "sparse", "dbg"] if fp16_flag else ["tf32", "sparse", "dbg"])


def test_no_gpu_is_one_line_not_a_traceback(
    vit_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Without a GPU (or a driver it can use) full TensorRT's Builder and Runtime come back empty, which pybind11
    reports as a TypeError about a null pointer: the build, the operator probe and the runner say why instead."""
    from lseg_trt.cli import main

    trt = compat.TensorRT("tensorrt", stand_in("8.5.3.1"))
    why = r"tensorrt 8\.5\.3\.1 could not create its {} \(CUDA initialization failure with error: 35\..*\): it needs"
    with pytest.raises(LsegTrtError, match=why.format("Builder") + ".*--flavour tensorrt-rtx"):
        plan_from_onnx(trt, vit_onnx, BuildOptions(), [], strongly_typed=False)
    with pytest.raises(LsegTrtError, match=why.format("Builder")):
        trt.parser_supports("LayerNormalization")  # its logger shows only errors, but keeps the warning that says why
    with pytest.raises(LsegTrtError, match=why.format("Runtime")):
        trt.create("Runtime", trt.logger())
    wrong_call = compat.TensorRT("tensorrt", ModuleType("tensorrt"))
    wrong_call.module.Builder = type("Builder", (), {})  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="takes no arguments"):
        wrong_call.create("Builder", trt.logger())  # a TypeError that is not TensorRT's empty answer stays a bug

    monkeypatch.setitem(sys.modules, "tensorrt", stand_in("10.16.1.11"))
    compat._import.cache_clear()
    try:
        code = main(["build", "--onnx", str(vit_onnx), "--flavour", "tensorrt", "--out", str(tmp_path), "--no-fp16"])
    finally:
        compat._import.cache_clear()
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "lseg-trt build: error: tensorrt 10.16.1.11 could not create its Builder (CUDA initialization" in err


def test_a_tensorrt_that_does_not_import_is_not_called_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's 8.5/8.6 wheels load cuBLAS and cuDNN from other wheels; without them `import tensorrt` fails
    naming the library, and the message must not say TensorRT is not installed."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(
        'raise ImportError("libcublas.so.11: cannot open shared object file: No such file or directory")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    compat._import.cache_clear()
    try:
        with pytest.raises(
            LsegTrtError, match=r"tensorrt is installed but does not import \(libcublas\.so\.11: cannot"
        ):
            compat.load("tensorrt")
        compat._import.cache_clear()
        monkeypatch.setitem(sys.modules, "tensorrt", None)
        with pytest.raises(LsegTrtError, match="tensorrt is not installed"):
            compat.load("tensorrt")
    finally:
        compat._import.cache_clear()


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
