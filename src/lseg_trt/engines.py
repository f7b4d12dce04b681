"""The TensorRT engine cache: engines built from ONNX files, each with a JSON sidecar record.

Reuse rule (anything else rebuilds; nothing stale or broken is ever handed back): an engine is reused
when its sidecar records exactly the request at hand (flavour and version, the ONNX file's sha256,
precision, flags, TF32, profile, workspace, target) and the engine file still has the size and sha256
the sidecar recorded.

`EngineRecord` is the only code that knows the sidecar's JSON format.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lseg_trt.errors import LsegTrtError
from lseg_trt.export import PRECISIONS, OnnxInfo
from lseg_trt.files import atomic_path, file_sha256, remove_stale_temps, write_json
from lseg_trt.hwinfo import gpu_target
from lseg_trt.onnx_cache import fp16_sibling, onnx_info
from lseg_trt.sidecars import file_matches, read_json, stamp
from lseg_trt.tensorrt.builder import plan_from_onnx, select_flags
from lseg_trt.tensorrt.compat import FLAVOURS, TensorRT, load
from lseg_trt.tensorrt.options import BuildOptions, Profile, engine_name, names_token

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        """fp16, fp32, or tf32 for an fp32 engine that may use TF32 kernels (judged like fp16, whose
        10-bit significand it shares, never like strict fp32)."""
        return "tf32" if self.request["precision"] == "fp32" and self.request["tf32"] else self.request["precision"]

    @staticmethod
    def path_for(engine_path: Path) -> Path:
        return Path(engine_path).with_suffix(".json")

    @classmethod
    def read(cls, engine_path: Path) -> EngineRecord:
        """The sidecar of `engine_path`; a user error when it is missing or not what we write."""
        sidecar = cls.path_for(engine_path)
        hint = "rebuild the engine with `lseg-trt build`"
        try:
            data = read_json(sidecar)
        except ValueError as e:
            raise LsegTrtError(f"engine sidecar {sidecar} is {e}; {hint}") from None
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
        write_json(
            self.path_for(engine_path),
            {
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
            },
        )

    def matches_file(self, engine_path: Path, *, hash_it: bool = True) -> bool:
        """Whether the engine file is the one this record describes (size, and sha256 unless told not to)."""
        return file_matches(engine_path, self.engine_size, self.engine_sha256, hash_it=hash_it)


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


def _source(
    trt: TensorRT, onnx_path: Path, options: BuildOptions, export_dir: Path
) -> tuple[Path, OnnxInfo, str, bool]:
    """Which ONNX to build, its info, the engine's precision, and whether the FP16 flag does the work."""
    info = onnx_info(onnx_path)
    if info.precision == "fp16" and not options.fp16:
        raise LsegTrtError(f"{onnx_path.name} is an fp16 model; for an fp32 engine build from the fp32 ONNX")
    if not options.fp16 or info.precision == "fp16":
        return onnx_path, info, info.precision, False
    if trt.has_fp16_flag:
        return onnx_path, info, "fp16", True
    sibling, sibling_info = fp16_sibling(onnx_path, info, export_dir)
    log.info("%s has no FP16 flag: building from the fp16 model %s", trt.describe(), sibling.name)
    return sibling, sibling_info, "fp16", False


def engine_for(onnx_path: Path, options: BuildOptions, cache_dir: Path) -> Path:
    """Build (or reuse) the engine for `onnx_path` in `cache_dir`; returns the `.engine` path (its
    sidecar is `EngineRecord.path_for(engine)`)."""
    options.validate()
    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    if not onnx_path.is_file():
        raise LsegTrtError(f"ONNX model not found: {onnx_path}")
    trt = load(options.flavour)
    # names this flavour lacks: a user error before anything is exported or built
    if options.tactic_sources is not None:
        trt.tactic_source_mask(options.tactic_sources)
    trt.enum_members("PreviewFeature", options.preview_features, "--preview-features")
    source, info, precision, fp16_flag = _source(trt, onnx_path, options, cache_dir)
    flags = select_flags(trt, options, fp16_flag)
    tokens = [f.token for f in flags if f.token]
    if options.tactic_sources is not None:
        tokens.append(names_token("tac", options.tactic_sources))
    if options.preview_features:
        tokens.append(names_token("pv", options.preview_features))
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
        "target": gpu_target(),
    }
    if options.tactic_sources is not None:  # absent otherwise, so engines built before the option stay valid
        request["tactic_sources"] = list(options.tactic_sources)
    if options.preview_features:  # likewise
        request["preview_features"] = list(options.preview_features)
    if _reusable(engine, request):
        log.info("reusing %s (sidecar and file match the request)", engine.name)
        return engine
    remove_stale_temps(cache_dir)
    started = time.perf_counter()
    log.info("building %s with %s ...", engine.name, trt.describe())
    strongly_typed = precision == "fp16" and not fp16_flag
    plan = plan_from_onnx(trt, source, options, flags, strongly_typed, info.op_types)
    with atomic_path(engine) as tmp:
        tmp.write_bytes(plan.data)
    seconds = time.perf_counter() - started
    EngineRecord(
        request=request,
        input_name=plan.input_name,
        output_name=plan.output_name,
        onnx_metadata=info.metadata,
        engine_size=len(plan.data),
        engine_sha256=hashlib.sha256(plan.data).hexdigest(),
        options=options.to_dict(),
        build_seconds=round(seconds, 2),
        **stamp(),
    ).write(engine)
    log.info("built %s (%.1f MiB) in %.1f s", engine.name, len(plan.data) / 2**20, seconds)
    return engine


def fidelity_path(engine_path: Path) -> Path:
    """`<engine>.fidelity.json`: a passing `lseg-trt fidelity --engine` run, what `--backend auto` trusts."""
    return Path(engine_path).with_suffix(".fidelity.json")


def record_fidelity(engine_path: Path, record: EngineRecord, passed: bool, sizes: list[str], worst: dict) -> None:
    """Keep a fidelity run's verdict beside the engine, tied to its bytes (sha256): a rebuilt engine has
    none until it is checked again."""
    write_json(
        fidelity_path(engine_path),
        {"engine_sha256": record.engine_sha256, "passed": passed, "sizes": sizes, "worst": worst, **stamp()},
    )


def fidelity_passed(engine_path: Path, record: EngineRecord) -> bool:
    """Whether this very engine passed `lseg-trt fidelity` (a missing, damaged or stale record: no)."""
    try:
        data = read_json(fidelity_path(engine_path))
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("passed") is True and data.get("engine_sha256") == record.engine_sha256
