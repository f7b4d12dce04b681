"""Opening a model from weights, an ONNX file or an engine, as `extract`, `segment` and `bench` are
given it: a `ModelSource` with a validated `ModelInfo`.

`model_info_from_metadata` is the only code that decodes the ONNX metadata that `lseg_trt.export` writes
(an engine's sidecar carries the same metadata).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lseg_trt.engines import EngineRecord
from lseg_trt.errors import LsegTrtError
from lseg_trt.export import PRECISIONS, verification_status
from lseg_trt.models import VARIANTS, LSeg, load_lseg
from lseg_trt.names import component_from_stem
from lseg_trt.onnx_cache import onnx_info

BACKEND_OF_KIND = {"weights": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What running a model needs to know beyond its file: decoded and validated."""

    variant: str
    weights_name: str  # a safe path component
    precision: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # asked for the weights' sha256 when first needed: hashing a checkpoint (or a random network's 1.2 GB
    # of tensors) takes seconds, and a torch runner's start never needs it
    sha256_of: Callable[[], str] = field(compare=False, repr=False)

    @property
    def weights_sha256(self) -> str:
        return self.sha256_of()


def _triple(meta: dict[str, str], key: str, source: str, positive: bool) -> tuple[float, float, float]:
    rule = "a JSON list of 3 finite numbers" + (" above 0" if positive else "")
    try:
        values = json.loads(meta[key])
    except KeyError:
        raise LsegTrtError(f"{source}: metadata has no {key!r}") from None
    except (TypeError, ValueError):
        values = None
    ok = (
        isinstance(values, list)
        and len(values) == 3
        and all(type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in values)
    )
    if not ok:
        raise LsegTrtError(f"{source}: metadata {key!r} = {str(meta[key])[:60]!r} is not {rule}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def model_info_from_metadata(meta: dict[str, str], source: str) -> ModelInfo:
    """Decode the metadata `lseg_trt.export` writes (`source` names the file in messages)."""
    if "variant" not in meta or "mean" not in meta:
        raise LsegTrtError(
            f"{source} carries no lseg-trt metadata (variant, mean/std); export it with `lseg-trt export` "
            f"or use --weights"
        )
    variant = meta["variant"]
    if variant not in VARIANTS:
        raise LsegTrtError(f"{source}: unknown variant {variant[:60]!r} in its metadata; known: {', '.join(VARIANTS)}")
    precision = meta.get("precision")
    if precision not in PRECISIONS:
        raise LsegTrtError(f"{source}: metadata precision {str(precision)[:20]!r} is not {' or '.join(PRECISIONS)}")
    weights = meta.get("weights", "")
    if not weights:
        raise LsegTrtError(f"{source}: metadata names no weights")
    weights_name = component_from_stem(Path(weights).stem)
    return ModelInfo(
        variant=variant,
        weights_name=weights_name,
        precision=precision,
        mean=_triple(meta, "mean", source, positive=False),
        std=_triple(meta, "std", source, positive=True),
        sha256_of=functools.partial(str, meta.get("checkpoint_sha256", "")),
    )


@dataclass
class ModelSource:
    """A model as `extract`, `segment` and `bench` are given it: weights, an ONNX file or an engine."""

    kind: str  # "weights" | "onnx" | "engine"
    info: ModelInfo
    lseg: LSeg | None  # the loaded network, for kind == "weights"
    path: Path | None  # the ONNX or engine file
    record: EngineRecord | None = None  # the sidecar, for kind == "engine"

    @property
    def backend(self) -> str:
        """The backend family the model implies: "torch", "onnxruntime" or "tensorrt"."""
        return BACKEND_OF_KIND[self.kind]

    @classmethod
    def from_lseg(cls, lseg: LSeg) -> ModelSource:
        """A loaded network as a source (the runners take either)."""
        info = ModelInfo(
            variant=lseg.variant,
            weights_name=lseg.weights_name,
            precision="fp32",
            mean=lseg.mean,
            std=lseg.std,
            sha256_of=lambda: lseg.weights_sha256,  # cached by the network
        )
        return cls("weights", info, lseg, None)


def open_model(
    *, weights: str | None = None, onnx: str | None = None, engine: str | None = None, variant: str | None = None
) -> ModelSource:
    """Open exactly one of weights (a checkpoint or "random"), an ONNX file or an engine.

    `variant` forces the architecture of weights; for an ONNX file or an engine it must match theirs.
    """
    given = {k: v for k, v in (("weights", weights), ("onnx", onnx), ("engine", engine)) if v is not None}
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise LsegTrtError(f"give exactly one of --weights, --onnx and --engine{got}")
    kind, value = next(iter(given.items()))
    if kind == "weights":
        return ModelSource.from_lseg(load_lseg(value, variant=variant))
    path = Path(value)
    if not path.is_file():
        raise LsegTrtError(f"{'ONNX model' if kind == 'onnx' else 'engine'} not found: {path}")
    record = None
    if kind == "onnx":
        inspected = onnx_info(path)
        meta = inspected.metadata
        info = model_info_from_metadata(meta, str(path))
        out_c = VARIANTS[info.variant].out_c
        if inspected.channels is not None and inspected.channels != out_c:
            raise LsegTrtError(
                f"{path}: its metadata says {info.variant}, whose features have {out_c} channels, but the graph "
                f"puts out {inspected.channels}"
            )
        status = verification_status(meta)
        if status is False:
            raise LsegTrtError(f"{path} failed its check against PyTorch (or its record is damaged); re-export it")
        if status is None:
            log.warning("%s was exported without verification (--no-verify): its features are unchecked", path)
    else:
        record = EngineRecord.read(path)
        if not record.matches_file(path, hash_it=False):
            raise LsegTrtError(f"{path} is not the engine its sidecar records (truncated?); rebuild it")
        info = model_info_from_metadata(record.onnx_metadata, str(EngineRecord.path_for(path)))
        info = dataclasses.replace(info, precision=record.precision)  # the FP16 flag may make an fp32 ONNX fp16
    if variant is not None and variant != info.variant:
        raise LsegTrtError(f"{path} holds variant {info.variant}, not {variant}")
    return ModelSource(kind, info, None, path, record)
