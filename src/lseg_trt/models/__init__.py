"""The LSeg networks: configs, encoders, CLIP text tower, checkpoint loading."""

from lseg_trt.models.config import VARIANTS, LSegConfig, get_config
from lseg_trt.models.encoder import LSegImageEncoder
from lseg_trt.models.factory import LOGIT_SCALE, LSeg, load_lseg, random_lseg

__all__ = [
    "LOGIT_SCALE",
    "LSeg",
    "LSegConfig",
    "LSegImageEncoder",
    "VARIANTS",
    "get_config",
    "load_lseg",
    "random_lseg",
]
