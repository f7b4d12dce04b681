"""The ONNX cache between weights and TensorRT: exports reused only when they came from the very
weights at hand, and the fp16 sibling a strongly typed TensorRT builds fp16 engines from.

Reuse rules (anything else re-exports; nothing stale or broken is ever handed back):
- an ONNX file is reused when its metadata names the same variant, weights hash and graph and records a
  passed verification;
- the fp16 sibling is used only when it came from the same weights as the fp32 file it stands in for.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from lseg_trt.errors import LsegTrtError
from lseg_trt.export import DEFAULT_OPSET, OnnxInfo, inspect_onnx, onnx_from_lseg, onnx_name, verified
from lseg_trt.files import file_version
from lseg_trt.models import VARIANTS, LSeg, load_lseg
from lseg_trt.models.fused import GRAPH

log = logging.getLogger(__name__)


def onnx_info(path: Path) -> OnnxInfo:
    """`inspect_onnx`, remembered per version of the file: parsing a ViT-L model reads a 1.2 GB protobuf,
    and one request reads the same file more than once (cache check, then engine build)."""
    version = file_version(path)
    return _inspect(*version) if version else inspect_onnx(path)


@functools.lru_cache(maxsize=8)
def _inspect(path: str, *version: int) -> OnnxInfo:
    return inspect_onnx(path)


def onnx_for(lseg: LSeg, precision: str, cache_dir: Path, opset: int = DEFAULT_OPSET) -> Path:
    """`<cache_dir>/lseg_<variant>_<weights>_<precision>.onnx`, exported (and verified) unless a verified
    export of these very weights is already there, at an opset no newer than `opset` (an older one runs
    wherever the newer does; TensorRT 8.x's parser takes nothing past 16)."""
    path = Path(cache_dir) / onnx_name(lseg, precision)
    if path.is_file():
        info = onnx_info(path)
        current = info.metadata.get("io_names") == "lseg-trt" and info.metadata.get("graph") == GRAPH
        if _same_weights(info.metadata, lseg.variant, lseg.weights_sha256) and current and info.opset <= opset:
            log.info("reusing %s", path)
            return path
        log.info("re-exporting %s: other weights, an older version, never verified, or opset > %d", path.name, opset)
    return onnx_from_lseg(lseg, cache_dir, precision, opset).path


def _same_weights(meta: dict[str, str], variant: str | None, sha256: str | None) -> bool:
    return (
        variant is not None
        and sha256 is not None
        and meta.get("variant") == variant
        and meta.get("checkpoint_sha256") == sha256
        and verified(meta)
    )


def fp16_sibling(onnx_path: Path, info: OnnxInfo, export_dir: Path) -> tuple[Path, OnnxInfo]:
    """The fp16 model of the same weights as one of our fp32 models (and its info): one found beside the
    fp32 file or in `export_dir`, else exported into `export_dir` (never beside an input that may not be
    ours to write); a user error when the fp32 model names no weights we can load."""
    variant, weights, sha256 = (info.metadata.get(k) for k in ("variant", "weights", "checkpoint_sha256"))
    ours = onnx_path.stem.endswith("_fp32")  # our naming: the sibling's name follows from it
    name = onnx_path.stem[: -len("_fp32")] + "_fp16.onnx"
    for sibling in dict.fromkeys((onnx_path.with_name(name), export_dir / name)) if ours else ():
        if sibling.is_file():
            sibling_info = onnx_info(sibling)
            same_graph = sibling_info.metadata.get("graph") == info.metadata.get("graph")
            if _same_weights(sibling_info.metadata, variant, sha256) and same_graph:
                return sibling, sibling_info
            log.info("not using %s: not verified, or not the weights and graph of %s", sibling, onnx_path.name)
    loadable = weights == "random" or (weights is not None and Path(weights).is_file())
    if not ours or variant not in VARIANTS or not loadable:
        raise LsegTrtError(
            f"an fp16 engine needs an fp16 ONNX on a strongly typed TensorRT, and {onnx_path.name} names no weights "
            f"to export one from. Run `lseg-trt export --precision fp16 --weights <checkpoint>` and build from "
            f"that file, or pass --no-fp16 for an fp32 engine"
        )
    log.info("exporting the fp16 model from %s (%s) for a strongly typed build", weights, variant)
    lseg = load_lseg(weights, variant=variant)
    if lseg.weights_sha256 != sha256:
        raise LsegTrtError(
            f"{weights} is no longer the checkpoint {onnx_path.name} was exported from (sha256 differs): "
            f"re-export the fp32 model, or export the fp16 one with `lseg-trt export --precision fp16`"
        )
    exported = onnx_from_lseg(lseg, export_dir, "fp16", opset=info.opset).path
    if exported.name != name:
        raise LsegTrtError(f"{onnx_path.name} does not follow our naming; export the fp16 model explicitly")
    return exported, onnx_info(exported)
