"""ONNX -> TensorRT engine, with a JSON sidecar and a cache that never hands back a stale engine.

An engine is reused only when its sidecar records exactly the request at hand: flavour and version,
the ONNX file's sha256, precision, flags, profile, workspace and target. Anything else rebuilds it
(the seed's glob picked whichever `<base>__*.trt` it found first). Engine, sidecar and timing cache
are written atomically.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from lseg_trt import __version__
from lseg_trt.errors import LsegTrtError
from lseg_trt.export import OnnxInfo, inspect_onnx
from lseg_trt.files import atomic_path
from lseg_trt.models.checkpoint import file_sha256
from lseg_trt.tensorrt.compat import TensorRT, load
from lseg_trt.tensorrt.options import BuildOptions, engine_name

log = logging.getLogger(__name__)

# option -> (BuilderFlag name, token in the engine name), in the seed's naming order
_OPTIONAL_FLAGS = (
    ("sparse", "SPARSE_WEIGHTS", "sparse"),
    ("disable_timing_cache", "DISABLE_TIMING_CACHE", "noTC"),
    ("gpu_fallback", "GPU_FALLBACK", "gpuFB"),
    ("debug", "DEBUG", "dbg"),
)


def fp16_sibling(onnx_path: Path) -> Path | None:
    """Where `lseg-trt export --precision fp16` puts the fp16 twin of one of our fp32 models."""
    stem = onnx_path.stem
    return onnx_path.with_name(stem[: -len("_fp32")] + "_fp16.onnx") if stem.endswith("_fp32") else None


def target_device() -> dict[str, Any]:
    """The GPU this process sees; TensorRT-RTX builds portable engines without one."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    return {"gpu": None, "compute_capability": None}


def _plan(trt: TensorRT, onnx_path: Path, options: BuildOptions) -> tuple[Path, OnnxInfo, str, list[tuple[str, Any]]]:
    """Decide which ONNX to build (and read it once), the engine's precision and the flags to set;
    log every skip."""
    info = inspect_onnx(onnx_path)
    precision = info.precision
    if precision == "fp16" and not options.fp16:
        raise LsegTrtError(f"{onnx_path.name} is an fp16 model; for an fp32 engine build from the fp32 ONNX")
    flags: list[tuple[str, Any]] = []
    if options.fp16 and precision == "fp32":
        if trt.has_fp16_flag:
            flags.append(("", trt.builder_flag("FP16")))
            precision = "fp16"
        else:
            sibling = fp16_sibling(onnx_path)
            if sibling is not None and not sibling.is_file():
                sibling = _export_fp16_twin(onnx_path, info, sibling)
            if sibling is None or not sibling.is_file():
                raise LsegTrtError(
                    f"{trt.describe()} builds only strongly typed networks: an fp16 engine needs an fp16 ONNX. "
                    f"Run `lseg-trt export --precision fp16 --weights <checkpoint>` and build from that file, "
                    f"or pass --no-fp16 for an fp32 engine"
                )
            log.info("%s has no FP16 flag: building from the fp16 model %s", trt.describe(), sibling.name)
            onnx_path, info, precision = sibling, inspect_onnx(sibling), "fp16"
    for option, flag_name, token in _OPTIONAL_FLAGS:
        if getattr(options, option):
            flag = trt.builder_flag(flag_name)
            if option == "disable_timing_cache" and not trt.has_timing_cache:
                flag = None  # present in the API, but a no-op: do not claim it in the name
            if flag is None:
                log.warning(
                    "skipping --%s: BuilderFlag.%s has no effect in %s",
                    option.replace("_", "-"),
                    flag_name,
                    trt.describe(),
                )
            else:
                flags.append((token, flag))
    return onnx_path, info, precision, flags


def _export_fp16_twin(onnx_path: Path, info: OnnxInfo, sibling: Path) -> Path | None:
    """Export the fp16 model when the fp32 one names weights we can load (a checkpoint or `random`)."""
    from lseg_trt.export import onnx_from_lseg, verify_onnx
    from lseg_trt.models import load_lseg

    weights, variant = info.metadata.get("weights"), info.metadata.get("variant")
    if not weights or not variant or (weights != "random" and not Path(weights).is_file()):
        return None
    log.info("exporting the fp16 model from %s (%s) for a strongly typed build", weights, variant)
    lseg = load_lseg(weights, variant=variant)
    exported = onnx_from_lseg(lseg, onnx_path.parent, "fp16", opset=info.opset)
    if not all(r.passed for r in verify_onnx(exported, lseg, "fp16")):
        exported.unlink()
        raise LsegTrtError(f"the fp16 export of {weights} failed verification against PyTorch")
    return exported if exported == sibling else None


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def engine_from_onnx(onnx_path: str | Path, options: BuildOptions, out_dir: str | Path) -> Path:
    """Build (or reuse) the engine for `onnx_path`; returns the `.engine` path (sidecar: `.json`)."""
    options.validate()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise LsegTrtError(f"ONNX model not found: {onnx_path}")
    trt = load(options.flavour)
    source, info, precision, flags = _plan(trt, onnx_path, options)
    tokens = [token for token, _ in flags if token]
    engine = Path(out_dir) / engine_name(source.stem, precision, tokens, options.workspace)
    sidecar = engine.with_suffix(".json")
    request = {
        "flavour": trt.flavour,
        "version": trt.version,
        "onnx": source.name,
        "onnx_sha256": file_sha256(source),
        "precision": precision,
        "flags": tokens,
        "profile": {
            "min": list(options.profile.min),
            "opt": list(options.profile.opt),
            "max": list(options.profile.max),
        },
        "workspace": options.workspace,
        "target": target_device(),
    }
    previous = _read_sidecar(sidecar)
    if engine.is_file() and previous is not None and previous.get("request") == request:
        log.info("reusing %s (sidecar matches the request)", engine.name)
        return engine
    if engine.is_file():
        log.info("rebuilding %s: its sidecar does not match the request", engine.name)
    started = time.perf_counter()
    log.info("building %s with %s ...", engine.name, trt.describe())
    plan, input_name = _build(trt, source, options, flags, precision == "fp16" and not trt.has_fp16_flag)
    with atomic_path(engine) as tmp:
        tmp.write_bytes(plan)
    seconds = time.perf_counter() - started
    record = {
        "request": request,
        "input": input_name,
        "onnx_metadata": info.metadata,  # variant, weights, mean/std: what `extract --engine` needs
        "options": options.to_dict(),
        "build_seconds": round(seconds, 2),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lseg_trt_version": __version__,
    }
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    log.info("built %s (%.1f MiB) in %.1f s", engine.name, len(plan) / 2**20, seconds)
    return engine


def _build(
    trt: TensorRT, onnx_path: Path, options: BuildOptions, flags: list[tuple[str, Any]], strongly_typed: bool
) -> tuple[bytes, str]:
    m = trt.module
    logger = m.Logger(m.Logger.WARNING)
    builder = m.Builder(logger)
    network = builder.create_network(trt.network_flags(strongly_typed))
    parser = m.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LsegTrtError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown error'}")
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise LsegTrtError(f"{onnx_path.name} has {len(names)} inputs ({', '.join(names)}); expected one image input")
    tensor = network.get_input(0)
    if len(tensor.shape) != 4:
        raise LsegTrtError(
            f"{onnx_path.name}: input {tensor.name} has shape {tuple(tensor.shape)}, expected (B, 3, H, W)"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(m.MemoryPoolType.WORKSPACE, options.workspace)
    for _, flag in flags:
        config.set_flag(flag)
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, options.profile.min, options.profile.opt, options.profile.max)
    config.add_optimization_profile(profile)
    cache = None
    if options.timing_cache is not None and not trt.has_timing_cache:
        log.warning("skipping --timing-cache: timing-cache operations are no-ops in %s", trt.describe())
    elif options.timing_cache is not None:
        data = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise LsegTrtError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    if cache is not None:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan), tensor.name
