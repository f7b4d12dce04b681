"""PyTorch eager and Inductor runners, in fp32 / fp16 / bf16, with optional CUDA graphs, on the encoder as
lang-seg wrote it or on its inference rewrite (`lseg_trt.models.fused`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lseg_trt import compile_workers
from lseg_trt.backends.base import BackendSpec, Device, GraphCache, Runner, Shape, lseg_of, placed_encoder

if TYPE_CHECKING:
    from lseg_trt.artifacts import ModelSource
    from lseg_trt.models import LSegImageEncoder
    from lseg_trt.tensorrt.options import Profile


class TorchRunner(Runner):
    """PyTorch eager in inference mode (see `placed_encoder` for precision and memory layout)."""

    compiled = False
    fused = False  # run `fuse_for_inference(encoder)`: the same function with less work

    def __init__(self, encoder: LSegImageEncoder, spec: BackendSpec, device: Device) -> None:
        super().__init__(spec, device)
        self.source = encoder
        self.model: torch.nn.Module | None = None
        self.fn: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.raw = False  # run `head1_features` instead of the normalised forward (`set_raw_head1`)

    @classmethod
    def from_source(
        cls, spec: BackendSpec, source: ModelSource, device: Device, cache_dir: Path, profile: Profile | None
    ) -> TorchRunner:
        return cls(lseg_of(source, spec.name).image_encoder, spec, device)

    def set_raw_head1(self, raw: bool) -> None:
        if raw != self.raw:
            self.deactivate()  # the next activation wraps the other function
            self.raw = raw

    def _activate(self) -> None:
        model = placed_encoder(self.source, self.device, self.spec.precision, fused=self.fused)
        self.model = model
        fn: Callable[[torch.Tensor], torch.Tensor] = self._wrap(model.head1_features if self.raw else model)
        if self.spec.cuda_graph:
            fn = GraphCache(fn, self.device, self.setup_seconds)
        self.fn = fn

    def _wrap(self, model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        return model

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


class TorchCompileRunner(TorchRunner):
    """Inductor, one static graph per shape."""

    compiled = True

    options: dict[str, Any] | None = None  # Inductor options (benchmarks/gpu_speed.py tries some)

    def _wrap(self, model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        # Dynamo counts recompilations per code object across module instances and silently falls back
        # to eager past its limit, so start each runner afresh.
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        return PlannedCompile(torch.compile(model, dynamic=False, options=self.options), self._graph_key)

    def _graph_key(self, x: torch.Tensor) -> dict[str, Any]:
        """What the code Inductor compiles for `x` depends on, for `lseg_trt.compile_workers`' record."""
        from lseg_trt._version import __version__
        from lseg_trt.models.fused import GRAPH

        device = self.device
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        return {
            "config": repr(self.source.config),
            "precision": self.spec.precision,
            "fused": self.fused,
            "raw_head1": self.raw,
            "shape": list(x.shape),
            "input": [str(x.dtype), x.is_contiguous(memory_format=torch.channels_last)],
            "device": [device.type, capability],
            "options": self.options,
            "torch": torch.__version__,
            "lseg_trt": [__version__, GRAPH],
        }


class PlannedCompile:
    """A `torch.compile`d callable whose first call per input shape, where Inductor compiles, runs with
    compile workers only if this cache has not compiled that graph before (`lseg_trt.compile_workers`)."""

    def __init__(
        self, compiled: Callable[[torch.Tensor], torch.Tensor], key_of: Callable[[torch.Tensor], dict]
    ) -> None:
        self.compiled, self.key_of = compiled, key_of
        self.seen: set[tuple[tuple[int, ...], torch.dtype]] = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seen = (tuple(x.shape), x.dtype)
        if seen in self.seen:
            return self.compiled(x)
        key = self.key_of(x)
        compile_workers.plan(key)
        out = self.compiled(x)
        compile_workers.remember(key)
        self.seen.add(seen)
        return out


class FusedTorchRunner(TorchRunner):
    """Eager PyTorch on the inference rewrite."""

    fused = True


class FusedCompileRunner(TorchCompileRunner):
    """Inductor on the inference rewrite: faster than `torch-compile` on a CPU, slower on the H200
    (benchmarks/results/README.md), where `torch-compile-fp16+graph` is the fastest torch backend."""

    fused = True
