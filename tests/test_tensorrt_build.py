"""Engine building with the TensorRT-RTX builder, which runs for real on a CPU-only machine.

What is NOT run here: executing an engine (needs a supported GPU; TensorRT-RTX refuses Hopper) and
full TensorRT 10/11 (not installable here; the same code path is taken wherever `tensorrt` imports).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lseg_trt import LsegTrtError
from lseg_trt.export import onnx_from_lseg
from lseg_trt.files import atomic_path
from lseg_trt.models import LSeg, random_lseg
from lseg_trt.tensorrt import compat
from lseg_trt.tensorrt.builder import engine_from_onnx
from lseg_trt.tensorrt.options import BuildOptions, Profile, parse_shape

try:
    RTX = compat.load("tensorrt-rtx")
except LsegTrtError as e:
    pytest.skip(f"TensorRT-RTX builder not installed: {e}", allow_module_level=True)

SMALL = Profile((1, 3, 64, 64), (1, 3, 128, 128), (2, 3, 256, 256))


def _options(**kw: object) -> BuildOptions:
    return BuildOptions(flavour="tensorrt-rtx", profile=SMALL, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fp32_onnx(tiny: LSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_from_lseg(tiny, tmp_path_factory.mktemp(f"trt_{tiny.variant}"), "fp32")


def test_rtx_is_strongly_typed() -> None:
    assert RTX.strongly_typed_only and not RTX.has_fp16_flag


def test_fp32_and_fp16_engines_with_sidecars(fp32_onnx: Path, tmp_path: Path) -> None:
    fp32 = engine_from_onnx(fp32_onnx, _options(fp16=False), tmp_path)
    assert fp32.name == f"{fp32_onnx.stem}__fp32_sparse_ws512MiB.engine"
    # fp16 on a strongly typed flavour: built from the fp16 ONNX, exported on demand from the metadata
    fp16 = engine_from_onnx(fp32_onnx, _options(), tmp_path)
    assert fp16.name == fp32_onnx.stem.replace("_fp32", "_fp16") + "__fp16_sparse_ws512MiB.engine"
    assert fp32_onnx.with_name(fp32_onnx.stem.replace("_fp32", "_fp16") + ".onnx").is_file()
    for engine, precision in ((fp32, "fp32"), (fp16, "fp16")):
        assert engine.stat().st_size > 10_000
        sidecar = json.loads(engine.with_suffix(".json").read_text())
        request = sidecar["request"]
        assert request["flavour"] == "tensorrt-rtx" and request["version"] == RTX.version
        assert request["precision"] == precision and request["flags"] == ["sparse"]
        assert request["profile"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 128, 128], "max": [2, 3, 256, 256]}
        assert len(request["onnx_sha256"]) == 64 and sidecar["input"] == "image" and sidecar["build_seconds"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cache_reuses_only_matching_engines(fp32_onnx: Path, tmp_path: Path) -> None:
    engine = engine_from_onnx(fp32_onnx, _options(fp16=False, sparse=False), tmp_path)
    built_at = json.loads(engine.with_suffix(".json").read_text())["built_at"]
    stamp = engine.stat().st_mtime_ns
    assert engine_from_onnx(fp32_onnx, _options(fp16=False, sparse=False), tmp_path) == engine
    assert engine.stat().st_mtime_ns == stamp  # reused
    other = Profile((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 128, 128))
    rebuilt = engine_from_onnx(
        fp32_onnx, BuildOptions(fp16=False, sparse=False, flavour="tensorrt-rtx", profile=other), tmp_path
    )
    assert rebuilt == engine  # same name: the profile is not in it ...
    sidecar = json.loads(engine.with_suffix(".json").read_text())
    assert sidecar["request"]["profile"]["max"] == [1, 3, 128, 128]  # ... but the sidecar forced a rebuild
    assert sidecar["built_at"] >= built_at


def test_timing_cache_and_flag_names(fp32_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """TensorRT-RTX makes timing caches no-ops: the options are skipped visibly, never claimed."""
    cache = tmp_path / "timing.cache"
    engine = engine_from_onnx(fp32_onnx, _options(fp16=False, timing_cache=cache, workspace=1 << 30), tmp_path)
    assert engine.name.endswith("__fp32_sparse_ws1024MiB.engine")
    assert not cache.exists() and "skipping --timing-cache" in caplog.text
    engine = engine_from_onnx(
        fp32_onnx,
        _options(fp16=False, sparse=False, disable_timing_cache=True, gpu_fallback=True, debug=True),
        tmp_path,
    )
    assert engine.name.endswith("__fp32_gpuFB_dbg_ws512MiB.engine")
    assert "skipping --disable-timing-cache" in caplog.text


def test_strongly_typed_fp16_without_known_weights_says_what_to_run(fp32_onnx: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "someone_elses_model.onnx"
    shutil.copy(fp32_onnx, foreign)
    with pytest.raises(LsegTrtError, match="lseg-trt export --precision fp16"):
        engine_from_onnx(foreign, _options(), tmp_path)


def test_fp16_onnx_refuses_no_fp16(tiny_rn: LSeg, tmp_path: Path) -> None:
    fp16 = onnx_from_lseg(tiny_rn, tmp_path, "fp16")
    with pytest.raises(LsegTrtError, match="fp16 model"):
        engine_from_onnx(fp16, _options(fp16=False), tmp_path)


@pytest.mark.parametrize(
    "profile, message",
    [
        (Profile((1, 3, 256, 256), (1, 3, 128, 128), (1, 3, 512, 512)), "exceeds"),
        (Profile((1, 3, 64, 64), (1, 3, 128, 128), (1, 3, 500, 500)), "multiples of 32"),
        (Profile((1, 1, 64, 64), (1, 1, 128, 128), (1, 1, 256, 256)), "3 channels"),
    ],
)
def test_bad_profiles(fp32_onnx: Path, tmp_path: Path, profile: Profile, message: str) -> None:
    with pytest.raises(LsegTrtError, match=message):
        engine_from_onnx(fp32_onnx, BuildOptions(flavour="tensorrt-rtx", profile=profile), tmp_path)
    assert not list(tmp_path.iterdir())


def test_bad_inputs(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(LsegTrtError, match="corrupt|cannot"):
        engine_from_onnx(corrupt, _options(fp16=False), tmp_path / "out")
    with pytest.raises(LsegTrtError, match="not found"):
        engine_from_onnx(tmp_path / "missing.onnx", _options(), tmp_path / "out")
    with pytest.raises(LsegTrtError, match="unknown TensorRT flavour"):
        compat.load("tensorrt-9000")
    with pytest.raises(LsegTrtError, match="parse shape"):
        parse_shape("1x3x480")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_atomic_path_leaves_nothing_on_interrupt(tmp_path: Path) -> None:
    target = tmp_path / "model.engine"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half an engine")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real_size
def test_real_size_rn101_fp16_engine_default_profile(tmp_path: Path) -> None:
    """The CI check that the full ResNet-101 network parses and builds with the default 256..1024 profile."""
    lseg = random_lseg("rn101_zs")
    fp16 = onnx_from_lseg(lseg, tmp_path, "fp16")
    engine = engine_from_onnx(fp16, BuildOptions(flavour="tensorrt-rtx"), tmp_path)
    assert engine.name == "lseg_rn101_zs_random_fp16__fp16_sparse_ws512MiB.engine"
    assert engine.stat().st_size > 50 * 2**20  # ~120 MiB: the fp16 weights are inside
    assert json.loads(engine.with_suffix(".json").read_text())["request"]["profile"]["max"] == [1, 3, 1024, 1024]
