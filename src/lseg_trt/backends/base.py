"""The runner life-cycle every backend shares, and the CUDA-graph cache the torch and TensorRT runners use.

A runner is cheap to construct (it stores paths and options); `activate()` loads weights, sessions or
engines onto the device, `prepare(shape)` does per-shape work (CUDA-graph capture, TensorRT shape and
address binding) outside any timed region, `infer(x)` maps a device batch to features on the same
device. Outputs may be buffers the runner reuses: copy them if you keep them across calls.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lseg_trt.errors import LsegTrtError

if TYPE_CHECKING:
    from lseg_trt.artifacts import ModelSource
    from lseg_trt.models import LSeg, LSegImageEncoder
    from lseg_trt.tensorrt.options import Profile

Shape = tuple[int, int, int, int]
Device = str | torch.device
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend name: registry entry, precision, and whether to replay CUDA graphs."""

    base: str  # a key of lseg_trt.backends.REGISTRY
    precision: str  # fp32 | fp16 | bf16
    default_precision: str = "fp32"  # the precision the bare name means
    cuda_graph: bool = False

    @property
    def name(self) -> str:
        suffix = "" if self.precision == self.default_precision else f"-{self.precision}"
        return self.base + suffix + ("+graph" if self.cuda_graph else "")


class Runner(ABC):
    """Life-cycle shared by every backend; use as a context manager.

    Subclasses build themselves from a model source with `from_source`, which is where ONNX files and
    engines are exported or built through the caches; `__init__` only stores what it is given.
    """

    def __init__(self, spec: BackendSpec, device: Device) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.active = False
        # seconds of activation and per-shape set-up by step, summed over calls: a worker reports them, as
        # its start (seconds to tens of seconds) is what a second GPU does not divide
        self.setup_seconds: Counter[str] = Counter()
        if spec.cuda_graph and self.device.type != "cuda":
            raise LsegTrtError(f"{spec.name}: CUDA graphs need a CUDA device, not {self.device}")

    @classmethod
    @abstractmethod
    def from_source(
        cls, spec: BackendSpec, source: ModelSource, device: Device, cache_dir: Path, profile: Profile | None
    ) -> Runner:
        """A runner for `source`, making the artefact it needs (ONNX, engine) under `cache_dir`."""

    @property
    def name(self) -> str:
        return self.spec.name

    def activate(self) -> Runner:
        if not self.active:
            start = time.perf_counter()
            self._activate()
            self.setup_seconds["activate"] += time.perf_counter() - start
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def set_raw_head1(self, raw: bool) -> None:
        """Make `infer` return raw head1 (float32, before the per-pixel normalisation) or, with False, the
        unit-norm features, from the next activation on: for recipes that normalise later or never.
        Engines and ONNX files end in the normalisation, so only the torch runners can give raw head1."""
        if raw:
            raise LsegTrtError(
                f"{self.name} gives unit-norm features only; this recipe needs raw head1: use a torch backend "
                "(torch, torch-fused, torch-compile, torch-compile-fused)"
            )

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a device batch (float32, unit norm per pixel, or raw head1 after `set_raw_head1`);
        may return a reused buffer."""
        if not self.active:
            raise RuntimeError(f"{self.name}: infer() before activate()")
        return self._infer(x)

    def infer_host(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a host batch, back on the host as a float32 copy the caller may keep: the one-off
        path of demos and fidelity checks (streaming extraction keeps features on the device)."""
        x = x.to(self.device)
        self.prepare(tuple(x.shape))  # type: ignore[arg-type]
        with torch.inference_mode():
            return self.infer(x).float().cpu().clone()

    def prepare(self, shape: Shape) -> None:  # noqa: B027 - most backends need no per-shape work
        """Per-shape set-up, outside any timed region (graph capture, binding)."""

    def check_input(self, shape: Shape) -> None:  # noqa: B027 - most backends take any batch and size
        """Refuse an input shape this runner can never take, without loading anything (an engine's
        profile), so that a run can say so before it writes or deletes a file."""

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @abstractmethod
    def _infer(self, x: torch.Tensor) -> torch.Tensor: ...


def placed_encoder(
    encoder: LSegImageEncoder, device: torch.device, precision: str, fused: bool = False
) -> torch.nn.Module:
    """A private copy of `encoder` (its inference rewrite when `fused`, `lseg_trt.models.fused`, itself a
    copy) on `device` in `precision`; fp16 and bf16 run channels-last (cuDNN's fast layout for
    half-precision convolutions). The encoder's own casts keep input, output and the L2 normalisation in
    float32."""
    from lseg_trt.models.fused import fuse_for_inference

    dtype = DTYPES[precision]
    model = (fuse_for_inference(encoder).to(device, dtype) if fused else _copied_onto(encoder, device, dtype)).eval()
    return model.to(memory_format=torch.channels_last) if precision != "fp32" else model


def _copied_onto(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of `module` whose parameters and buffers are made straight on `device`, floating ones
    in `dtype` (as `Module.to` casts). Copying first and moving after made a host copy of every weight:
    1.7 s for ViT-L/16's 1.4 GB on the 2-core machine, in every runner activation and every worker's
    start. The tensors are put in deepcopy's memo, so the module tree is copied around them; shared
    tensors stay shared, and each one is a new tensor even where device and dtype already match. A tensor
    crosses to another device in its own dtype and is cast there: `Tensor.to(cuda, float16)` casts on the
    host first, into new host memory, where the GPU casts 1.4 GB in milliseconds."""
    memo: dict[int, object] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        source = tensor.detach()
        made = source.to(device)
        made = made.to(dtype if made.is_floating_point() else made.dtype, copy=made is source)
        is_parameter = isinstance(tensor, torch.nn.Parameter)
        memo[id(tensor)] = torch.nn.Parameter(made, tensor.requires_grad) if is_parameter else made
    return copy.deepcopy(module, memo)


def lseg_of(source: ModelSource, backend: str) -> LSeg:
    """The loaded network of a weights source; any other source is a user error naming the backend."""
    if source.lseg is None:
        raise LsegTrtError(f"{backend} needs PyTorch weights; {source.path} is a {source.kind} file")
    return source.lseg


def onnx_of(source: ModelSource, precision: str, cache_dir: Path, backend: str, opset: int | None = None) -> Path:
    """The ONNX file a source runs as: its own, or the cached export of its weights (at most at `opset`,
    by default the exporter's)."""
    from lseg_trt.export import DEFAULT_OPSET
    from lseg_trt.onnx_cache import onnx_for

    if source.kind == "onnx":
        return source.path  # type: ignore[return-value]
    return onnx_for(lseg_of(source, backend), precision, cache_dir / "onnx", opset or DEFAULT_OPSET)


def checked_device(name: str, option: str, choices: str) -> str:
    """`cpu`, `cuda` or `cuda:N` when this machine has it, else a one-line user error naming the option
    (`--device`, `--devices`) and what it accepts (`choices`)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise LsegTrtError(f"{option}: unknown device {name!r}; use {choices}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise LsegTrtError(f"{option} {name}: there is one CPU device; use cpu")
        return "cpu"
    if device.type != "cuda":
        raise LsegTrtError(f"{option}: device {name!r} is not supported; use {choices}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise LsegTrtError(f"{option} {name}: this machine has no CUDA GPU (use {option} cpu)")
    if device.index is not None and device.index >= count:
        raise LsegTrtError(f"{option} {name}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return str(device)


def device_kind(device: Device) -> str:
    """ "cuda" or "cpu": which column of a per-device defaults table (bench, fidelity) applies."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def default_device() -> str:
    """What `auto` means: the first CUDA GPU if there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


OOM_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA / ORT / TensorRT, and torch's CPU allocator


def is_oom(error: BaseException) -> bool:
    """Out of device or host memory: torch's own error type, or what the others say in their message."""
    return isinstance(error, torch.cuda.OutOfMemoryError | MemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MESSAGES)
    )


def is_unavailable(error: BaseException) -> bool:
    """A backend that cannot run here (missing package, no GPU, no provider) or ran out of memory:
    reported as not run. Anything else is a bug and propagates."""
    return isinstance(error, LsegTrtError) or is_oom(error)


class GraphCache:
    """One captured CUDA graph per input shape around a callable with static input/output buffers."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, seconds: Counter[str]) -> None:
        self.fn, self.device = fn, device
        self.seconds = seconds  # the owner's: where warm-up calls and capture went, summed over shapes
        self.graphs: dict[Shape, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def capture(self, shape: Shape, dtype: torch.dtype = torch.float32) -> None:
        """Capture with `self.device` current: `torch.cuda.graph` captures on a stream of the current
        device, and compiled code allocating on another GPU inside that capture fails
        (cudaErrorStreamCaptureUnsupported: seen on cuda:1 of a two-GPU host)."""
        if shape in self.graphs:
            return
        with torch.cuda.device(self.device):
            self._capture(shape, dtype)

    def _capture(self, shape: Shape, dtype: torch.dtype) -> None:
        start = time.perf_counter()
        static_in = torch.randn(shape, device=self.device, dtype=dtype)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up outside capture: allocator, cuDNN/TRT tactic selection, lazy init
                self.fn(static_in)
        stream.synchronize()
        captured = time.perf_counter()
        self.seconds["warm-up calls"] += captured - start
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        self.graphs[shape] = (graph, static_in, static_out)
        self.seconds["graph capture"] += time.perf_counter() - captured

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.graphs:
            self.capture(shape, x.dtype)  # type: ignore[arg-type]
        graph, static_in, static_out = self.graphs[shape]  # type: ignore[index]
        static_in.copy_(x)
        graph.replay()
        return static_out
