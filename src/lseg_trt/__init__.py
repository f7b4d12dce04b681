"""lseg-trt: LSeg image encoders to ONNX and TensorRT, with benchmarks, fidelity checks and demos."""

from lseg_trt._version import __version__
from lseg_trt.errors import InvalidSizeError, LsegTrtError
from lseg_trt.extraction import FeatureExtractor, open_features
from lseg_trt.models import LSeg, load_lseg

__all__ = ["FeatureExtractor", "InvalidSizeError", "LSeg", "LsegTrtError", "__version__", "load_lseg", "open_features"]
