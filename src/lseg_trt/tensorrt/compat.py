"""The only module that knows TensorRT comes in flavours and generations.

`tensorrt` 8.5-10.x has `BuilderFlag.FP16` (weakly typed networks may pick fp16 kernels); TensorRT 11 and
TensorRT-RTX (`tensorrt_rtx_bindings`, which also builds ahead-of-time on a machine without a GPU)
build only strongly typed networks, so precision comes from the ONNX file's own types (11 keeps
`STRONGLY_TYPED`, now member 0, as an ignored flag, and drops `EXPLICIT_BATCH`). TensorRT 8.x
(JetPack 5's, and the first with Hopper kernels) still defaults to implicit-batch networks and has no
strongly typed ones; 8.5's ONNX parser lacks LayerNormalization (opset 17), 8.6's has it.
Everything else asks this module what the installed flavour can do, by probing its API; nothing
parses version strings.

`tensorrt` needs CUDA before it builds anything: without a GPU and driver it can use, `Builder` and
`Runtime` come back empty (pybind11 raises TypeError "factory function returned nullptr" after TensorRT
logs "CUDA initialization failure with error: 35"), which `create` turns into a one-line error.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from functools import cache
from types import ModuleType

from lseg_trt.errors import LsegTrtError, MissingDependencyError

log = logging.getLogger(__name__)

FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
INSTALL_HINT = {
    "tensorrt": "pip install tensorrt (needs an NVIDIA GPU to run engines)",
    "tensorrt-rtx": "pip install 'lseg-trt[tensorrt-rtx]'",
}


@dataclass(frozen=True)
class TensorRT:
    """An imported TensorRT flavour and what it supports."""

    flavour: str  # "tensorrt" or "tensorrt-rtx"
    module: ModuleType

    @property
    def version(self) -> str:
        return str(self.module.__version__)

    @property
    def has_fp16_flag(self) -> bool:
        """TensorRT 10.x: fp16 through a builder flag on an fp32 network."""
        return hasattr(self.module.BuilderFlag, "FP16")

    @property
    def has_timing_cache(self) -> bool:
        """TensorRT-RTX (>= 1.2) keeps the timing-cache API but makes every operation a no-op."""
        return self.flavour != "tensorrt-rtx"

    def builder_flag(self, name: str):  # noqa: ANN201 - a trt.BuilderFlag
        """The named BuilderFlag, or None when this flavour lacks it (callers log the skip)."""
        return getattr(self.module.BuilderFlag, name, None)

    @property
    def has_implicit_batch(self) -> bool:
        """TensorRT < 10 still builds implicit-batch networks unless told otherwise; its builder is the
        one that kept `max_batch_size`, the implicit-batch setting that 10 removed."""
        return hasattr(self.module.Builder, "max_batch_size")

    def network_flags(self, strongly_typed: bool) -> int:
        """Creation flags: explicit batch (asked for where implicit batch still exists, the only mode since
        TensorRT 10); strong typing where the flavour offers the flag (RTX and 11 are strongly typed
        regardless, 8.x has no such networks)."""
        creation = self.module.NetworkDefinitionCreationFlag
        flags = (1 << int(creation.EXPLICIT_BATCH)) if self.has_implicit_batch else 0
        typed = getattr(creation, "STRONGLY_TYPED", None)
        return flags | ((1 << int(typed)) if (strongly_typed and typed is not None) else 0)

    def enum_names(self, enum: str) -> list[str]:
        """The members of one of this flavour's option enums (`TacticSource`: cuBLAS, cuDNN, ... in TensorRT
        8-10, two in RTX and 11; `PreviewFeature`: a different set in every generation)."""
        return sorted(getattr(getattr(self.module, enum, None), "__members__", {}))

    def enum_members(self, enum: str, names: tuple[str, ...], option: str) -> list:
        """The named members of `enum`, or a user error that lists the ones this flavour has."""
        known = self.enum_names(enum)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LsegTrtError(
                f"{option}: {', '.join(unknown)} not in {self.describe()}'s {enum}; "
                + (f"known: {', '.join(known)}" if known else f"it has no {enum} at all")
            )
        return [getattr(getattr(self.module, enum), n) for n in names]

    def tactic_source_mask(self, names: tuple[str, ...]) -> int:
        """The bit mask `IBuilderConfig.set_tactic_sources` takes for these `TacticSource` names."""
        return sum(1 << int(m) for m in self.enum_members("TacticSource", names, "--tactic-sources"))

    def create(self, kind: str, logger):  # noqa: ANN001, ANN201 - a trt.ILogger; a trt.Builder or trt.Runtime
        """`Builder` or `Runtime` for `logger` (one of ours), or an LsegTrtError where TensorRT makes none:
        it returns none when CUDA cannot start (no GPU, no driver, one too old), and pybind11 turns that into
        a TypeError that names nothing but a null pointer."""
        try:
            made = getattr(self.module, kind)(logger)
        except TypeError as e:
            if "nullptr" not in str(e):
                raise  # a wrong call is our bug, not the user's machine
            made = None
        if made is None:
            said = logger.messages[-1].strip() if logger.messages else "it logged no reason"
            other = "; TensorRT-RTX (--flavour tensorrt-rtx) builds without one" if self.flavour == "tensorrt" else ""
            raise LsegTrtError(
                f"{self.describe()} could not create its {kind} ({said}): it needs an NVIDIA GPU and a driver "
                f"it can use{other}"
            )
        return made

    def parser_supports(self, op_type: str) -> bool:
        """Whether this flavour's ONNX parser imports `op_type` (asked of a parser on an empty network)."""
        return _parser_supports(self, op_type)

    @staticmethod
    def unsupported_operators(parser, op_types: frozenset[str]) -> list[str]:  # noqa: ANN001 - a trt.OnnxParser
        """The operators of a model this ONNX parser has no importer for (empty where it cannot tell)."""
        supports = getattr(parser, "supports_operator", None)
        return sorted(op for op in op_types if supports is not None and not supports(op))

    def describe(self) -> str:
        return f"{self.flavour} {self.version}"

    def logger(self, min_severity: str = "WARNING"):  # noqa: ANN201 - a trt.ILogger
        """A logger that prints TensorRT's messages from `min_severity` up to stderr (never stdout, which
        carries results) and keeps them, warnings always included, in `.messages`, so a failure can be
        explained by what TensorRT said (8.x says why CUDA failed in a warning)."""
        severity = self.module.ILogger.Severity
        shown = int(getattr(severity, min_severity))
        return _stderr_logger_class(self.module)(self.flavour, shown, max(shown, int(severity.WARNING)))


@cache
def _stderr_logger_class(module: ModuleType) -> type:
    class StderrLogger(module.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self, flavour: str, min_severity: int, keep_severity: int) -> None:
            module.ILogger.__init__(self)
            self.flavour, self.min_severity, self.keep_severity = flavour, min_severity, keep_severity
            self.messages: list[str] = []

        def log(self, severity, msg: str) -> None:  # noqa: ANN001 - a trt.ILogger.Severity
            if int(severity) <= self.keep_severity:
                self.messages.append(msg)
            if int(severity) <= self.min_severity:
                print(f"[{self.flavour}] {severity.name}: {msg}", file=sys.stderr, flush=True)

    return StderrLogger


@cache
def _parser_supports(trt: TensorRT, op_type: str) -> bool:
    logger = trt.logger("ERROR")
    network = trt.create("Builder", logger).create_network(trt.network_flags(False))
    return not trt.unsupported_operators(trt.module.OnnxParser(network, logger), frozenset({op_type}))


@cache
def _import(flavour: str) -> TensorRT:
    try:
        module = importlib.import_module(FLAVOURS[flavour])
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == FLAVOURS[flavour]:
            raise MissingDependencyError(f"{flavour} is not installed ({e}); {INSTALL_HINT[flavour]}") from None
        # e.g. the registry's tensorrt 8.5/8.6 wheels without their nvidia-cublas/cudnn wheels: "libcublas.so.11:
        # cannot open shared object file"; or the tensorrt meta package without tensorrt_bindings
        raise MissingDependencyError(
            f"{flavour} is installed but does not import ({e}): install what it names (the nvidia-* packages its "
            f"wheel depends on), or put those libraries on LD_LIBRARY_PATH"
        ) from None
    return TensorRT(flavour, module)


def load(flavour: str = "auto") -> TensorRT:
    """Import a flavour by name; `auto` prefers full TensorRT, then TensorRT-RTX."""
    if flavour == "auto":
        for candidate in FLAVOURS:
            try:
                return _import(candidate)
            except MissingDependencyError:
                continue
        raise MissingDependencyError("no TensorRT flavour is installed; " + " or ".join(INSTALL_HINT.values()))
    if flavour not in FLAVOURS:
        raise LsegTrtError(f"unknown TensorRT flavour {flavour!r}; use auto, {', '.join(FLAVOURS)}")
    return _import(flavour)
