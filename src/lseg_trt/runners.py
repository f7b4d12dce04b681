"""One interface, many backends: the benchmark and the feature extractor drive all of them alike.

A runner is cheap to construct (it stores paths and options); `activate()` loads weights, sessions or
engines onto the device, `prepare(shape)` does per-shape work (CUDA-graph capture, TensorRT shape and
address binding), `infer(x)` maps a device batch to features on the same device. Outputs may be
buffers the runner reuses: copy them if you keep them across calls.

Backend names: `torch` (fp32), `torch-fp16`, `torch-bf16`, `torch-compile[-fp16|-bf16]` (Inductor),
`onnxruntime[-fp16]` and `tensorrt[-fp32]`; append `+graph` to replay a CUDA graph per static shape
(torch and tensorrt backends, GPU only).
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.models import LSegImageEncoder

log = logging.getLogger(__name__)

Shape = tuple[int, int, int, int]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend name."""

    kind: str  # torch | onnxruntime | tensorrt
    precision: str  # fp32 | fp16 | bf16
    compile: bool = False
    cuda_graph: bool = False

    @property
    def name(self) -> str:
        base = {"torch": "torch-compile" if self.compile else "torch"}.get(self.kind, self.kind)
        default = "fp16" if self.kind == "tensorrt" else "fp32"
        suffix = "" if self.precision == default else f"-{self.precision}"
        return base + suffix + ("+graph" if self.cuda_graph else "")


_BASES = {
    "torch": ("torch", False, ("fp32", "fp16", "bf16")),
    "torch-compile": ("torch", True, ("fp32", "fp16", "bf16")),
    "onnxruntime": ("onnxruntime", False, ("fp32", "fp16")),
    "tensorrt": ("tensorrt", False, ("fp16", "fp32")),
}


def known_backends() -> list[str]:
    names = []
    for base, (_, _, precisions) in _BASES.items():
        for precision in precisions:
            names.append(base if precision == precisions[0] else f"{base}-{precision}")
    return names


def parse_backend(name: str) -> BackendSpec:
    """`torch-fp16+graph` -> BackendSpec(kind='torch', precision='fp16', cuda_graph=True)."""
    text, graph = (name[: -len("+graph")], True) if name.endswith("+graph") else (name, False)
    for base, (kind, compiled, precisions) in sorted(_BASES.items(), key=lambda kv: -len(kv[0])):
        if text == base or text.startswith(base + "-"):
            precision = text[len(base) + 1 :] or precisions[0]
            if precision in precisions and not (graph and kind == "onnxruntime"):
                return BackendSpec(kind, precision, compiled, graph)
    raise LsegTrtError(
        f"unknown backend {name!r}; known: {', '.join(known_backends())} (+graph for CUDA graphs on torch/tensorrt)"
    )


class Runner(ABC):
    """Life-cycle shared by every backend; use as a context manager."""

    def __init__(self, spec: BackendSpec, device: str | torch.device) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.active = False
        if spec.cuda_graph and self.device.type != "cuda":
            raise LsegTrtError(f"{spec.name}: CUDA graphs need a CUDA device, not {self.device}")

    @property
    def name(self) -> str:
        return self.spec.name

    def activate(self) -> Runner:
        if not self.active:
            self._activate()
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

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a device batch (float32, unit norm per pixel); may return a reused buffer."""
        if not self.active:
            raise RuntimeError(f"{self.name}: infer() before activate()")
        return self._infer(x)

    def prepare(self, shape: Shape) -> None:  # noqa: B027 - most backends need no per-shape work
        """Per-shape set-up, outside any timed region (graph capture, binding)."""

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @abstractmethod
    def _infer(self, x: torch.Tensor) -> torch.Tensor: ...


class GraphCache:
    """One captured CUDA graph per input shape around a callable with static input/output buffers."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.fn, self.device = fn, device
        self.graphs: dict[Shape, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def capture(self, shape: Shape, dtype: torch.dtype = torch.float32) -> None:
        if shape in self.graphs:
            return
        static_in = torch.randn(shape, device=self.device, dtype=dtype)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up outside capture: allocator, cuDNN/TRT tactic selection, lazy init
                self.fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        self.graphs[shape] = (graph, static_in, static_out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.graphs:
            self.capture(shape, x.dtype)  # type: ignore[arg-type]
        graph, static_in, static_out = self.graphs[shape]  # type: ignore[index]
        static_in.copy_(x)
        graph.replay()
        return static_out


class TorchRunner(Runner):
    """PyTorch eager or Inductor, in fp32 / fp16 / bf16, inference mode, optional CUDA graphs.

    fp16 and bf16 models run channels-last (cuDNN's fast layout for half-precision convolutions);
    the encoder's own casts keep input, output and the L2 normalisation in float32.
    """

    def __init__(self, encoder: LSegImageEncoder, spec: BackendSpec, device: str | torch.device) -> None:
        super().__init__(spec, device)
        self.source = encoder
        self.model: torch.nn.Module | None = None
        self.fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _activate(self) -> None:
        model = copy.deepcopy(self.source).to(self.device, DTYPES[self.spec.precision]).eval()
        if self.spec.precision != "fp32":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        fn: Callable[[torch.Tensor], torch.Tensor] = model
        if self.spec.compile:
            # One static graph per shape. Dynamo counts recompilations per code object across module
            # instances and silently falls back to eager past its limit, so start each runner afresh.
            torch._dynamo.reset()
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            fn = torch.compile(model, dynamic=False)
        if self.spec.cuda_graph:
            fn = GraphCache(fn, self.device)
        self.fn = fn

    def _deactivate(self) -> None:
        self.model = self.fn = None
        super()._deactivate()

    def prepare(self, shape: Shape) -> None:
        if isinstance(self.fn, GraphCache):
            with torch.inference_mode():
                self.fn.capture(shape)

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(x)  # type: ignore[misc]


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime: CUDA / TensorRT execution providers when present (IO binding on torch buffers),
    else CPU."""

    def __init__(self, onnx_path: str | Path, spec: BackendSpec, device: str | torch.device) -> None:
        super().__init__(spec, device)
        self.onnx_path = Path(onnx_path)
        self.session: Any = None

    def providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.device.type == "cuda":
            gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
            if not gpu:
                raise LsegTrtError(f"{self.name}: onnxruntime has no CUDA provider here (has {', '.join(available)})")
            return gpu
        return ["CPUExecutionProvider"]

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("the onnxruntime backend needs: pip install 'lseg-trt[onnx]'") from None
        if not self.onnx_path.is_file():
            raise LsegTrtError(f"ONNX model not found: {self.onnx_path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=self.providers())
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _deactivate(self) -> None:
        self.session = None
        super()._deactivate()

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            (y,) = self.session.run([self.output_name], {self.input_name: x.detach().cpu().float().numpy()})
            return torch.from_numpy(y)
        import numpy as np

        x = x.float().contiguous()
        channels = self.session.get_outputs()[0].shape[1]
        out = torch.empty((x.shape[0], channels, x.shape[2] // 2, x.shape[3] // 2), device=self.device)
        index = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        return out


def make_runner(
    spec: BackendSpec,
    lseg: Any,
    device: str | torch.device,
    cache_dir: str | Path = "models",
    profile: Any = None,
) -> Runner:
    """A runner for `spec` on `lseg`'s weights, exporting ONNX and building engines through the caches
    under `cache_dir` (`onnx/`, `engines/`) when they are missing or stale."""
    if spec.kind == "torch":
        return TorchRunner(lseg.image_encoder, spec, device)
    from lseg_trt.export import cached_onnx

    if spec.kind == "onnxruntime":
        return OnnxRuntimeRunner(cached_onnx(lseg, Path(cache_dir) / "onnx", spec.precision), spec, device)
    from lseg_trt.tensorrt.builder import engine_from_onnx
    from lseg_trt.tensorrt.options import BuildOptions, Profile
    from lseg_trt.tensorrt.runner import TensorRTRunner

    onnx_path = cached_onnx(lseg, Path(cache_dir) / "onnx", spec.precision)
    options = BuildOptions(fp16=spec.precision == "fp16", profile=profile or Profile())
    engine = engine_from_onnx(onnx_path, options, Path(cache_dir) / "engines")
    return TensorRTRunner(engine, spec, device)
