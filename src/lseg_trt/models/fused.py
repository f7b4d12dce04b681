"""The LSeg image encoder rewritten for inference: the same function, less work and fewer layout copies.

Every step is an identity of real arithmetic, so the result differs from `LSegImageEncoder` by
rounding only (the fidelity checks measure how much):

- BatchNorm (eval statistics) folds into the convolution before it, in the decoder and the ResNet trunk.
- A 1x1 convolution commutes with bilinear x2 upsampling (align_corners=True weights sum to one, so the
  bias commutes too): each fusion block's `out_conv` runs at the low resolution, before the upsample,
  and the last one merges with the 1x1 head into one 256 -> 512 convolution. At 480x480 that removes
  about 21 GFLOP and two full-resolution feature maps (benchmarks/results/cpu-2026-11-25/fused_work.md).
- ViT readout `Linear(tokens ‖ cls)` splits into `tokens @ W_t + (cls @ W_c + b)`: half the GEMM and no
  concatenated copy. The reassemble 1x1 convolution runs as a Linear on the tokens, and the token
  tensor becomes an NCHW view with channels-last strides, so the decoder's half-precision
  convolutions (channels-last) get their layout without a transpose copy.

The rewrite works on a copy (it shares no tensors with its source), is frozen (no parameter requires a
gradient), drops weights that are never run, and works for any variant of `lseg_trt.models.config`.
`GRAPH` names it in the keys of cached exports and compiled packages: change it with the rewrite.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lseg_trt.models.decoder import Decoder, FeatureFusionBlock, ResidualConvUnit
from lseg_trt.models.encoder import LSegImageEncoder, tracing
from lseg_trt.models.resnet import ResNetTrunk
from lseg_trt.models.vit import ViTTrunk
from lseg_trt.sizes import check_size

GRAPH = "fused-1"


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """`bn(conv(x))` as one convolution, computed in float64 and stored in the conv's dtype."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    )
    dtype = conv.weight.dtype
    folded.weight = nn.Parameter((conv.weight.double() * scale[:, None, None, None]).to(dtype), requires_grad=False)
    folded.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + bn.bias.double()).to(dtype), False)
    return folded


def _merged_1x1(first: nn.Conv2d, second: nn.Conv2d) -> nn.Conv2d:
    """`second(first(x))` for two 1x1 convolutions with biases, as one."""
    if first.kernel_size != (1, 1) or second.kernel_size != (1, 1) or first.groups != 1 or second.groups != 1:
        raise ValueError("only two dense 1x1 convolutions merge into one")
    w1, w2 = first.weight.double()[:, :, 0, 0], second.weight.double()[:, :, 0, 0]
    merged = nn.Conv2d(first.in_channels, second.out_channels, 1)
    dtype = first.weight.dtype
    merged.weight = nn.Parameter((w2 @ w1)[:, :, None, None].to(dtype), requires_grad=False)
    merged.bias = nn.Parameter((w2 @ first.bias.double() + second.bias.double()).to(dtype), requires_grad=False)
    return merged


def _as_linear(conv: nn.Conv2d) -> nn.Linear:
    """A 1x1 convolution as the Linear it is on (B, tokens, C) tensors."""
    linear = nn.Linear(conv.in_channels, conv.out_channels)
    linear.weight = nn.Parameter(conv.weight.detach()[:, :, 0, 0].clone(), requires_grad=False)
    linear.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    return linear


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class FusedResidualUnit(nn.Module):
    """x + conv2'(ReLU(conv1'(ReLU(x)))) with the BatchNorms folded into conv1', conv2'."""

    def __init__(self, unit: ResidualConvUnit) -> None:
        super().__init__()
        self.conv1 = _folded(unit.conv1, unit.bn1)
        self.conv2 = _folded(unit.conv2, unit.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusedFusionBlock(nn.Module):
    """The fusion block with its 1x1 output convolution (`out_conv`, or a replacement) before the upsample.
    The deepest block has no skip input, so its skip unit (never run, but in every checkpoint) is dropped."""

    def __init__(self, block: FeatureFusionBlock, out_conv: nn.Conv2d, skip: bool = True) -> None:
        super().__init__()
        self.skip_unit = FusedResidualUnit(block.resConfUnit1) if skip else None
        self.unit = FusedResidualUnit(block.resConfUnit2)
        self.out_conv = out_conv

    def forward(self, deeper: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = deeper if skip is None or self.skip_unit is None else deeper + self.skip_unit(skip)
        return _upsample2(self.out_conv(self.unit(out)))


class FusedDecoder(nn.Module):
    """`Decoder` with folded BatchNorms, low-resolution 1x1 convs and the head merged into the last block."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.projections = nn.ModuleList([decoder.layer1_rn, decoder.layer2_rn, decoder.layer3_rn, decoder.layer4_rn])
        last = FusedFusionBlock(decoder.refinenet1, _merged_1x1(decoder.refinenet1.out_conv, decoder.head1))
        middle = [FusedFusionBlock(b, b.out_conv) for b in (decoder.refinenet2, decoder.refinenet3)]
        deepest = FusedFusionBlock(decoder.refinenet4, decoder.refinenet4.out_conv, skip=False)
        self.blocks = nn.ModuleList([last, *middle, deepest])

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        p1, p2, p3, p4 = (project(m) for project, m in zip(self.projections, maps, strict=True))
        path = self.blocks[3](p4)
        path = self.blocks[2](path, p3)
        path = self.blocks[1](path, p2)
        return self.blocks[0](path, p1)


class FusedReassemble(nn.Module):
    """Readout (split GEMM) + GELU + 1x1 conv as a Linear, on tokens; then the stage's resampling."""

    def __init__(self, stage: nn.Sequential) -> None:
        super().__init__()
        project: nn.Linear = stage[0].project[0]
        width = project.in_features // 2
        self.tokens = nn.Linear(width, width, bias=False)
        self.tokens.weight = nn.Parameter(project.weight.detach()[:, :width].clone(), requires_grad=False)
        self.readout = nn.Linear(width, width)
        self.readout.weight = nn.Parameter(project.weight.detach()[:, width:].clone(), requires_grad=False)
        self.readout.bias = nn.Parameter(project.bias.detach().clone(), requires_grad=False)
        self.channels = _as_linear(stage[3])
        self.resample = stage[4] if len(stage) > 4 else nn.Identity()

    def forward(self, tap: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        t = F.gelu(self.tokens(tap[:, 1:]) + self.readout(tap[:, :1]))
        t = self.channels(t)  # (B, h*w, C)
        nchw = t.reshape(t.shape[0], grid_h, grid_w, t.shape[-1]).permute(0, 3, 1, 2)  # a view, channels-last
        return self.resample(nchw)


class FusedViTTrunk(nn.Module):
    """`ViTTrunk` with fused reassemble stages; the token stage is `ViTTrunk.taps` itself."""

    def __init__(self, trunk: ViTTrunk) -> None:
        super().__init__()
        names = ("act_postprocess1", "act_postprocess2", "act_postprocess3", "act_postprocess4")
        self.stages = nn.ModuleList(FusedReassemble(getattr(trunk, name)) for name in names)
        for name in names:  # their weights now live in `stages`; the trunk is a private copy
            delattr(trunk, name)
        del trunk.model.blocks[trunk.hooks[-1] + 1 :]  # never run: they only feed the discarded final norm
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps, grid_h, grid_w = self.trunk.taps(x)
        return tuple(stage(tap, grid_h, grid_w) for stage, tap in zip(self.stages, taps, strict=True))


def _fold_resnet(trunk: ResNetTrunk) -> ResNetTrunk:
    """Fold every BatchNorm of the torchvision Bottlenecks and the stem into its convolution, in place."""
    stem = trunk.layer1
    stem[0], stem[1] = _folded(stem[0], stem[1]), nn.Identity()
    for layer in (stem[4], trunk.layer2, trunk.layer3, trunk.layer4):
        for block in layer:
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                setattr(block, conv, _folded(getattr(block, conv), getattr(block, bn)))
                setattr(block, bn, nn.Identity())
            if block.downsample is not None:
                block.downsample = nn.Sequential(_folded(block.downsample[0], block.downsample[1]))
    return trunk


class FusedImageEncoder(nn.Module):
    """Same contract as `LSegImageEncoder`: normalised image -> float32 unit-norm (B, out_c, H/2, W/2)."""

    def __init__(self, encoder: LSegImageEncoder) -> None:
        super().__init__()
        source = copy.deepcopy(encoder).eval()
        self.config = source.config
        trunk = source.pretrained
        self.pretrained: nn.Module = FusedViTTrunk(trunk) if isinstance(trunk, ViTTrunk) else _fold_resnet(trunk)
        self.scratch = FusedDecoder(source.scratch)
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head1_features(x)
        return features / torch.linalg.vector_norm(features, dim=1, keepdim=True)

    def head1_features(self, x: torch.Tensor) -> torch.Tensor:
        """`LSegImageEncoder.head1_features`: the decoder's last block already ends in head1 (merged)."""
        if not tracing():
            check_size(x.shape[-2], x.shape[-1], self.config.size_multiple)
        x = x.to(self.scratch.blocks[0].out_conv.weight.dtype)
        return self.scratch(*self.pretrained(x)).float()


def fuse_for_inference(encoder: LSegImageEncoder) -> FusedImageEncoder:
    """An inference-only copy of `encoder` that computes the same features with less work."""
    return FusedImageEncoder(encoder)
