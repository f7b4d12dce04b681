"""Network input on the device: uint8 pixels -> float -> antialiased resize -> [0, 1] -> mean/std, batched.

The PIL path (`lseg_trt.images.preprocess`) stays the reference. Both resize with a bilinear filter
widened by the shrink factor (torch's `antialias=True` reproduces PIL's filter); they differ in that PIL
rounds the resized image to uint8 and this path keeps it in float32. `gpu_vs_pil` measures what that
changes in the features.

The resize is torch's `F.interpolate(..., mode="bilinear", antialias=True)` on every device. An
earlier version ran it on a GPU as two dense GEMMs (the filter weights of each axis in a matrix), on the
belief that torch's CUDA kernel was slow; timed alone on an H200 (batch 8, 1280x720 -> 480x640), torch's
kernel took 0.041 ms a frame and the GEMMs 0.134 (benchmarks/results/h200x2-2026-11-26c/resize_bench.md),
so the GEMMs went.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from lseg_trt.errors import LsegTrtError
from lseg_trt.images import load_rgb_array
from lseg_trt.images import preprocess as pil_preprocess
from lseg_trt.metrics import compare_features
from lseg_trt.sizes import check_size

if TYPE_CHECKING:
    from lseg_trt.backends import Runner

Pixels = torch.Tensor | Sequence[torch.Tensor]  # (B, H, W, 3) / (B, 3, H, W) uint8, or a list of (H, W, 3)


def network_input(
    pixels: Pixels,
    size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """(B, 3, H, W) float32 contiguous input on the pixels' device.

    Args:
        pixels: a uint8 batch, channels last (B, H, W, 3) or first (B, 3, H, W), or a list of (H, W, 3)
            images of different sizes (each resized on its own, then stacked).
        size: network input (H, W).
        mean, std: per-channel normalisation of the checkpoint, applied after scaling to [0, 1].
    """
    check_size(*size)
    if isinstance(pixels, torch.Tensor):
        return _normalised(_resized(_channels_first(pixels), size), mean, std)
    return torch.cat([network_input(p[None], size, mean, std) for p in pixels])


def _channels_first(pixels: torch.Tensor) -> torch.Tensor:
    if pixels.dtype != torch.uint8 or pixels.ndim != 4:
        raise LsegTrtError(
            f"image batches must be uint8 (B, H, W, 3) or (B, 3, H, W), not {pixels.dtype} {tuple(pixels.shape)}"
        )
    if pixels.shape[-1] == 3:
        return pixels.permute(0, 3, 1, 2)
    if pixels.shape[1] == 3:
        return pixels
    raise LsegTrtError(f"image batches need 3 channels first or last, not shape {tuple(pixels.shape)}")


def _resized(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float32 (B, 3, h, w), antialiased bilinear (module docstring)."""
    if tuple(pixels.shape[-2:]) == size:
        return pixels.float()
    return F.interpolate(pixels.float(), size, mode="bilinear", antialias=True, align_corners=False)


def _normalised(x: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]) -> torch.Tensor:
    scale, shift = _normalisation(tuple(mean), tuple(std), x.device)
    return (x * scale - shift).contiguous()  # (x / 255 - mean) / std in one fused pass


@functools.lru_cache(maxsize=16)
def _normalisation(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) as (1, 3, 1, 1) tensors on `device`, made once: a blocking host-to-device copy per
    batch would make the host wait for all queued GPU work, so it could not queue the next batch ahead."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=device).view(1, 3, 1, 1)
    return scale, shift


def gpu_vs_pil(
    runner: Runner,
    images: dict[str, np.ndarray | str | Path],
    size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> dict[str, dict[str, float]]:
    """Per image: agreement (float64 metrics) of features from this pre-processing vs the PIL reference.

    `runner` must be active; images are paths or uint8 arrays.
    """
    results = {}
    for name, image in images.items():
        array = load_rgb_array(image)
        reference = runner.infer_host(pil_preprocess(array, size, mean, std))
        device_input = network_input(torch.from_numpy(array)[None].to(runner.device), size, mean, std)
        candidate = runner.infer_host(device_input.cpu())
        results[name] = compare_features(candidate, reference).to_dict()
    return results
