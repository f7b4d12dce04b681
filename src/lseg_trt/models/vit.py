"""ViT-L/16 trunk with lang-seg's readout and reassemble stages.

Reproduces lang-seg `modules/models/lseg_vit.py` (`_make_vit_b16_backbone`, `forward_flex`,
`forward_vit`), itself taken from DPT (isl-org/DPT). The timm VisionTransformer holds the weights under
the same names as lang-seg's `pretrained.model`; the forward pass is written out here instead of
monkey-patching timm and collecting taps through global forward hooks, which neither export nor
torch.compile like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lseg_trt.models.config import LSegConfig


class ProjectReadout(nn.Module):
    """Fold the class token into every patch token: Linear(tokens ‖ cls) + exact GELU (readout=project)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, 1:]
        readout = x[:, :1].expand_as(tokens)
        return self.project(torch.cat((tokens, readout), dim=-1))


def _reassemble(width: int, channels: int, resample: nn.Module | None) -> nn.Sequential:
    """Readout, then a 1x1 conv to `channels`, then the stage's resampling layer.

    Indices 1 and 2 hold lang-seg's parameter-free Transpose/Unflatten; placeholders keep the
    checkpoint's indices (`act_postprocessN.3`, `.4`) without renaming.
    """
    layers: list[nn.Module] = [ProjectReadout(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, channels, 1)]
    if resample is not None:
        layers.append(resample)
    return nn.Sequential(*layers)


class ViTTrunk(nn.Module):
    """Patch tokens -> four feature maps at strides 4, 8, 16 and 32."""

    def __init__(self, cfg: LSegConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.pretrain_grid = cfg.pretrain_grid
        self.hooks = tuple(cfg.hooks)
        # final_norm=False / num_classes=0: the final LayerNorm and classifier are never run on the
        # tapped path, so they are not built (the checkpoint loader ignores their tensors).
        self.model = VisionTransformer(
            img_size=cfg.patch_size * cfg.pretrain_grid,
            patch_size=cfg.patch_size,
            embed_dim=cfg.vit_width,
            depth=cfg.vit_depth,
            num_heads=cfg.vit_heads,
            num_classes=0,
            final_norm=False,
        )
        w = cfg.vit_width
        c1, c2, c3, c4 = cfg.pyramid_channels
        self.act_postprocess1 = _reassemble(w, c1, nn.ConvTranspose2d(c1, c1, kernel_size=4, stride=4))
        self.act_postprocess2 = _reassemble(w, c2, nn.ConvTranspose2d(c2, c2, kernel_size=2, stride=2))
        self.act_postprocess3 = _reassemble(w, c3, None)
        self.act_postprocess4 = _reassemble(w, c4, nn.Conv2d(c4, c4, kernel_size=3, stride=2, padding=1))

    def resized_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Bilinear (half-pixel, no antialias) resize of the grid part; the cls part is kept.

        Interpolated in fp32 whatever the model's dtype, then cast back (timm's resample_abs_pos_embed
        does the same).
        """
        pos = self.model.pos_embed
        cls_pos, grid = pos[:, :1], pos[:, 1:]
        g = self.pretrain_grid
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((cls_pos, grid), dim=1)

    def taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], int, int]:
        """The hooked blocks' token outputs (B, 1 + h*w, C) and the patch grid (h, w); shared with the
        inference rewrite (`lseg_trt.models.fused`), which reassembles them differently."""
        grid_h, grid_w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        tokens = self.model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        cls = self.model.cls_token.expand(x.shape[0], -1, -1)
        h = torch.cat((cls, tokens), dim=1) + self.resized_pos_embed(grid_h, grid_w)
        taps = []
        for index, block in enumerate(self.model.blocks[: self.hooks[-1] + 1]):  # later blocks only feed
            h = block(h)  # the discarded final norm
            if index in self.hooks:
                taps.append(h)
        return taps, grid_h, grid_w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = x.shape[0]
        taps, grid_h, grid_w = self.taps(x)
        stages = (self.act_postprocess1, self.act_postprocess2, self.act_postprocess3, self.act_postprocess4)
        maps = []
        for stage, tap in zip(stages, taps, strict=True):
            t = stage[0](tap)  # [B, h*w, C]
            t = t.transpose(1, 2).reshape(b, t.shape[-1], grid_h, grid_w)
            maps.append(stage[3:](t))
        return tuple(maps)
