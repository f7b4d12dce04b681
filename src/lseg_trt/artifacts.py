"""The artefacts between weights and a runner: cached ONNX exports, cached engines and their sidecar
records, and opening a model from weights, an ONNX file or an engine.

Reuse rules (anything else re-exports or rebuilds; nothing stale or broken is ever handed back):
- an ONNX file is reused when its metadata names the same variant and weights hash and records a
  passed verification;
- an engine is reused when its sidecar records exactly the request at hand (flavour and version, the
  ONNX file's sha256, precision, flags, TF32, profile, workspace, target) and the engine file still
  has the size and sha256 the sidecar recorded;
- the fp16 sibling ONNX that a strongly typed flavour builds fp16 engines from is used only when it
  came from the same weights as the fp32 file it stands in for.

`EngineRecord` is the only code that knows the sidecar's JSON format; `model_info_from_metadata` the
only code that decodes the ONNX metadata that `lseg_trt.export` writes.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lseg_trt._version import __version__
from lseg_trt.errors import LsegTrtError
from lseg_trt.export import PRECISIONS, OnnxInfo, inspect_onnx, onnx_from_lseg, onnx_name, verified
from lseg_trt.files import atomic_path, remove_stale_temps
from lseg_trt.models import VARIANTS, LSeg, load_lseg
from lseg_trt.models.checkpoint import file_sha256
from lseg_trt.names import component_from_stem
from lseg_trt.tensorrt.builder import plan_from_onnx, select_flags
from lseg_trt.tensorrt.compat import FLAVOURS, TensorRT, load
from lseg_trt.tensorrt.options import BuildOptions, Profile, engine_name

log = logging.getLogger(__name__)

BACKEND_OF_KIND = {"weights": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- ONNX ----------------------------------------------------------------------------------------------


def onnx_for(lseg: LSeg, precision: str, cache_dir: Path) -> Path:
    """`<cache_dir>/lseg_<variant>_<weights>_<precision>.onnx`, exported (and verified) unless a verified
    export of these very weights is already there."""
    path = Path(cache_dir) / onnx_name(lseg, precision)
    if path.is_file():
        meta = inspect_onnx(path).metadata
        if _same_weights(meta, lseg.variant, lseg.weights_sha256) and meta.get("io_names") == "lseg-trt":
            log.info("reusing %s", path)
            return path
        log.info("re-exporting %s: it was made from other weights, or never verified", path.name)
    return onnx_from_lseg(lseg, cache_dir, precision).path


def _same_weights(meta: dict[str, str], variant: str | None, sha256: str | None) -> bool:
    return (
        variant is not None
        and sha256 is not None
        and meta.get("variant") == variant
        and meta.get("checkpoint_sha256") == sha256
        and verified(meta)
    )


def _fp16_sibling(onnx_path: Path, info: OnnxInfo) -> Path:
    """The fp16 model of the same weights beside one of our fp32 models, exported when missing or
    made from other weights; a user error when the fp32 model names no weights we can load."""
    variant, weights, sha256 = (info.metadata.get(k) for k in ("variant", "weights", "checkpoint_sha256"))
    sibling = onnx_path.with_name(onnx_path.stem[: -len("_fp32")] + "_fp16.onnx")
    if onnx_path.stem.endswith("_fp32") and sibling.is_file():
        if _same_weights(inspect_onnx(sibling).metadata, variant, sha256):
            return sibling
        log.info("re-exporting %s: not verified, or not made from the weights of %s", sibling.name, onnx_path.name)
    loadable = weights == "random" or (weights is not None and Path(weights).is_file())
    if not onnx_path.stem.endswith("_fp32") or variant not in VARIANTS or not loadable:
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
    exported = onnx_from_lseg(lseg, onnx_path.parent, "fp16", opset=info.opset).path
    if exported != sibling:
        raise LsegTrtError(f"{onnx_path.name} does not follow our naming; export the fp16 model explicitly")
    return exported


# --- engines -------------------------------------------------------------------------------------------


def _target_device() -> dict[str, Any]:
    """The GPU this process sees; TensorRT-RTX builds portable engines without one."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    return {"gpu": None, "compute_capability": None}


def _profile_dict(profile: Profile) -> dict[str, list[int]]:
    return {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}


@dataclass(frozen=True)
class EngineRecord:
    """The engine's JSON sidecar (`<engine>.json`): what was requested, what came out, and the model."""

    request: dict[str, Any]  # flavour, version, onnx, onnx_sha256, precision, flags, tf32, profile, workspace, target
    input_name: str
    output_name: str
    onnx_metadata: dict[str, str]  # variant, weights, mean/std: what running the engine needs
    engine_size: int
    engine_sha256: str
    options: dict[str, Any]
    build_seconds: float
    built_at: str
    lseg_trt_version: str

    @property
    def flavour(self) -> str:
        """ "tensorrt" or "tensorrt-rtx": the flavour that built the engine and must run it."""
        return self.request["flavour"]

    @property
    def profile(self) -> Profile:
        p = self.request["profile"]
        return Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))  # type: ignore[arg-type]

    @property
    def precision(self) -> str:
        return self.request["precision"]

    @property
    def tf32(self) -> bool:
        return self.request["tf32"]

    @staticmethod
    def path_for(engine_path: Path) -> Path:
        return Path(engine_path).with_suffix(".json")

    @classmethod
    def read(cls, engine_path: Path) -> EngineRecord:
        """The sidecar of `engine_path`; a user error when it is missing or not what we write."""
        sidecar = cls.path_for(engine_path)
        hint = "rebuild the engine with `lseg-trt build`"
        try:
            data = json.loads(sidecar.read_text())
        except FileNotFoundError:
            raise LsegTrtError(f"engine sidecar {sidecar} is missing; {hint}") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise LsegTrtError(f"engine sidecar {sidecar} is unreadable ({e}); {hint}") from None
        try:
            return cls._decode(data)
        except (KeyError, TypeError, ValueError) as e:
            raise LsegTrtError(f"engine sidecar {sidecar} is malformed ({e}); {hint}") from None

    @classmethod
    def _decode(cls, data: object) -> EngineRecord:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)

        need(isinstance(data, dict), "not a JSON object")
        assert isinstance(data, dict)
        request, meta = data["request"], data["onnx_metadata"]
        need(isinstance(request, dict), "request is not an object")
        need(request.get("flavour") in FLAVOURS, f"unknown flavour {request.get('flavour')!r}")
        need(request.get("precision") in PRECISIONS, f"unknown precision {request.get('precision')!r}")
        need(isinstance(request.get("tf32"), bool), "tf32 is not true/false")
        profile = request["profile"]
        need(isinstance(profile, dict), "profile is not an object")
        for key in ("min", "opt", "max"):
            shape = profile[key]
            need(
                isinstance(shape, list) and len(shape) == 4 and all(type(d) is int and d > 0 for d in shape),
                f"profile {key} is not 4 positive integers",
            )
        need(isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values()), "onnx_metadata")
        for key in ("input", "output"):
            need(isinstance(data[key], str) and data[key] != "", f"{key} is not a tensor name")
        need(type(data["engine_size"]) is int and data["engine_size"] > 0, "engine_size")
        need(isinstance(data["engine_sha256"], str) and _SHA256.fullmatch(data["engine_sha256"]), "engine_sha256")
        need(isinstance(data["options"], dict), "options is not an object")
        return cls(
            request=request,
            input_name=data["input"],
            output_name=data["output"],
            onnx_metadata=meta,
            engine_size=data["engine_size"],
            engine_sha256=data["engine_sha256"],
            options=data["options"],
            build_seconds=float(data["build_seconds"]),
            built_at=str(data["built_at"]),
            lseg_trt_version=str(data["lseg_trt_version"]),
        )

    def write(self, engine_path: Path) -> None:
        data = {
            "request": self.request,
            "input": self.input_name,
            "output": self.output_name,
            "engine_size": self.engine_size,
            "engine_sha256": self.engine_sha256,
            "onnx_metadata": self.onnx_metadata,
            "options": self.options,
            "build_seconds": self.build_seconds,
            "built_at": self.built_at,
            "lseg_trt_version": self.lseg_trt_version,
        }
        with atomic_path(self.path_for(engine_path)) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")

    def matches_file(self, engine_path: Path, *, hash_it: bool = True) -> bool:
        """Whether the engine file is the one this record describes (size, and sha256 unless told not to)."""
        try:
            if engine_path.stat().st_size != self.engine_size:
                return False
        except FileNotFoundError:
            return False
        return not hash_it or file_sha256(engine_path) == self.engine_sha256


def _reusable(engine: Path, request: dict[str, Any]) -> bool:
    if not engine.is_file():
        return False
    try:
        record = EngineRecord.read(engine)
    except LsegTrtError as e:
        log.info("rebuilding %s: %s", engine.name, e)
        return False
    if record.request != request:
        log.info("rebuilding %s: its sidecar does not match the request", engine.name)
        return False
    if not record.matches_file(engine):
        log.info("rebuilding %s: the file is not the engine its sidecar records (truncated or replaced?)", engine.name)
        return False
    return True


def _source(trt: TensorRT, onnx_path: Path, options: BuildOptions) -> tuple[Path, OnnxInfo, str, bool]:
    """Which ONNX to build, its info, the engine's precision, and whether the FP16 flag does the work."""
    info = inspect_onnx(onnx_path)
    if info.precision == "fp16" and not options.fp16:
        raise LsegTrtError(f"{onnx_path.name} is an fp16 model; for an fp32 engine build from the fp32 ONNX")
    if not options.fp16 or info.precision == "fp16":
        return onnx_path, info, info.precision, False
    if trt.has_fp16_flag:
        return onnx_path, info, "fp16", True
    sibling = _fp16_sibling(onnx_path, info)
    log.info("%s has no FP16 flag: building from the fp16 model %s", trt.describe(), sibling.name)
    return sibling, inspect_onnx(sibling), "fp16", False


def engine_for(onnx_path: Path, options: BuildOptions, cache_dir: Path) -> Path:
    """Build (or reuse) the engine for `onnx_path` in `cache_dir`; returns the `.engine` path (its
    sidecar is `EngineRecord.path_for(engine)`)."""
    options.validate()
    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    if not onnx_path.is_file():
        raise LsegTrtError(f"ONNX model not found: {onnx_path}")
    trt = load(options.flavour)
    source, info, precision, fp16_flag = _source(trt, onnx_path, options)
    flags = select_flags(trt, options, fp16_flag)
    tokens = [f.token for f in flags if f.token]
    engine = cache_dir / engine_name(source.stem, precision, tokens, options.workspace, options.profile)
    request = {
        "flavour": trt.flavour,
        "version": trt.version,
        "onnx": source.name,
        "onnx_sha256": file_sha256(source),
        "precision": precision,
        "flags": tokens,
        "tf32": "tf32" in tokens,
        "profile": _profile_dict(options.profile),
        "workspace": options.workspace,
        "target": _target_device(),
    }
    if _reusable(engine, request):
        log.info("reusing %s (sidecar and file match the request)", engine.name)
        return engine
    remove_stale_temps(cache_dir)
    started = time.perf_counter()
    log.info("building %s with %s ...", engine.name, trt.describe())
    plan = plan_from_onnx(trt, source, options, flags, strongly_typed=precision == "fp16" and not fp16_flag)
    with atomic_path(engine) as tmp:
        tmp.write_bytes(plan.data)
    seconds = time.perf_counter() - started
    EngineRecord(
        request=request,
        input_name=plan.input_name,
        output_name=plan.output_name,
        onnx_metadata=info.metadata,
        engine_size=len(plan.data),
        engine_sha256=file_sha256(engine),
        options=options.to_dict(),
        build_seconds=round(seconds, 2),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        lseg_trt_version=__version__,
    ).write(engine)
    log.info("built %s (%.1f MiB) in %.1f s", engine.name, len(plan.data) / 2**20, seconds)
    return engine


# --- opening a model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What running a model needs to know beyond its file: decoded and validated."""

    variant: str
    weights_name: str  # a safe path component
    weights_sha256: str
    precision: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


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
        weights_sha256=meta.get("checkpoint_sha256", ""),
        precision=precision,
        mean=_triple(meta, "mean", source, positive=False),
        std=_triple(meta, "std", source, positive=True),
    )


@dataclass
class ModelSource:
    """A model as `extract`, `segment` and `bench` are given it: weights, an ONNX file or an engine."""

    kind: str  # "weights" | "onnx" | "engine"
    info: ModelInfo
    lseg: LSeg | None  # the loaded network, for kind == "weights"
    path: Path | None  # the ONNX or engine file
    backend: str  # the backend family the model implies: "torch", "onnxruntime" or "tensorrt"
    record: EngineRecord | None = None  # the sidecar, for kind == "engine"

    @classmethod
    def from_lseg(cls, lseg: LSeg) -> ModelSource:
        """A loaded network as a source (the runners take either)."""
        info = ModelInfo(
            variant=lseg.variant,
            weights_name=lseg.weights_name,
            weights_sha256=lseg.weights_sha256,
            precision="fp32",
            mean=lseg.mean,
            std=lseg.std,
        )
        return cls("weights", info, lseg, None, BACKEND_OF_KIND["weights"])


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
        info = model_info_from_metadata(inspect_onnx(path).metadata, str(path))
    else:
        record = EngineRecord.read(path)
        if not record.matches_file(path, hash_it=False):
            raise LsegTrtError(f"{path} is not the engine its sidecar records (truncated?); rebuild it")
        info = model_info_from_metadata(record.onnx_metadata, str(EngineRecord.path_for(path)))
        info = dataclasses.replace(info, precision=record.precision)  # the FP16 flag may make an fp32 ONNX fp16
    if variant is not None and variant != info.variant:
        raise LsegTrtError(f"{path} holds variant {info.variant}, not {variant}")
    return ModelSource(kind, info, None, path, BACKEND_OF_KIND[kind], record)
