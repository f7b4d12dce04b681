"""Variants as data: one frozen config per network, in the spirit of timm's model configs.

`vit_l16` and `rn101_zs` reproduce lang-seg's `clip_vitl16_384` and `clip_resnet101` networks with the
hyper-parameters every released checkpoint was trained with (lang-seg never stores them). `tiny_vit`
and `tiny_rn` are the same code at toy width and depth so tests run in seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TextTowerConfig:
    """CLIP text transformer; lang-seg always uses the ViT-B/32 text tower, also beside RN101."""

    width: int = 512
    heads: int = 8
    layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408  # the BPE vocabulary; the tokenizer ships with open_clip
    embed_dim: int = 512  # text_projection output = LSeg's out_c


@dataclass(frozen=True)
class ClipVisualConfig:
    """CLIP's image tower: stored in every checkpoint but never run by LSeg.

    Only needed to write checkpoints in the real layout (synthetic test files).
    """

    width: int = 768
    layers: int = 12
    patch_size: int = 32
    grid: int = 7  # 224 / 32


@dataclass(frozen=True)
class LSegConfig:
    """Everything that fixes the network's tensors and its input contract."""

    name: str
    backbone: Literal["vit", "resnet"]
    features: int = 256  # decoder width (lang-seg `num_features`)
    out_c: int = 512  # feature dimension = CLIP text embedding width
    pyramid_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)  # reassembled taps
    # ViT trunk (timm VisionTransformer); ignored for resnet
    vit_width: int = 1024
    vit_depth: int = 24
    vit_heads: int = 16
    patch_size: int = 16
    pretrain_grid: int = 24  # pos_embed grid of the 384x384 pre-training resolution
    hooks: tuple[int, int, int, int] = (5, 11, 17, 23)  # blocks whose outputs are tapped
    # ResNet trunk (torchvision Bottleneck ResNet); ignored for vit
    resnet_layers: tuple[int, int, int, int] = (3, 4, 23, 3)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    clip_visual: ClipVisualConfig = field(default_factory=ClipVisualConfig)
    mean: tuple[float, float, float] = HALF_MEAN  # what the checkpoint was trained with
    std: tuple[float, float, float] = HALF_STD
    size_multiple: int = 32  # H and W must be multiples (the fusion adds need exact halving)
    lang_seg_backbone: str = ""  # the name lang-seg's --backbone flag uses


_TINY_TEXT = TextTowerConfig(width=64, heads=1, layers=2, embed_dim=32)  # heads = width // 64, as OpenAI
_TINY_VISUAL = ClipVisualConfig(width=64, layers=1, patch_size=32, grid=2)

VARIANTS: dict[str, LSegConfig] = {
    "vit_l16": LSegConfig(name="vit_l16", backbone="vit", lang_seg_backbone="clip_vitl16_384"),
    "rn101_zs": LSegConfig(
        name="rn101_zs",
        backbone="resnet",
        pyramid_channels=(256, 512, 1024, 2048),
        mean=IMAGENET_MEAN,  # lang-seg trains and evaluates clip_resnet101 with imagenet_norm=True
        std=IMAGENET_STD,
        lang_seg_backbone="clip_resnet101",
    ),
    "tiny_vit": LSegConfig(
        name="tiny_vit",
        backbone="vit",
        features=16,
        out_c=32,
        pyramid_channels=(8, 16, 32, 32),
        vit_width=32,
        vit_depth=4,
        vit_heads=2,
        pretrain_grid=4,
        hooks=(0, 1, 2, 3),
        text=_TINY_TEXT,
        clip_visual=_TINY_VISUAL,
    ),
    "tiny_rn": LSegConfig(
        name="tiny_rn",
        backbone="resnet",
        features=16,
        out_c=32,
        pyramid_channels=(256, 512, 1024, 2048),  # torchvision fixes the stage widths
        resnet_layers=(1, 1, 1, 1),
        text=_TINY_TEXT,
        clip_visual=_TINY_VISUAL,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
}


def get_config(variant: str) -> LSegConfig:
    """Look a variant up by name; the error lists the known ones."""
    from lseg_trt.errors import LsegTrtError

    try:
        return VARIANTS[variant]
    except KeyError:
        raise LsegTrtError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}") from None
