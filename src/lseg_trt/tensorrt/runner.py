"""TensorRT engine runner: device memory and streams stay in PyTorch (no pycuda).

Buffers are torch tensors bound with `set_tensor_address`; `execute_async_v3` runs on the current
torch stream, so the call can be captured in a CUDA graph and costs what a C++ runner costs. Shapes
are checked against the engine's profile (from its sidecar, before touching the GPU) and re-bound only
when they change, as Polygraphy's runner does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lseg_trt.errors import LsegTrtError
from lseg_trt.runners import BackendSpec, GraphCache, Runner, Shape
from lseg_trt.tensorrt.compat import load
from lseg_trt.tensorrt.options import Profile, format_shape

log = logging.getLogger(__name__)


def read_profile(engine_path: Path) -> tuple[str, Profile]:
    """Input name and profile recorded in the engine's sidecar."""
    sidecar = engine_path.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text())
        p = record["request"]["profile"]
        return record["input"], Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError) as e:
        raise LsegTrtError(
            f"engine sidecar {sidecar} missing or unreadable ({e}); rebuild with `lseg-trt build`"
        ) from None


def check_shape(profile: Profile, shape: Shape, engine_name: str) -> None:
    if not profile.contains(shape):
        raise LsegTrtError(
            f"input {format_shape(shape)} is outside the profile of {engine_name} "
            f"(min {format_shape(profile.min)}, max {format_shape(profile.max)}); rebuild with other --min/--max-shape"
        )


class TensorRTRunner(Runner):
    def __init__(
        self, engine_path: str | Path, spec: BackendSpec, device: str | torch.device, flavour: str = "auto"
    ) -> None:
        super().__init__(spec, device)
        self.engine_path = Path(engine_path)
        self.flavour = flavour
        if not self.engine_path.is_file():
            raise LsegTrtError(f"engine not found: {self.engine_path}")
        self.input_name, self.profile = read_profile(self.engine_path)
        self.shape: Shape | None = None
        self.graphs: GraphCache | None = None

    def _activate(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise LsegTrtError(f"{self.name}: running a TensorRT engine needs an NVIDIA GPU (device {self.device})")
        trt = load(self.flavour)
        m = trt.module
        self.logger = m.Logger(m.Logger.WARNING)
        self.runtime = m.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise LsegTrtError(f"{trt.describe()} cannot load {self.engine_path.name} on this GPU (see its log)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == m.TensorIOMode.OUTPUT)
        self.trt_module = m
        self.graphs = GraphCache(self._execute, self.device) if self.spec.cuda_graph else None
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

    def prepare(self, shape: Shape) -> None:
        """Check the shape against the profile; once active, also bind it (or capture its graph)."""
        check_shape(self.profile, shape, self.engine_path.name)
        if not self.active:
            return
        if self.graphs is not None:
            self.graphs.capture(shape)
        else:
            self._bind(shape)

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        return self.graphs(x) if self.graphs is not None else self._execute(x)
