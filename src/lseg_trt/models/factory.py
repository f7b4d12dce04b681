"""`load_lseg`: one entry point for real checkpoints, plain state dicts and seeded random weights."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

import lseg_trt.images as images
from lseg_trt.files import file_sha256
from lseg_trt.models.checkpoint import read_checkpoint
from lseg_trt.models.clip_text import LazyTextTower, encode_tokens, tokenize
from lseg_trt.models.config import LSegConfig, get_config
from lseg_trt.models.encoder import LSegImageEncoder
from lseg_trt.models.loading import LoadReport, detect_variant, load_weights
from lseg_trt.names import component_from_stem

if TYPE_CHECKING:
    from open_clip.transformer import TextTransformer

log = logging.getLogger(__name__)

RANDOM = "random"
DEFAULT_VARIANT = "vit_l16"
RANDOM_SEED = 0
LOGIT_SCALE = 1 / 0.07  # lang-seg's fixed temperature (not CLIP's learned logit_scale)


@dataclass
class LSeg:
    """An LSeg network: image encoder, CLIP text tower, and the input contract of its checkpoint.

    The text tower is built on first use of `text_encoder` (`encode_text`, segmentation): building
    it imports open_clip, and with it transformers where installed (seconds of every process start),
    which dense feature extraction, never running the text tower, should not pay.
    """

    config: LSegConfig
    image_encoder: LSegImageEncoder
    text_tower: LazyTextTower
    source: str  # checkpoint path, or "random"
    report: LoadReport | None = None  # None for random weights

    @property
    def variant(self) -> str:
        return self.config.name

    @property
    def semantic(self) -> bool:
        """False for random weights: latency is real, the features mean nothing."""
        return self.source != RANDOM

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.config.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.config.std

    @property
    def text_encoder(self) -> TextTransformer:
        """The CLIP text tower (float32, eval mode, no autograd); built now, where `to` last put this network,
        if it was not yet."""
        return self.text_tower.get()

    @property
    def device(self) -> torch.device:
        return next(self.image_encoder.parameters()).device

    @property
    def weights_name(self) -> str:
        """Short name for files and tables: the checkpoint's stem as a safe path component, or `random`."""
        return RANDOM if not self.semantic else component_from_stem(Path(self.source).stem)

    @cached_property
    def weights_sha256(self) -> str:
        """What exported models and caches are keyed by: the checkpoint file's sha256, or for random
        weights `random-<sha256 of the image encoder's tensors>`, so a change of seed or of the
        initialisation code changes it too. Computed once per network (1.2 GB of tensors for ViT-L)."""
        return self.sha256 if self.sha256 is not None else f"random-{tensors_sha256(self.image_encoder)}"

    @cached_property
    def sha256(self) -> str | None:
        """Checkpoint hash recorded in exported models; None for random weights."""
        return file_sha256(Path(self.source)) if self.semantic else None

    def to(self, device: str | torch.device) -> LSeg:
        self.image_encoder.to(device)
        self.text_tower.to(device)
        return self

    def preprocess(self, image: images.ImageLike, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(1, 3, H, W) input normalised with this checkpoint's mean/std (see `lseg_trt.images`)."""
        return images.preprocess(image, size, self.mean, self.std)

    @torch.inference_mode()
    def encode_text(self, labels: list[str]) -> torch.Tensor:
        """(N, out_c) L2-normalised float32 text features of raw labels (no prompt template, as lang-seg).

        lang-seg runs CLIP in fp16 on the GPU; this runs the tower in the encoder's float32.
        """
        tokens = tokenize(labels, self.config.text.context_length).to(self.device)
        features = encode_tokens(self.text_encoder, tokens).float()
        return features / features.norm(dim=-1, keepdim=True)


def tensors_sha256(module: nn.Module) -> str:
    """Hex sha256 over a module's state (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy())
    return digest.hexdigest()


def _calibrate_batchnorm(encoder: LSegImageEncoder, generator: torch.Generator) -> None:
    """Give random BN layers running statistics from seeded noise, as training would.

    With the default mean 0 / var 1, activations of a random 101-layer ResNet grow without bound and
    overflow fp16, which would make every fp16 fidelity figure on the embedded default meaningless.
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    encoder.train()
    with torch.no_grad():
        for _ in range(2):
            encoder(torch.randn(2, 3, 128, 128, generator=generator))
    encoder.eval()


def random_lseg(variant: str = DEFAULT_VARIANT, seed: int = RANDOM_SEED) -> LSeg:
    """The embedded default: the real architecture with seeded random weights (no semantics).

    The image encoder and then the text tower are initialised in one RNG stream seeded with `seed`;
    the text tower is built later, on first use, from the RNG state the image encoder left, so its
    weights are the same as when both were built here.
    """
    cfg = get_config(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = LSegImageEncoder(cfg)
        text = LazyTextTower.from_rng_state(cfg.text, torch.get_rng_state())
        generator = torch.Generator().manual_seed(seed)
        _calibrate_batchnorm(image, generator)
    log.info("built %s with seeded random weights (seed %d): features carry no semantics", variant, seed)
    return _finish(LSeg(cfg, image, text, RANDOM))


def load_lseg(source: str | Path, *, variant: str | None = None, device: str | torch.device = "cpu") -> LSeg:
    """Load an LSeg network from a lang-seg `.ckpt`, a plain state-dict file, or `"random"`.

    Args:
        source: path of the checkpoint, or "random" for seeded random weights.
        variant: force `vit_l16` / `rn101_zs` (or a tiny test variant); detected from the keys when
            None. For "random" it picks the architecture (default vit_l16).
        device: where the modules live.
    """
    if str(source) == RANDOM:
        return random_lseg(variant or DEFAULT_VARIANT).to(device)
    state_dict = read_checkpoint(source)
    cfg = get_config(variant or detect_variant(state_dict))
    image, text_sd, report = load_weights(state_dict, cfg)
    log.info("loaded %s weights from %s", cfg.name, source)
    return _finish(LSeg(cfg, image, LazyTextTower.from_state_dict(cfg.text, text_sd), str(source), report)).to(device)


def _finish(lseg: LSeg) -> LSeg:
    """Inference only: eval mode (BN running stats) and no autograd bookkeeping (the text tower is made so
    when it is built)."""
    lseg.image_encoder.eval().requires_grad_(False)
    return lseg
