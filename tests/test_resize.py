"""The device pre-processing: a uint8 batch in either layout -> antialiased resize -> normalised float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lseg_trt.extraction.preprocess import _resized, network_input


def random_pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_channels_last_batch_matches_channels_first_reference() -> None:
    frames = random_pixels(3, 719, 1283, 3, seed=1)
    first = frames.permute(0, 3, 1, 2)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    resized = F.interpolate(first.double(), size=(480, 640), mode="bilinear", antialias=True, align_corners=False)
    expected = (resized / 255 - 0.5) / 0.25
    for batch in (frames, first.contiguous()):
        x = network_input(batch, (480, 640), mean, std)
        assert x.is_contiguous() and x.shape == (3, 3, 480, 640) and x.dtype == torch.float32
        # float32 against the float64 kernel: torch computes the filter weights in the input's dtype, and float32
        # centres near pixel 1000 move weights by up to 2e-5 (0.006 on the 0..255 scale), so allow 0.02 there
        assert (x.double() - expected).abs().max() < 0.02 / 255 / 0.25
    assert not torch.equal(x[0], x[1])  # each image of the batch is resized on its own


def test_equal_sizes_skip_the_resize() -> None:
    pixels = random_pixels(1, 3, 48, 64)
    assert torch.equal(_resized(pixels, (48, 64)), pixels.float())
