"""Checkpoints in lang-seg's real on-disk layout, made from our own (random) weights.

No real checkpoint can be downloaded where this project is tested, so the loaders are exercised on
files written here exactly as lang-seg writes them: a PyTorch-Lightning 1.4 dict with a pickled
reference to `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` as the `callbacks` key, no
`hyper_parameters`, every model key under `net.`, the full CLIP model (image tower too) under
`net.clip_pretrained.`, and CLIP's matrices in fp16 as OpenAI's `clip.load` on CUDA leaves them.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch
from open_clip.transformer import QuickGELU, VisionTransformer

from lseg_trt.files import atomic_path
from lseg_trt.models.config import LSegConfig
from lseg_trt.models.factory import LSeg
from lseg_trt.models.loading import TEXT_PREFIX

LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
# OpenAI's convert_weights casts Linear/Conv weights and biases, attention in_proj_* and the two
# projections to fp16; embeddings, LayerNorms and logit_scale stay fp32.
_FP16_MARKERS = (".attn.in_proj_", ".attn.out_proj.", ".mlp.c_fc.", ".mlp.c_proj.")
_FP16_KEYS = ("text_projection", "visual.proj", "visual.conv1.weight")


def _clip_dtype(key: str) -> torch.dtype:
    return torch.float16 if key in _FP16_KEYS or any(m in key for m in _FP16_MARKERS) else torch.float32


def _clip_visual_tensors(cfg: LSegConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """CLIP's image tower in OpenAI's layout; random, since LSeg never runs it."""
    v = cfg.clip_visual
    tower = VisionTransformer(
        image_size=v.patch_size * v.grid,
        patch_size=v.patch_size,
        width=v.width,
        layers=v.layers,
        heads=max(1, v.width // 64),
        mlp_ratio=4.0,
        output_dim=cfg.text.embed_dim,
        act_layer=QuickGELU,
    )
    return {k: torch.randn(t.shape, generator=generator) * 0.02 for k, t in tower.state_dict().items()}


def lang_seg_state_dict(lseg: LSeg, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """The `state_dict` lang-seg's LightningModule would save for these weights (keys under `net.`)."""
    cfg = lseg.config
    generator = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    clip = {k: v for k, v in lseg.text_encoder.state_dict().items()}
    clip.update({f"visual.{k}": v for k, v in _clip_visual_tensors(cfg, generator).items()})
    clip["logit_scale"] = torch.tensor(4.6052)  # ln(100), OpenAI's value
    for key, tensor in clip.items():
        sd[f"net.{TEXT_PREFIX}{key}"] = tensor.detach().to(_clip_dtype(key)).cpu().clone()
    for key, tensor in lseg.image_encoder.state_dict().items():
        sd[f"net.{key}"] = tensor.detach().cpu().clone()
    if cfg.backbone == "vit":  # timm keeps these in the ViT; we do not build them
        w = cfg.vit_width
        sd["net.pretrained.model.norm.weight"] = torch.ones(w)
        sd["net.pretrained.model.norm.bias"] = torch.zeros(w)
        sd["net.pretrained.model.head.weight"] = torch.randn(1000, w, generator=generator) * 0.02
        sd["net.pretrained.model.head.bias"] = torch.zeros(1000)
    return sd


@contextlib.contextmanager
def _lightning_class() -> Iterator[type]:
    """`ModelCheckpoint` importable under its real module path while pickling (real Lightning if installed)."""
    module_name, _, class_name = LIGHTNING_CALLBACK.rpartition(".")
    if module_name in sys.modules:
        yield getattr(sys.modules[module_name], class_name)
        return
    parts = module_name.split(".")
    added = [".".join(parts[: i + 1]) for i in range(len(parts)) if ".".join(parts[: i + 1]) not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)
    cls = type(class_name, (), {"__module__": module_name})
    setattr(sys.modules[module_name], class_name, cls)
    try:
        yield cls
    finally:
        for name in added:
            del sys.modules[name]


def save_lightning_checkpoint(lseg: LSeg, path: str | Path, seed: int = 0) -> Path:
    """Write `lseg`'s weights as a lang-seg PyTorch-Lightning 1.4 checkpoint (atomically)."""
    path = Path(path)
    with _lightning_class() as callback_cls:
        checkpoint = {
            "epoch": 199,
            "global_step": 200_000,
            "pytorch-lightning_version": "1.4.9",
            "state_dict": lang_seg_state_dict(lseg, seed),
            "callbacks": {
                callback_cls: {
                    "monitor": "val_acc_epoch",
                    "best_model_score": torch.tensor(0.5),
                    "best_model_path": "checkpoints/result-epoch=199.ckpt",
                    "current_score": torch.tensor(0.5),
                    "dirpath": "checkpoints/",
                }
            },
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.004, "momentum": 0.9, "params": [0]}]}],
            "lr_schedulers": [{"base_lrs": [0.004], "last_epoch": 199, "_step_count": 200, "lr_lambdas": [None]}],
        }
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
    return path
