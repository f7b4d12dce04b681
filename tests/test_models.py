"""The encoders: output contract, size rules, precision handling, and the ViT taps against timm."""

from __future__ import annotations

import pytest
import torch

from lseg_trt import InvalidSizeError
from lseg_trt.models import LSeg
from lseg_trt.sizes import check_size, nearest_valid, parse_size


def test_output_is_unit_norm_half_resolution(tiny: LSeg) -> None:
    x = torch.randn(3, 3, 64, 96)
    with torch.inference_mode():
        y = tiny.image_encoder(x)
    assert y.shape == (3, tiny.config.out_c, 32, 48)
    assert y.dtype == torch.float32
    norms = torch.linalg.vector_norm(y.double(), dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)


def test_batch_items_are_independent(tiny: LSeg) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        both = tiny.image_encoder(x)
        second = tiny.image_encoder(x[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(48, 64), (64, 80), (100, 64), (16, 64)])
def test_invalid_sizes_raise_value_error_naming_neighbours(tiny_vit: LSeg, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="nearest"):
        tiny_vit.image_encoder(torch.randn(1, 3, *size))


def test_nearest_valid_sizes() -> None:
    assert nearest_valid(500) == (480, 512)
    assert nearest_valid(480) == (480, 480)
    assert nearest_valid(5) == (32, 32)
    with pytest.raises(InvalidSizeError, match="nearest: 448 or 480"):
        check_size(470, 480)
    assert parse_size("480x640") == (480, 640)
    assert parse_size("320") == (320, 320)


def test_bf16_encoder_takes_and_returns_float32(tiny: LSeg) -> None:
    """Weights in bf16, normalisation in float32: the output is unit-norm to float32 precision."""
    import copy

    encoder = copy.deepcopy(tiny.image_encoder).to(torch.bfloat16)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        y = encoder(x)
        reference = tiny.image_encoder(x)
    assert y.dtype == torch.float32
    norms = torch.linalg.vector_norm(y.double(), dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)
    cosine = (y.double() * reference.double()).sum(1)
    assert cosine.mean() > 0.99


def test_vit_taps_match_timm_intermediates(tiny_vit: LSeg) -> None:
    """At the pre-training grid the pos-embed resize is an identity, so our taps must equal timm's
    own pre-norm block outputs: checks token order, cls handling and hook indices independently."""
    trunk = tiny_vit.image_encoder.pretrained
    size = trunk.patch_size * trunk.pretrain_grid
    x = torch.randn(1, 3, size, size)
    torch.testing.assert_close(trunk.resized_pos_embed(trunk.pretrain_grid, trunk.pretrain_grid), trunk.model.pos_embed)
    captured = []
    handles = [trunk.model.blocks[i].register_forward_hook(lambda m, i, o: captured.append(o)) for i in trunk.hooks]
    with torch.inference_mode():
        expected = trunk.model.forward_features(x)  # timm's own path (final norm is Identity here)
        trunk(x)
    for h in handles:
        h.remove()
    timm_taps, our_taps = captured[: len(trunk.hooks)], captured[len(trunk.hooks) :]
    for theirs, ours in zip(timm_taps, our_taps, strict=True):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(timm_taps[-1], expected)
