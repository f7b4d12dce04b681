"""ONNX Runtime runner: CUDA / TensorRT execution providers when present (IO binding on torch buffers), else CPU."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lseg_trt.backends.base import BackendSpec, Device, Runner, onnx_of
from lseg_trt.errors import LsegTrtError, MissingDependencyError

if TYPE_CHECKING:
    from lseg_trt.artifacts import ModelSource
    from lseg_trt.tensorrt.options import Profile


def _ort():  # noqa: ANN202 - lazy optional import
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("the onnxruntime backend needs: pip install 'lseg-trt[onnx]'") from None
    return onnxruntime


class OnnxRuntimeRunner(Runner):
    def __init__(self, onnx_path: str | Path, spec: BackendSpec, device: str | torch.device) -> None:
        super().__init__(spec, device)
        self.onnx_path = Path(onnx_path)
        self.session: Any = None

    @classmethod
    def from_source(
        cls, spec: BackendSpec, source: ModelSource, device: Device, cache_dir: Path, profile: Profile | None
    ) -> OnnxRuntimeRunner:
        return cls(onnx_of(source, spec.precision, cache_dir, spec.name), spec, device)

    def providers(self) -> list[str]:
        available = _ort().get_available_providers()
        if self.device.type == "cuda":
            gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
            if not gpu:
                raise MissingDependencyError(
                    f"{self.name}: onnxruntime has no CUDA provider here (has {', '.join(available)})"
                )
            return gpu
        return ["CPUExecutionProvider"]

    def _activate(self) -> None:
        ort = _ort()
        if not self.onnx_path.is_file():
            raise LsegTrtError(f"ONNX model not found: {self.onnx_path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), options, providers=self.providers())
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types for bad files
            raise LsegTrtError(f"onnxruntime cannot load {self.onnx_path.name}: {str(e).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _deactivate(self) -> None:
        self.session = None
        super()._deactivate()

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            (y,) = self.session.run([self.output_name], {self.input_name: x.detach().cpu().float().numpy()})
            return torch.from_numpy(y)
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
