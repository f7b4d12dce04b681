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


def encode_tokens(tower: TextTransformer, ids: torch.Tensor) -> torch.Tensor:
    """`tower(ids)` computed on the shortest prefix that holds every end-of-text token.

    The text transformer is causal and pools at the end-of-text position, so the zero padding after it
    never changes the result: cutting 77 positions to the longest label (a few tokens for class
    names) gives the same features ~10x faster, which makes encoding the whole 49k-token vocabulary
    practical on a CPU.
    """
    length = int((ids != 0).sum(dim=1).max())
    ids = ids[:, :length]
    x = tower.token_embedding(ids) + tower.positional_embedding[:length]
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
    return pooled @ tower.text_projection
