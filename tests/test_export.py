"""ONNX export: I/O contract, metadata, fp16 graph layout, verification that can fail and never destroys."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lseg_trt import LsegTrtError
from lseg_trt.export import (
    CPU_FP16_NOTE,
    INPUT_NAME,
    OUTPUT_NAME,
    Exported,
    VerificationError,
    inspect_onnx,
    onnx_from_lseg,
    verified,
    verify_onnx,
)
from lseg_trt.files import remove_stale_temps
from lseg_trt.models import LSeg, random_lseg
from lseg_trt.models.fused import GRAPH


@pytest.fixture(scope="module")
def exported(tiny: LSeg, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    out = tmp_path_factory.mktemp(f"onnx_{tiny.variant}")
    return {p: onnx_from_lseg(tiny, out, p) for p in ("fp32", "fp16")}


def _io(model: onnx.ModelProto) -> dict[str, tuple[int, list]]:
    return {
        v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in [*model.graph.input, *model.graph.output]
    }


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_io_contract_and_metadata(exported: dict[str, Exported], tiny: LSeg, precision: str) -> None:
    path = exported[precision].path
    assert path.name == f"lseg_{tiny.variant}_random_{precision}.onnx"
    model = onnx.load(str(path))
    f32 = onnx.TensorProto.FLOAT
    assert _io(model) == {
        INPUT_NAME: (f32, ["batch", 3, "height", "width"]),
        OUTPUT_NAME: (f32, ["batch", tiny.config.out_c, "height_half", "width_half"]),
    }
    meta = inspect_onnx(path).metadata
    assert meta["variant"] == tiny.variant and meta["precision"] == precision and meta["io_names"] == "lseg-trt"
    assert meta["weights"] == "random" and meta["checkpoint_sha256"].startswith("random-")
    assert meta["graph"] == GRAPH  # the inference rewrite (lseg_trt.models.fused), verified like any export
    assert [round(v, 3) for v in eval(meta["mean"])] == [round(v, 3) for v in tiny.mean]  # noqa: S307
    assert verified(meta)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_random_weights_hash_follows_the_weights(tiny_rn: LSeg, tmp_path: Path) -> None:
    """Random weights have no file to hash: the tensors are hashed, so another seed is another model."""
    a = inspect_onnx(onnx_from_lseg(tiny_rn, tmp_path / "a", verify=False).path).metadata
    b = inspect_onnx(onnx_from_lseg(random_lseg("tiny_rn", seed=1), tmp_path / "b", verify=False).path).metadata
    assert a["checkpoint_sha256"] != b["checkpoint_sha256"]
    assert not verified(a)  # exported without verification: recorded as such


def test_fp16_graph_keeps_normalisation_in_fp32(exported: dict[str, Exported]) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported["fp16"].path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    conv_weights = {initializers[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert conv_weights == {onnx.TensorProto.FLOAT16}
    norm_nodes = [n for n in model.graph.node if n.op_type in ("ReduceL2", "ReduceSumSquare")]
    assert norm_nodes, "no L2 normalisation node found"
    for node in norm_nodes:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verification_passes_and_shapes_are_dynamic(
    exported: dict[str, Exported], tiny: LSeg, precision: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lseg_trt.export")
    verification = verify_onnx(exported[precision].path, tiny, precision)
    assert [r.size for r in verification.results] == [(256, 256), (256, 384)]
    assert verification.passed and exported[precision].verification.passed
    # a CPU check of an fp16 model proves the graph and the rounded weights, not fp16 arithmetic: say so
    assert verification.note == (CPU_FP16_NOTE if precision == "fp16" else None)
    table = verification.markdown()
    assert "| 256x384 |" in table and table.count("| ok |") == 2 and (CPU_FP16_NOTE in table) == (precision == "fp16")
    assert (CPU_FP16_NOTE in caplog.text) == (precision == "fp16")
    session = ort.InferenceSession(str(exported[precision].path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 96)
    (y,) = session.run(None, {INPUT_NAME: x.numpy()})
    assert y.shape == (2, tiny.config.out_c, 32, 48) and y.dtype == np.float32


def test_verification_can_fail(exported: dict[str, Exported], tiny: LSeg) -> None:
    """Another seed's weights must not pass as the same network."""
    other = random_lseg(tiny.variant, seed=1)
    verification = verify_onnx(exported["fp32"].path, other, "fp32")
    assert not any(r.passed for r in verification.results) and not verification.passed


def test_failing_export_keeps_the_previous_good_file(tiny_rn: LSeg, tmp_path: Path) -> None:
    good = onnx_from_lseg(tiny_rn, tmp_path).path
    before = hashlib.sha256(good.read_bytes()).hexdigest()
    broken = random_lseg("tiny_rn")  # same name (random weights), but a NaN weight: verification must fail
    with torch.no_grad():
        next(broken.image_encoder.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(VerificationError, match="a previous .* is kept") as failure:
        onnx_from_lseg(broken, tmp_path)
    assert (
        not failure.value.verification.passed
        and "FAIL (needs pixel_cosine_min" in failure.value.verification.markdown()
    )
    assert hashlib.sha256(good.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # no temporary folder left either


def test_seed_tensor_names(tiny_rn: LSeg, tmp_path: Path) -> None:
    """`io_names="seed"`: the names the seed's C++ tester looks up; verification follows the names."""
    result = onnx_from_lseg(tiny_rn, tmp_path, io_names="seed")
    assert set(_io(onnx.load(str(result.path)))) == {"input", "output"}
    assert inspect_onnx(result.path).metadata["io_names"] == "seed" and result.verification.passed
    with pytest.raises(LsegTrtError, match="unknown tensor names"):
        onnx_from_lseg(tiny_rn, tmp_path, io_names="mine")


@pytest.mark.parametrize("opset", [0, 13, 99])
def test_opset_outside_the_exporter_range(tiny_rn: LSeg, tmp_path: Path, opset: int) -> None:
    with pytest.raises(LsegTrtError, match=f"--opset {opset} is outside 14\\.\\."):
        onnx_from_lseg(tiny_rn, tmp_path / "out", opset=opset)
    assert not (tmp_path / "out").exists()


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    stale = [tmp_path / f".export-{dead}-abc", tmp_path / f".model.onnx.{dead}.tmp", tmp_path / ".export-old"]
    live = [tmp_path / f".export-{alive}-xyz", tmp_path / f".model.engine.{alive}.tmp", tmp_path / ".export-new"]
    for path in stale + live:
        if "export" in path.name:
            path.mkdir()
            (path / "half.onnx").write_bytes(b"half")
        else:
            path.write_bytes(b"half")
    keep = tmp_path / "model.onnx"
    keep.write_bytes(b"a real artefact")
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / ".export-old", (old, old))  # no pid in the name: removed only when old
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted([*live, keep])


def test_cache_redoes_an_export_of_the_original_graph(tiny_rn: LSeg, tmp_path: Path) -> None:
    """An export made before the rewrite (no `graph` key) is exported again, not reused."""
    from lseg_trt.onnx_cache import onnx_for

    path = onnx_for(tiny_rn, "fp32", tmp_path)
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "graph"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    assert "graph" not in inspect_onnx(path).metadata
    assert inspect_onnx(onnx_for(tiny_rn, "fp32", tmp_path)).metadata["graph"] == GRAPH


def test_an_export_killed_while_it_verifies_leaves_nothing_at_the_final_name(tmp_path: Path) -> None:
    """SIGKILL skips every `finally`: whatever the export wrote before its check passed must not carry the
    name of a verified model anywhere (a glob for `*.onnx`, or the name itself, must not find it)."""
    script = (
        "import os, signal, sys\n"
        "from lseg_trt import export\n"
        "from lseg_trt.models import random_lseg\n"
        "export.verify_onnx = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed as the check starts\n"
        "export.onnx_from_lseg(random_lseg('tiny_rn'), sys.argv[1])\n"
    )
    src = str(Path(sys.modules["lseg_trt"].__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, tmp_path], env=env, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert left and not [p for p in left if p.suffix == ".onnx"], left  # the temporary is there, not as a model
    remove_stale_temps(tmp_path)
    assert not list(tmp_path.iterdir())
