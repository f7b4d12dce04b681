"""Open-vocabulary segmentation on LSeg features: labels, or every token of the CLIP vocabulary.

Logits are formed as lang-seg forms them (`lseg_net.py`): 1/0.07 · fp16(image features) ·
fp16(text features)ᵀ, computed at H/2 x W/2; lang-seg then upsamples the logits x2 (bilinear,
align_corners=True), and its evaluator resizes them to the image size the same way. We do both in one
bilinear (align_corners=True) resize to the original image size, then take the argmax.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lseg_trt.errors import LsegTrtError
from lseg_trt.models import LOGIT_SCALE, LSeg
from lseg_trt.models.clip_text import encode_tokens, tokenizer
from lseg_trt.models.factory import tensors_sha256

log = logging.getLogger(__name__)


def parse_labels(text: str) -> list[str]:
    """`"dog, grass, other"` -> ["dog", "grass", "other"]; empty, duplicate or multi-line labels are errors
    (the names file holds one label per line, so a line break would shift every index after it)."""
    labels = [label.strip() for label in text.split(",")]
    if not text.strip() or any(not label for label in labels):
        raise LsegTrtError(f"empty label in {text!r}: give comma-separated labels, e.g. 'dog, grass, other'")
    broken = [label for label in labels if not label.isprintable()]
    if broken:
        raise LsegTrtError(f"labels may not hold line breaks or control characters: {broken[0]!r}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise LsegTrtError(f"duplicate labels: {', '.join(duplicates)}")
    return labels


def logits(features: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, N, H, W) float32 logits at `size` from (B, C, h, w) features and (N, C) text features."""
    # lang-seg: (logit_scale * image_features.half()) @ text_features.t(), all fp16; accumulate in
    # float32 (as cuBLAS does) so it also runs on CPUs, and round the result to fp16 like lang-seg.
    f = (features.permute(0, 2, 3, 1).to(torch.float16) * LOGIT_SCALE).float()
    raw = (f @ text.to(torch.float16).float().t()).to(torch.float16)
    raw = raw.float().permute(0, 3, 1, 2)
    return F.interpolate(raw, size=size, mode="bilinear", align_corners=True)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours of lang-seg's `get_new_pallete` (PASCAL-VOC bit interleaving; 0 is black)."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for label in range(n):
        j, r, g, b = label, 0, 0, 0
        for i in range(8):
            r |= ((j >> 0) & 1) << (7 - i)
            g |= ((j >> 1) & 1) << (7 - i)
            b |= ((j >> 2) & 1) << (7 - i)
            j >>= 3
        colours[label] = (r, g, b)
    return colours


@dataclass
class Segmentation:
    """Per-pixel label indices at the image's size and the names they refer to."""

    label_map: np.ndarray  # (H, W) int32 indices into `names`
    names: list[str]

    def save(self, path: Path) -> None:
        """The label map as int32 .npy plus a .txt of the names, one per line (index = line number)."""
        from lseg_trt.files import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, self.label_map)
        with atomic_path(path.with_suffix(".txt")) as tmp:
            tmp.write_text("\n".join(self.names) + "\n")

    def shares(self) -> list[tuple[str, float]]:
        """(name, share of pixels), largest first, only names that occur."""
        counts = np.bincount(self.label_map.ravel(), minlength=len(self.names))
        total = self.label_map.size
        return sorted(((self.names[i], c / total) for i, c in enumerate(counts) if c), key=lambda t: -t[1])


def segment_labels(features: torch.Tensor, lseg: LSeg, labels: list[str], size: tuple[int, int]) -> Segmentation:
    """Argmax over `labels` of lang-seg's logits, upsampled to `size` (the image's H, W)."""
    return segment_text(features, lseg.encode_text(labels), labels, size)


def segment_text(features: torch.Tensor, text: torch.Tensor, labels: list[str], size: tuple[int, int]) -> Segmentation:
    """`segment_labels` from text features already encoded: the demo page times the text tower and the
    argmax apart, and re-runs only these two steps when the labels change."""
    label_map = logits(features[:1], text.to(features.device), size).argmax(dim=1)[0]
    return Segmentation(label_map.cpu().numpy().astype(np.int32), labels)


def vocabulary(lseg: LSeg) -> list[str]:
    """Every BPE token decoded to text, as the seed's word-free demo does (specials and byte pieces too)."""
    tok = tokenizer(lseg.config.text.context_length)
    return [tok.decode([i]).strip() for i in range(lseg.config.text.vocab_size)]


def text_tower_hash(lseg: LSeg) -> str:
    """Key for the vocabulary-embedding cache: changes whenever any text-tower weight does."""
    return tensors_sha256(lseg.text_encoder)[:16]


def vocabulary_embeddings(
    lseg: LSeg, cache_dir: Path | None, batch: int = 512, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    """(V, C) unit text features of the whole vocabulary, cached as .npy per text tower."""
    cache = cache_dir / f"vocab_{lseg.variant}_{text_tower_hash(lseg)}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        cached = _read_cache(cache, (lseg.config.text.vocab_size, lseg.config.text.embed_dim))
        if cached is not None:
            log.info("vocabulary embeddings from cache %s", cache)
            return cached
    tok = tokenizer(lseg.config.text.context_length)
    words = vocabulary(lseg)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(words), batch):
            ids = tok(words[start : start + batch]).to(lseg.device)
            t = encode_tokens(lseg.text_encoder, ids).float()
            chunks.append((t / t.norm(dim=-1, keepdim=True)).cpu())
            if progress:
                progress(len(ids))
    embeddings = torch.cat(chunks)
    if cache is not None:
        from lseg_trt.files import atomic_path

        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.save(f, embeddings.numpy())
    return embeddings


def _read_cache(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached embeddings, or None (with a warning) when the file is truncated or not what we wrote:
    a damaged cache is recomputed and replaced, never trusted."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        log.warning("ignoring unreadable vocabulary cache %s (%s); recomputing", path, e)
        return None
    if array.shape != shape or array.dtype != np.float32 or not np.isfinite(array).all():
        log.warning("ignoring vocabulary cache %s (%s %s, expected float32 %s); recomputing", path, array.dtype,
                    array.shape, shape)  # fmt: skip
        return None
    return torch.from_numpy(array)


def segment_wordfree(features: torch.Tensor, vocab: torch.Tensor, words: list[str], batch: int = 4096) -> Segmentation:
    """Per-pixel best vocabulary token at feature resolution (as the seed's demo: no upsampling).

    Running maximum over vocabulary batches; strictly greater wins, so ties keep the earlier token.
    """
    f = features[0].flatten(1).t().float()  # (HW, C)
    best = torch.full((f.shape[0],), -float("inf"))
    index = torch.zeros(f.shape[0], dtype=torch.long)
    for start in range(0, vocab.shape[0], batch):
        scores = f @ vocab[start : start + batch].to(f.device).t()
        value, arg = scores.max(dim=1)
        better = value.cpu() > best
        best[better] = value.cpu()[better]
        index[better] = arg.cpu()[better] + start
    found, compact = np.unique(index.numpy(), return_inverse=True)
    h, w = features.shape[2:]
    return Segmentation(compact.reshape(h, w).astype(np.int32), [words[i] for i in found])
