"""ONNX export: I/O contract, metadata, fp16 graph layout, and verification that can fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lseg_trt.export import INPUT_NAME, OUTPUT_NAME, onnx_from_lseg, read_metadata, verify_onnx
from lseg_trt.models import LSeg, random_lseg


@pytest.fixture(scope="module")
def exported(tiny: LSeg, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp(f"onnx_{tiny.variant}")
    return {p: onnx_from_lseg(tiny, out, p) for p in ("fp32", "fp16")}


def _io(model: onnx.ModelProto) -> dict[str, tuple[int, list]]:
    return {
        v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in [*model.graph.input, *model.graph.output]
    }


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_io_contract_and_metadata(exported: dict[str, Path], tiny: LSeg, precision: str) -> None:
    path = exported[precision]
    assert path.name == f"lseg_{tiny.variant}_random_{precision}.onnx"
    model = onnx.load(str(path))
    f32 = onnx.TensorProto.FLOAT
    assert _io(model) == {
        INPUT_NAME: (f32, ["batch", 3, "height", "width"]),
        OUTPUT_NAME: (f32, ["batch", tiny.config.out_c, "height_half", "width_half"]),
    }
    meta = read_metadata(path)
    assert meta["variant"] == tiny.variant and meta["precision"] == precision
    assert meta["checkpoint_sha256"] == "random" and meta["weights"] == "random"
    assert [round(v, 3) for v in eval(meta["mean"])] == [round(v, 3) for v in tiny.mean]  # noqa: S307


def test_fp16_graph_keeps_normalisation_in_fp32(exported: dict[str, Path]) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported["fp16"])))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    conv_weights = {initializers[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert conv_weights == {onnx.TensorProto.FLOAT16}
    norm_nodes = [n for n in model.graph.node if n.op_type in ("ReduceL2", "ReduceSumSquare")]
    assert norm_nodes, "no L2 normalisation node found"
    for node in norm_nodes:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verification_passes_and_shapes_are_dynamic(exported: dict[str, Path], tiny: LSeg, precision: str) -> None:
    results = verify_onnx(exported[precision], tiny, precision)
    assert [r.size for r in results] == [(256, 256), (256, 384)]
    assert all(r.passed for r in results)
    session = ort.InferenceSession(str(exported[precision]), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 96)
    (y,) = session.run(None, {INPUT_NAME: x.numpy()})
    assert y.shape == (2, tiny.config.out_c, 32, 48) and y.dtype == np.float32


def test_verification_can_fail(exported: dict[str, Path], tiny: LSeg) -> None:
    """Another seed's weights must not pass as the same network."""
    other = random_lseg(tiny.variant, seed=1)
    results = verify_onnx(exported["fp32"], other, "fp32")
    assert not any(r.passed for r in results)
