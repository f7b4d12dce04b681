"""The CLIP text tower against open_clip's own OpenAI-format CLIP, and the tokenizer contract."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import build_model_from_openai_state_dict

from lseg_trt import LsegTrtError, load_lseg
from lseg_trt.models import LSeg
from lseg_trt.models.clip_text import encode_tokens, tokenize
from lseg_trt.models.synthetic import lang_seg_state_dict


def test_tokens_match_open_clip() -> None:
    labels = ["dog", "grass", "a photo of a cat", "others"]
    torch.testing.assert_close(tokenize(labels), open_clip.tokenize(labels))


@pytest.mark.parametrize("labels", [[], ["dog", ""], ["word " * 80]])
def test_bad_labels_are_user_errors(labels: list[str]) -> None:
    with pytest.raises(LsegTrtError):
        tokenize(labels)


def test_trimmed_encoding_equals_full_context(tiny_rn: LSeg) -> None:
    ids = tokenize(["dog", "a photo of a big cat on a sofa", "x"])
    with torch.inference_mode():
        full = tiny_rn.text_encoder(ids)
        trimmed = encode_tokens(tiny_rn.text_encoder, ids)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)


def test_text_features_match_open_clip_full_clip(tiny_vit: LSeg, tmp_path: Path) -> None:
    """Rebuild the whole CLIP (both towers) from the checkpoint tensors with open_clip's OpenAI builder
    and compare encode_text: an independent construction of the same network."""
    sd = lang_seg_state_dict(tiny_vit)
    torch.save({"state_dict": sd}, tmp_path / "plain.pt")
    loaded = load_lseg(tmp_path / "plain.pt")
    prefix = "net.clip_pretrained."
    clip_sd = {k[len(prefix) :]: v.float() for k, v in sd.items() if k.startswith(prefix)}
    clip = build_model_from_openai_state_dict(clip_sd, quick_gelu=True, cast_dtype=torch.float32).float().eval()
    labels = ["dog", "grass", "other"]
    with torch.inference_mode():
        expected = clip.encode_text(open_clip.tokenize(labels))
    expected = expected / expected.norm(dim=-1, keepdim=True)
    ours = loaded.encode_text(labels)
    assert ours.shape == (3, tiny_vit.config.out_c)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
