"""The decoder both LSeg variants share: 3x3 projections, RefineNet-style fusion, 1x1 head.

Reproduces lang-seg `modules/models/lseg_blocks.py` (`_make_scratch`, `ResidualConvUnit_custom`,
`FeatureFusionBlock_custom` with bn=True, ReLU, align_corners=True) and the head of `lseg_net.py`.
Attribute names are lang-seg's (`scratch.layerN_rn`, `refinenetN.resConfUnitK`, `head1`), so
checkpoint tensors load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """x + BN(conv(ReLU(BN(conv(ReLU(x)))))); the ReLU is not in place: the skip needs the raw x."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """(deeper path [+ RCU(skip)]) -> RCU -> x2 bilinear (align_corners=True) -> 1x1 conv.

    The 1x1 conv comes after the upsampling, as in lang-seg. `resConfUnit1` of the deepest block is
    never run (it has no skip input) but exists in every checkpoint, so it is kept.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, deeper: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = deeper if skip is None else deeper + self.resConfUnit1(skip)
        out = self.resConfUnit2(out)
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(out)


class Decoder(nn.Module):
    """Four pyramid maps -> un-normalised (B, out_c, H/2, W/2) features."""

    def __init__(self, in_channels: tuple[int, int, int, int], features: int, out_c: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.layer1_rn = nn.Conv2d(c1, features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(c2, features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(c3, features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(c4, features, 3, padding=1, bias=False)
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features)
        self.head1 = nn.Conv2d(features, out_c, 1)

    def forward(self, l1: torch.Tensor, l2: torch.Tensor, l3: torch.Tensor, l4: torch.Tensor) -> torch.Tensor:
        path4 = self.refinenet4(self.layer4_rn(l4))
        path3 = self.refinenet3(path4, self.layer3_rn(l3))
        path2 = self.refinenet2(path3, self.layer2_rn(l2))
        path1 = self.refinenet1(path2, self.layer1_rn(l1))
        return self.head1(path1)
