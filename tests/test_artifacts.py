"""The ONNX and engine caches, the engine sidecar record, the fp16 sibling, and opening a model.

Engines are really built with TensorRT-RTX (it builds on a CPU); nothing here runs one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from lseg_trt import LsegTrtError
from lseg_trt.artifacts import model_info_from_metadata, open_model
from lseg_trt.engines import EngineRecord, engine_for
from lseg_trt.export import inspect_onnx, onnx_from_lseg
from lseg_trt.models import LSeg, random_lseg
from lseg_trt.onnx_cache import onnx_for, onnx_info
from lseg_trt.tensorrt import compat
from lseg_trt.tensorrt.options import BuildOptions, Profile

try:
    RTX = compat.load("tensorrt-rtx")
except LsegTrtError as e:
    pytest.skip(f"TensorRT-RTX builder not installed: {e}", allow_module_level=True)

SMALL = Profile((1, 3, 64, 64), (1, 3, 128, 128), (2, 3, 256, 256))
GOOD_META = {
    "variant": "tiny_vit",
    "weights": "/data/demo_e200.ckpt",
    "checkpoint_sha256": "0" * 64,
    "precision": "fp32",
    "mean": "[0.5, 0.5, 0.5]",
    "std": "[0.5, 0.5, 0.5]",
}


def _options(**kw: object) -> BuildOptions:
    return BuildOptions(flavour="tensorrt-rtx", profile=SMALL, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fp32_onnx(tiny: LSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_for(tiny, "fp32", tmp_path_factory.mktemp(f"onnx_{tiny.variant}"))


@pytest.fixture(scope="module")
def vit_onnx(tiny_vit: LSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_for(tiny_vit, "fp32", tmp_path_factory.mktemp("onnx_vit"))


def test_onnx_cache_reuses_only_verified_exports_of_the_same_weights(tiny_rn: LSeg, tmp_path: Path) -> None:
    path = onnx_for(tiny_rn, "fp32", tmp_path)
    stamp = path.stat().st_mtime_ns
    assert onnx_for(tiny_rn, "fp32", tmp_path) == path and path.stat().st_mtime_ns == stamp  # reused
    other = random_lseg("tiny_rn", seed=1)  # same file name, other tensors
    assert onnx_for(other, "fp32", tmp_path) == path and path.stat().st_mtime_ns != stamp
    onnx_from_lseg(tiny_rn, tmp_path, verify=False)  # an unverified file of the right weights
    stamp = path.stat().st_mtime_ns
    onnx_for(tiny_rn, "fp32", tmp_path)
    assert path.stat().st_mtime_ns != stamp and json.loads(inspect_onnx(path).metadata["verification"])["passed"]


def test_onnx_info_is_read_once_per_version_of_the_file(vit_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    shutil.copy(vit_onnx, path)
    os.utime(path, (1e9, 1e9))  # not just written (a file that may still change unseen is read each time)
    first = onnx_info(path)
    assert onnx_info(path) is first  # not parsed again
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**first.metadata, "variant": "tiny_rn"})
    onnx.save(model, str(path))  # a new version of the file
    assert onnx_info(path).metadata["variant"] == "tiny_rn"


def test_file_hashes_are_remembered_only_for_files_not_just_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import time

    from lseg_trt import files

    monkeypatch.setattr(files, "_hashed", {})  # the planted hash below stays in this test
    path = tmp_path / "model.bin"
    path.write_bytes(b"a" * 1000)
    first = files.file_sha256(path)
    path.write_bytes(b"b" * 1000)  # same size, same inode, maybe the same clock tick: must be read again
    assert files.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first
    old = time.time_ns() - 10_000_000_000
    os.utime(path, ns=(old, old))
    assert files.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()
    version = files.file_version(path)
    assert files.known_sha256s()[version] == hashlib.sha256(b"b" * 1000).hexdigest()  # remembered, to hand on
    files.remember_sha256s({version: "0" * 64})  # a worker takes its coordinator's hash of this very version
    assert files.file_sha256(path) == "0" * 64  # and does not read the file again
    time.sleep(0.05)  # past the clock tick of the last change
    path.write_bytes(b"d" * 1000)
    os.utime(path, ns=(old, old))  # a copy that keeps the old time (cp -p): the change time still moves
    assert files.file_sha256(path) == hashlib.sha256(b"d" * 1000).hexdigest()
    path.write_bytes(b"c" * 1000)  # a rewrite moves the time: read again
    assert files.file_sha256(path) == hashlib.sha256(b"c" * 1000).hexdigest()


def test_fp32_and_fp16_engines_with_records(fp32_onnx: Path, tmp_path: Path) -> None:
    fp32 = engine_for(fp32_onnx, _options(fp16=False), tmp_path)
    profile = "b1-1-2_h64-128-256_w64-128-256"
    assert fp32.name == f"{fp32_onnx.stem}__fp32_sparse_ws2048MiB_{profile}.engine"
    # fp16 on a strongly typed flavour: built from the fp16 ONNX, exported on demand from the metadata into
    # the engine folder (never beside an input that may not be ours to write)
    fp16 = engine_for(fp32_onnx, _options(), tmp_path)
    sibling = tmp_path / (fp32_onnx.stem.replace("_fp32", "_fp16") + ".onnx")
    assert fp16.name == f"{sibling.stem}__fp16_sparse_ws2048MiB_{profile}.engine" and sibling.is_file()
    for engine, precision in ((fp32, "fp32"), (fp16, "fp16")):
        record = EngineRecord.read(engine)
        assert record.flavour == "tensorrt-rtx" and record.request["version"] == RTX.version
        assert record.precision == precision and record.request["flags"] == ["sparse"] and not record.request["tf32"]
        assert record.profile == SMALL and len(record.request["onnx_sha256"]) == 64
        assert (record.input_name, record.output_name) == ("image", "features") and record.build_seconds > 0
        assert record.engine_size == engine.stat().st_size > 10_000
        assert record.onnx_metadata["precision"] == precision
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_engine_cache_reuses_only_matching_engines(vit_onnx: Path, tmp_path: Path) -> None:
    engine = engine_for(vit_onnx, _options(fp16=False, sparse=False), tmp_path)
    stamp = engine.stat().st_mtime_ns
    assert engine_for(vit_onnx, _options(fp16=False, sparse=False), tmp_path) == engine
    assert engine.stat().st_mtime_ns == stamp  # reused
    other = Profile((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 128, 128))
    second = engine_for(
        vit_onnx, BuildOptions(fp16=False, sparse=False, flavour="tensorrt-rtx", profile=other), tmp_path
    )
    assert second != engine and engine.is_file()  # two profiles, two files
    assert second.name.endswith("_b1_h64-64-128_w64-64-128.engine")
    assert EngineRecord.read(second).profile == other and EngineRecord.read(engine).profile == SMALL


def test_tf32_is_explicit_in_name_and_record(vit_onnx: Path, tmp_path: Path) -> None:
    engine = engine_for(vit_onnx, _options(fp16=False, tf32=True), tmp_path)
    assert "__fp32_tf32_sparse_ws2048MiB_" in engine.name and EngineRecord.read(engine).request["tf32"] is True
    assert EngineRecord.read(engine).options["tf32"] is True


def test_truncated_engine_is_rebuilt_and_refused(vit_onnx: Path, tmp_path: Path) -> None:
    engine = engine_for(vit_onnx, _options(fp16=False), tmp_path)
    size = engine.stat().st_size
    with engine.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(LsegTrtError, match="truncated"):
        open_model(engine=str(engine))
    assert engine_for(vit_onnx, _options(fp16=False), tmp_path) == engine and engine.stat().st_size == size
    data = bytearray(engine.read_bytes())
    data[size // 2] ^= 0xFF  # same size, other bytes: the hash catches it
    engine.write_bytes(bytes(data))
    engine_for(vit_onnx, _options(fp16=False), tmp_path)
    assert engine.read_bytes() != bytes(data)


@pytest.mark.parametrize("content", ["[]", '"x"', "{}", '{"request": 1}', "not json", "\xff"])
def test_malformed_sidecar(vit_onnx: Path, tmp_path: Path, content: str) -> None:
    engine = engine_for(vit_onnx, _options(fp16=False), tmp_path)
    good = EngineRecord.read(engine)
    EngineRecord.path_for(engine).write_text(content, encoding="latin-1")
    with pytest.raises(LsegTrtError, match="sidecar .* (malformed|unreadable)"):
        EngineRecord.read(engine)
    with pytest.raises(LsegTrtError, match="sidecar"):
        open_model(engine=str(engine))
    engine_for(vit_onnx, _options(fp16=False), tmp_path)  # rebuilt, with a sound record
    assert EngineRecord.read(engine).request == good.request


def test_sidecar_with_a_bad_field_and_missing_sidecar(vit_onnx: Path, tmp_path: Path) -> None:
    engine = engine_for(vit_onnx, _options(fp16=False), tmp_path)
    sidecar = EngineRecord.path_for(engine)
    data = json.loads(sidecar.read_text())
    data["request"]["profile"]["max"] = [1, 3, "x", 256]
    sidecar.write_text(json.dumps(data))
    with pytest.raises(LsegTrtError, match="malformed .*profile max"):
        EngineRecord.read(engine)
    sidecar.unlink()
    with pytest.raises(LsegTrtError, match="missing"):
        EngineRecord.read(engine)


def test_fp16_sibling_of_other_weights_is_re_exported(tiny_rn: LSeg, tmp_path: Path) -> None:
    fp32 = onnx_for(tiny_rn, "fp32", tmp_path)
    sibling = onnx_for(random_lseg("tiny_rn", seed=1), "fp16", tmp_path)  # same name, other weights
    assert sibling.name == fp32.name.replace("_fp32", "_fp16")
    other = inspect_onnx(sibling).metadata["checkpoint_sha256"]
    engine = engine_for(fp32, _options(), tmp_path / "engines")
    sha = inspect_onnx(fp32).metadata["checkpoint_sha256"]
    assert sha != other and inspect_onnx(sibling).metadata["checkpoint_sha256"] == other  # left alone
    assert inspect_onnx(tmp_path / "engines" / sibling.name).metadata["checkpoint_sha256"] == sha
    assert EngineRecord.read(engine).onnx_metadata["checkpoint_sha256"] == sha


def test_strongly_typed_fp16_without_known_weights_says_what_to_run(fp32_onnx: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "someone_elses_model.onnx"
    shutil.copy(fp32_onnx, foreign)
    with pytest.raises(LsegTrtError, match="lseg-trt export --precision fp16"):
        engine_for(foreign, _options(), tmp_path)


def test_fp16_onnx_refuses_no_fp16(tiny_rn: LSeg, tmp_path: Path) -> None:
    fp16 = onnx_for(tiny_rn, "fp16", tmp_path)
    with pytest.raises(LsegTrtError, match="fp16 model"):
        engine_for(fp16, _options(fp16=False), tmp_path)


def test_bad_inputs_and_bad_options_write_nothing(vit_onnx: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(LsegTrtError, match="corrupt|cannot"):
        engine_for(corrupt, _options(fp16=False), tmp_path / "out")
    with pytest.raises(LsegTrtError, match="not found"):
        engine_for(tmp_path / "missing.onnx", _options(), tmp_path / "out")
    with pytest.raises(LsegTrtError, match="above 256 GiB"):
        engine_for(vit_onnx, _options(workspace=1 << 50), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stale_build_temporaries_are_removed(vit_onnx: Path, tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".model.engine.{child.pid}.tmp"
    live = tmp_path / f".model.engine.{os.getpid()}.tmp"
    stale.write_bytes(b"half an engine")
    live.write_bytes(b"being written")
    engine_for(vit_onnx, _options(fp16=False), tmp_path)
    assert not stale.exists() and live.exists()


# --- metadata and opening a model -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"variant": "../../../../tmp/x"}, "unknown variant"),
        ({"variant": None}, "no lseg-trt metadata"),
        ({"mean": "[1, 2]"}, "'mean' .* 3 finite numbers"),
        ({"mean": "x"}, "'mean'"),
        ({"mean": '["a", 1, 2]'}, "'mean'"),
        ({"std": "[0, 0, 0]"}, "'std' .* above 0"),
        ({"std": "[1, NaN, 1]"}, "'std'"),
        ({"std": "[1, Infinity, 1]"}, "'std'"),
        ({"std": None}, "'std'"),
        ({"precision": "int8"}, "precision"),
        ({"weights": ""}, "names no weights"),
    ],
)
def test_bad_metadata(change: dict[str, str | None], message: str) -> None:
    meta = {k: v for k, v in {**GOOD_META, **change}.items() if v is not None}
    with pytest.raises(LsegTrtError, match=message) as failure:
        model_info_from_metadata(meta, "m.onnx")
    assert "m.onnx" in str(failure.value)  # the file is named


def test_good_metadata() -> None:
    info = model_info_from_metadata(GOOD_META, "m.onnx")
    assert (info.variant, info.weights_name, info.precision) == ("tiny_vit", "demo_e200", "fp32")
    assert info.mean == info.std == (0.5, 0.5, 0.5)


def test_open_model(tiny_rn_ckpt: Path, vit_onnx: Path, tmp_path: Path) -> None:
    weights = open_model(weights=str(tiny_rn_ckpt))
    assert (weights.kind, weights.backend, weights.info.variant) == ("weights", "torch", "tiny_rn")
    assert weights.lseg is not None and weights.info.weights_name == tiny_rn_ckpt.stem
    assert len(weights.info.weights_sha256) == 64
    from_onnx = open_model(onnx=str(vit_onnx))
    assert (from_onnx.kind, from_onnx.backend, from_onnx.info.variant) == ("onnx", "onnxruntime", "tiny_vit")
    assert from_onnx.lseg is None and from_onnx.path == vit_onnx
    engine = engine_for(vit_onnx, _options(fp16=False), tmp_path)
    from_engine = open_model(engine=str(engine))
    assert (from_engine.backend, from_engine.info.precision) == ("tensorrt", "fp32")
    assert from_engine.record is not None and from_engine.record.flavour == "tensorrt-rtx"
    assert from_engine.info == from_onnx.info
    with pytest.raises(LsegTrtError, match="exactly one"):
        open_model(onnx=str(vit_onnx), engine=str(engine))
    with pytest.raises(LsegTrtError, match="exactly one"):
        open_model()
    with pytest.raises(LsegTrtError, match="not tiny_rn"):
        open_model(onnx=str(vit_onnx), variant="tiny_rn")
    with pytest.raises(LsegTrtError, match="not found"):
        open_model(engine=str(tmp_path / "missing.engine"))


def test_onnx_with_forged_metadata_is_refused(vit_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(vit_onnx))
    onnx.helper.set_model_props(model, {**inspect_onnx(vit_onnx).metadata, "variant": "../../../../tmp/x"})
    forged = tmp_path / "forged.onnx"
    onnx.save(model, str(forged))
    with pytest.raises(LsegTrtError, match="forged.onnx: unknown variant"):
        open_model(onnx=str(forged))


def test_onnx_claiming_a_variant_of_another_width_is_refused(vit_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(vit_onnx))
    onnx.helper.set_model_props(model, {**inspect_onnx(vit_onnx).metadata, "variant": "vit_l16"})  # 512, not 32
    forged = tmp_path / "wider.onnx"
    onnx.save(model, str(forged))
    with pytest.raises(LsegTrtError, match="512 channels, but the graph puts out 32"):
        open_model(onnx=str(forged))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"precision": "fp16"}, "metadata says 'fp16', but its weights are fp32"),
        ({"verification": '{"passed": false}'}, "failed its check"),
        ({"verification": "[1, 2]"}, "failed its check"),
    ],
)
def test_onnx_whose_metadata_lies_about_itself_is_refused(
    vit_onnx: Path, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    """The backend label comes from the weights' own type, and a failed check is never run."""
    model = onnx.load(str(vit_onnx))
    onnx.helper.set_model_props(model, {**inspect_onnx(vit_onnx).metadata, **change})
    forged = tmp_path / "lying.onnx"
    onnx.save(model, str(forged))
    with pytest.raises(LsegTrtError, match=message):
        open_model(onnx=str(forged))


@pytest.mark.real_size
def test_real_size_rn101_fp16_engine_default_profile(tmp_path: Path) -> None:
    """The CI check that the full ResNet-101 network parses and builds with the default 256..1024 profile."""
    fp16 = onnx_for(random_lseg("rn101_zs"), "fp16", tmp_path)
    engine = engine_for(fp16, BuildOptions(flavour="tensorrt-rtx"), tmp_path)
    assert engine.name == "lseg_rn101_zs_random_fp16__fp16_sparse_ws2048MiB_b1_h256-480-1024_w256-480-1024.engine"
    assert engine.stat().st_size > 50 * 2**20  # ~120 MiB: the fp16 weights are inside
    assert EngineRecord.read(engine).profile == Profile()


def test_hostile_weights_names_become_one_safe_component() -> None:
    """A weights path from metadata names the output folder: it must stay one component inside --out."""
    from lseg_trt.names import is_safe_component

    for weights in ("/tmp/..", "../../../../tmp/x", "a/b/..", "...ckpt", "we ird\nname.ckpt"):
        info = model_info_from_metadata({**GOOD_META, "weights": weights}, "m.onnx")
        assert is_safe_component(info.weights_name) and "/" not in info.weights_name, (weights, info.weights_name)
