"""ResNet-101 trunk of lang-seg's zero-shot network (`clip_resnet101`).

Reproduces lang-seg `modules/models/lseg_vit_zs.py` (`_make_resnet_backbone`): torchvision's v1.5
Bottleneck ResNet, with the stem folded into `layer1` exactly as lang-seg stores it
(`pretrained.layer1.{0: conv1, 1: bn1, 2: relu, 3: maxpool, 4: layer1}`); avgpool and fc are dropped.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from lseg_trt.models.config import LSegConfig


class ResNetTrunk(nn.Module):
    """Image -> four feature maps at strides 4, 8, 16 and 32."""

    def __init__(self, cfg: LSegConfig) -> None:
        super().__init__()
        net = ResNet(Bottleneck, list(cfg.resnet_layers))
        self.layer1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        return l1, l2, l3, self.layer4(l3)
