"""ONNX -> serialized TensorRT plan. Nothing else: caches, sidecars and exports live in `lseg_trt.artifacts`.

TensorRT's log goes to stderr. Only the flags chosen here are set; TF32, which TensorRT allows by
default, is cleared unless asked for, so an fp32 engine computes in fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lseg_trt.errors import LsegTrtError
from lseg_trt.files import atomic_path
from lseg_trt.tensorrt.compat import TensorRT
from lseg_trt.tensorrt.options import BuildOptions

log = logging.getLogger(__name__)

# option -> (BuilderFlag name, token in the engine name), in the seed's naming order after tf32
_OPTIONAL_FLAGS = (
    ("tf32", "TF32", "tf32"),
    ("sparse", "SPARSE_WEIGHTS", "sparse"),
    ("disable_timing_cache", "DISABLE_TIMING_CACHE", "noTC"),
    ("gpu_fallback", "GPU_FALLBACK", "gpuFB"),
    ("debug", "DEBUG", "dbg"),
)
_MEMORY_WORDS = ("out of memory", "outofmemory", "insufficient memory", "workspace", "memory pool")


@dataclass(frozen=True)
class Flag:
    """A BuilderFlag to set, and its token in the engine name ("" for FP16: the precision says it)."""

    token: str
    flag: Any


@dataclass(frozen=True)
class Plan:
    data: bytes
    input_name: str
    output_name: str


def select_flags(trt: TensorRT, options: BuildOptions, fp16_flag: bool) -> list[Flag]:
    """The BuilderFlags these options set in this flavour; an option the flavour lacks is logged and
    left out, so the engine name never claims it."""
    flags = [Flag("", trt.builder_flag("FP16"))] if fp16_flag else []
    for option, flag_name, token in _OPTIONAL_FLAGS:
        if not getattr(options, option):
            continue
        flag = trt.builder_flag(flag_name)
        if option == "disable_timing_cache" and not trt.has_timing_cache:
            flag = None  # present in the API, but a no-op: do not claim it in the name
        if flag is None:
            log.warning(
                "skipping --%s: BuilderFlag.%s has no effect in %s", option.replace("_", "-"), flag_name, trt.describe()
            )
        else:
            flags.append(Flag(token, flag))
    return flags


def check_operators(trt: TensorRT, parser, op_types: frozenset[str], onnx_name: str) -> None:  # noqa: ANN001
    """Refuse, before parsing, a model with operators this parser has no importer for: TensorRT 8.x's
    parser stops at the first one with a message that names no way out."""
    missing = trt.unsupported_operators(parser, op_types)
    if missing:
        hint = (
            "; export it at opset 16, which writes LayerNormalization as primitive operators: "
            "`lseg-trt export --opset 16`"
            if "LayerNormalization" in missing
            else ""
        )
        raise LsegTrtError(f"{trt.describe()}'s ONNX parser has no {', '.join(missing)} (in {onnx_name}){hint}")


def plan_from_onnx(
    trt: TensorRT,
    onnx_path: Path,
    options: BuildOptions,
    flags: list[Flag],
    strongly_typed: bool,
    op_types: frozenset[str] = frozenset(),
) -> Plan:
    """Parse `onnx_path` (one image input of rank 4, made of `op_types`) and build it with one
    optimisation profile."""
    m = trt.module
    logger = trt.logger()
    builder = trt.create("Builder", logger)
    network = builder.create_network(trt.network_flags(strongly_typed))
    parser = m.OnnxParser(network, logger)
    check_operators(trt, parser, op_types, onnx_path.name)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LsegTrtError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown error'}")
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise LsegTrtError(f"{onnx_path.name} has {len(names)} inputs ({', '.join(names)}); expected one image input")
    if network.num_outputs != 1:
        raise LsegTrtError(f"{onnx_path.name} has {network.num_outputs} outputs; expected one feature map")
    tensor = network.get_input(0)
    if len(tensor.shape) != 4:
        raise LsegTrtError(
            f"{onnx_path.name}: input {tensor.name} has shape {tuple(tensor.shape)}, expected (B, 3, H, W)"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(m.MemoryPoolType.WORKSPACE, options.workspace)
    tf32 = trt.builder_flag("TF32")
    if tf32 is not None:
        config.clear_flag(tf32)
    for flag in flags:
        config.set_flag(flag.flag)
    if options.tactic_sources is not None:
        config.set_tactic_sources(trt.tactic_source_mask(options.tactic_sources))
    for feature in trt.enum_members("PreviewFeature", options.preview_features, "--preview-features"):
        config.set_preview_feature(feature, True)
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
        said = " ".join(logger.messages).lower()
        if any(word in said for word in _MEMORY_WORDS):
            raise LsegTrtError(
                f"TensorRT ran out of memory building {onnx_path.name} with a {options.workspace >> 20} MiB "
                f"workspace: raise --workspace (bytes), or shrink the profile (its log is on stderr above)"
            )
        raise LsegTrtError(f"TensorRT failed to build an engine from {onnx_path.name} (its log is on stderr above)")
    if cache is not None:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return Plan(bytes(plan), tensor.name, network.get_output(0).name)
