"""The LSeg image encoder: trunk + decoder + per-pixel L2 normalisation.

The output is what lang-seg multiplies with the text features (`image_features` in
`lseg_net.py`, before the final x2 upsampling of the logits): (B, out_c, H/2, W/2) unit vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from lseg_trt.models.config import LSegConfig
from lseg_trt.models.decoder import Decoder
from lseg_trt.models.resnet import ResNetTrunk
from lseg_trt.models.vit import ViTTrunk
from lseg_trt.sizes import check_size


def tracing() -> bool:
    """True while exporting or compiling, where Python-side size checks would bake in one shape."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class LSegImageEncoder(nn.Module):
    """Normalised image (B, 3, H, W) -> unit-norm features (B, out_c, H/2, W/2), always float32.

    The input is cast to the weights' dtype, so an fp16 or bf16 encoder takes and returns float32
    tensors like the fp32 one; the normalisation runs in float32 because a sum of 512 squares
    overflows fp16 easily. No epsilon, as in lang-seg: a zero feature vector gives NaN, which the
    fidelity checks report.
    """

    def __init__(self, cfg: LSegConfig) -> None:
        super().__init__()
        self.config = cfg
        self.pretrained: nn.Module = ViTTrunk(cfg) if cfg.backbone == "vit" else ResNetTrunk(cfg)
        self.scratch = Decoder(cfg.pyramid_channels, cfg.features, cfg.out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head1_features(x)
        return features / torch.linalg.vector_norm(features, dim=1, keepdim=True)

    def head1_features(self, x: torch.Tensor) -> torch.Tensor:
        """lang-seg's raw `head1` output as float32, before the normalisation: the features DFF,
        Feature-3DGS, lseg-minimal and ConceptFusion upsample or keep un-normalised."""
        if not tracing():
            check_size(x.shape[-2], x.shape[-1], self.config.size_multiple)
        x = x.to(self.scratch.head1.weight.dtype)
        return self.scratch(*self.pretrained(x)).float()
