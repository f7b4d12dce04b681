"""TensorRT engine runner: device memory and streams stay in PyTorch (no pycuda).

Buffers are torch tensors bound with `set_tensor_address`; `execute_async_v3` runs on the current
torch stream, so the call can be captured in a CUDA graph and costs what a C++ runner costs. Shapes
are checked against the engine's profile (from its sidecar, before touching the GPU) and re-bound only
when they change, as Polygraphy's runner does. The engine is opened with the TensorRT flavour its
sidecar records, never with whichever flavour happens to import first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lseg_trt.backends.base import BackendSpec, Device, GraphCache, Runner, Shape, onnx_of
from lseg_trt.engines import EngineRecord
from lseg_trt.errors import LsegTrtError
from lseg_trt.export import LAYER_NORM_OPSET
from lseg_trt.tensorrt.compat import load
from lseg_trt.tensorrt.options import BuildOptions, Profile, format_shape

if TYPE_CHECKING:
    from lseg_trt.artifacts import ModelSource


def check_shape(profile: Profile, shape: Shape, engine_name: str) -> None:
    if not profile.contains(shape):
        raise LsegTrtError(
            f"input {format_shape(shape)} is outside the profile of {engine_name} "
            f"(min {format_shape(profile.min)}, max {format_shape(profile.max)}); rebuild with other --min/--max-shape"
        )


class TensorRTRunner(Runner):
    def __init__(
        self, engine_path: str | Path, spec: BackendSpec, device: str | torch.device, record: EngineRecord | None = None
    ) -> None:
        super().__init__(spec, device)
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise LsegTrtError(f"engine not found: {self.engine_path}")
        self.record = record or EngineRecord.read(self.engine_path)  # `open_model` has read it already
        self.input_name, self.profile = self.record.input_name, self.record.profile
        self.shape: Shape | None = None
        self.graphs: GraphCache | None = None

    @classmethod
    def from_source(
        cls, spec: BackendSpec, source: ModelSource, device: Device, cache_dir: Path, profile: Profile | None
    ) -> TensorRTRunner:
        from lseg_trt.engines import engine_for

        if source.kind == "engine":
            return cls(source.path, spec, device, source.record)  # type: ignore[arg-type]
        options = BuildOptions(
            fp16=spec.precision == "fp16", tf32=spec.precision == "tf32", profile=profile or Profile()
        )
        # A strongly typed TensorRT (no FP16 flag) builds fp16 engines from an fp16 model: exported here from
        # the weights in memory, into the ONNX cache onnxruntime-fp16 shares, not re-loaded from the
        # checkpoint by the engine cache's fallback (`onnx_cache.fp16_sibling`).
        trt = load(options.flavour)
        strongly_typed = options.fp16 and not trt.has_fp16_flag
        # TensorRT 8.x parses no LayerNormalization: export for it at the last opset without one
        opset = None if trt.parser_supports("LayerNormalization") else LAYER_NORM_OPSET - 1
        onnx_path = onnx_of(source, "fp16" if strongly_typed else "fp32", cache_dir, spec.name, opset)
        return cls(engine_for(onnx_path, options, cache_dir / "engines"), spec, device)  # type: ignore[arg-type]

    def _activate(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise LsegTrtError(f"{self.name}: running a TensorRT engine needs an NVIDIA GPU (device {self.device})")
        trt = load(self.record.flavour)
        self.logger = trt.logger()
        self.runtime = trt.create("Runtime", self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise LsegTrtError(f"{trt.describe()} cannot load {self.engine_path.name} on this GPU (see its log)")
        self.context = self.engine.create_execution_context()
        self.output_name = self.record.output_name
        self.graphs = GraphCache(self._execute, self.device, self.setup_seconds) if self.spec.cuda_graph else None
        self.bound_input = 0

    def _deactivate(self) -> None:
        self.context = self.engine = self.runtime = self.graphs = None
        self.shape = None
        super()._deactivate()

    def _bind(self, shape: Shape) -> None:
        if shape == self.shape:
            return
        check_shape(self.profile, shape, self.engine_path.name)
        self.context.set_input_shape(self.input_name, shape)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self.output = torch.empty(out_shape, device=self.device, dtype=torch.float32)
        self.context.set_tensor_address(self.output_name, self.output.data_ptr())
        self.shape = shape

    def _execute(self, x: torch.Tensor) -> torch.Tensor:
        self._bind(tuple(x.shape))  # type: ignore[arg-type]
        if x.data_ptr() != self.bound_input:
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.bound_input = x.data_ptr()
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise LsegTrtError(f"{self.engine_path.name}: execute_async_v3 failed")
        return self.output

    def check_input(self, shape: Shape) -> None:
        check_shape(self.profile, shape, self.engine_path.name)

    def prepare(self, shape: Shape) -> None:
        """Check the shape against the profile; once active, also bind it (or capture its graph)."""
        self.check_input(shape)
        if not self.active:
            return
        if self.graphs is not None:
            self.graphs.capture(shape)
        else:
            self._bind(shape)

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        return self.graphs(x) if self.graphs is not None else self._execute(x)
