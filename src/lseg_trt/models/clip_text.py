"""CLIP ViT-B/32 text tower and tokenizer, rebuilt from the tensors every lang-seg checkpoint carries.

lang-seg calls OpenAI `clip.load("ViT-B/32")` and stores the whole CLIP model under
`net.clip_pretrained.*`; only its text half is used (`encode_text`). open_clip's `TextTransformer`
has the same parameter names as OpenAI's CLIP text side (`token_embedding`, `positional_embedding`,
`transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`),
so the tensors load without renaming; QuickGELU and argmax (end-of-text) pooling match OpenAI's model.
The BPE vocabulary ships inside open_clip: nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer

from lseg_trt.errors import LsegTrtError
from lseg_trt.models.config import TextTowerConfig


def build_text_tower(cfg: TextTowerConfig) -> TextTransformer:
    """An OpenAI-layout CLIP text transformer of the given size (randomly initialised)."""
    return TextTransformer(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        heads=cfg.heads,
        layers=cfg.layers,
        output_dim=cfg.embed_dim,
        act_layer=QuickGELU,
        norm_layer=LayerNorm,
        pool_type="argmax",
    )


@lru_cache(maxsize=4)
def tokenizer(context_length: int = 77) -> SimpleTokenizer:
    """open_clip's BPE tokenizer, cached: building it parses the 49k-merge vocabulary."""
    return SimpleTokenizer(context_length=context_length)


def tokenize(labels: list[str], context_length: int = 77) -> torch.Tensor:
    """Token ids (N, context_length) with SOT/EOT, like OpenAI `clip.tokenize`.

    Raw labels, no prompt template, as lang-seg does. Empty and over-long labels are user errors:
    OpenAI's tokenizer refuses over-long text too, where open_clip would silently truncate.
    """
    if not labels:
        raise LsegTrtError("no labels given")
    stripped = [label.strip() for label in labels]
    if any(not label for label in stripped):
        raise LsegTrtError(f"empty label in {labels!r}")
    tok = tokenizer(context_length)
    for label in stripped:
        if len(tok.encode(label)) > context_length - 2:
            raise LsegTrtError(f"label too long for CLIP's {context_length}-token context: {label[:40]!r}...")
    return tok(stripped)
