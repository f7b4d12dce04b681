"""lseg-trt: LSeg image encoders to ONNX and TensorRT, with benchmarks, fidelity checks and demos."""

from lseg_trt.errors import InvalidSizeError, LsegTrtError
from lseg_trt.models import LSeg, load_lseg

__version__ = "0.1.0"

__all__ = ["InvalidSizeError", "LSeg", "LsegTrtError", "__version__", "load_lseg"]
