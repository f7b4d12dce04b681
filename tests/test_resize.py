"""The GEMM resize of the device pre-processing against torch's antialiased bilinear kernel, which it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lseg_trt.extraction.preprocess import _resized, gemm_resized, network_input, resize_weights

# the worst difference measured over these cases is 7.6e-5 on the 0..255 scale (float32 rounding)
TOLERANCE = 1e-3

SIZES = [
    ((720, 1280), (480, 640)),  # the camera case, shrink by 1.5 and 2
    ((719, 1283), (480, 640)),  # non-integer factors, odd input sizes
    ((960, 1280), (480, 640)),  # shrink by exactly 2
    ((100, 100), (64, 96)),  # shrink one axis, hardly the other
    ((40, 50), (64, 96)),  # upscale both
    ((50, 200), (64, 96)),  # upscale rows, shrink columns
    ((3, 5), (64, 64)),  # a few pixels blown up
    ((1, 1), (4, 6)),  # one pixel: every output is that pixel
    ((64, 64), (1, 1)),  # one output pixel: the mean of a triangle over everything
    ((37, 29), (37, 16)),  # one axis unchanged
]


def reference(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(pixels.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


def random_pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("source", "size"), SIZES)
def test_matches_torch_antialias(source: tuple[int, int], size: tuple[int, int]) -> None:
    pixels = random_pixels(2, 3, *source)
    resized = gemm_resized(pixels, size)  # the GPU's path, run here on the CPU
    assert resized.shape == (2, 3, *size) and resized.dtype == torch.float32
    assert (resized - reference(pixels, size)).abs().max() < TOLERANCE


def test_channels_last_batch_matches_channels_first_reference() -> None:
    frames = random_pixels(3, 719, 1283, 3, seed=1)
    first = frames.permute(0, 3, 1, 2)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    expected = (reference(first, (480, 640)) / 255 - 0.5) / 0.25
    for batch in (frames, first.contiguous()):
        x = network_input(batch, (480, 640), mean, std)
        assert x.is_contiguous() and x.shape == (3, 3, 480, 640)
        assert (x - expected).abs().max() < TOLERANCE / 255 / 0.25
    assert not torch.equal(x[0], x[1])  # each image of the batch is resized on its own


def test_weights_rows_sum_to_one_and_equal_sizes_skip() -> None:
    weights = resize_weights(1283, 640, torch.device("cpu"))
    assert weights.shape == (640, 1283) and weights.min() >= 0
    torch.testing.assert_close(weights.sum(1), torch.ones(640))
    assert resize_weights(1283, 640, torch.device("cpu")) is weights  # built once per run
    pixels = random_pixels(1, 3, 48, 64)
    assert torch.equal(_resized(pixels, (48, 64)), pixels.float())
