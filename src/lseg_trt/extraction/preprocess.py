"""Network input on the device: uint8 pixels -> float -> antialiased resize -> [0, 1] -> mean/std, batched.

The PIL path (`lseg_trt.images.preprocess`) stays the reference. Both resize with a bilinear filter
widened by the shrink factor (torch's `antialias=True` reproduces PIL's filter); they differ in that PIL
rounds the resized image to uint8 and this path keeps it in float32. `gpu_vs_pil` measures what that
changes in the features.

On a GPU the resize is two matrix products, out = Wh @ X @ Ww^T per image and channel, with the filter
weights of each axis in a dense matrix (`resize_weights`): it computes what `F.interpolate(...,
mode="bilinear", antialias=True)` computes (7.6e-5 at most on the 0..255 scale over the tested sizes;
tests assert 1e-3). Torch's antialias kernel on CUDA is a direct 2-D kernel, and on the H100 a 720p
frame took 0.7 ms longer through `stream()` than through the model alone (batch 8, 480x640; 1.7 ms in
the to-disk run's compute stage, reductions included); these GEMMs are about 4.9 GFLOP per frame, about
0.07 ms at the H100's float32 peak. Neither kernel has been timed alone on a GPU yet
(`benchmarks/resize_bench.py --device cuda` does). On a CPU torch's kernel is separable and touches
only the filter taps: 18 ms per 720p frame against 61 ms for the dense products on 2 cores
(benchmarks/results/cpu-2026-11-25/resize_bench.md), so the CPU keeps it.
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
    """float32 (B, 3, h, w), antialiased bilinear: GEMMs on a GPU, torch's kernel on a CPU (module docstring)."""
    if tuple(pixels.shape[-2:]) == size:
        return pixels.float()
    if pixels.device.type == "cuda":
        return gemm_resized(pixels, size)
    return F.interpolate(pixels.float(), size, mode="bilinear", antialias=True, align_corners=False)


def gemm_resized(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float32 (B, 3, h, w): torch's bilinear antialiased resize as two GEMMs (see the module docstring).

    The products run at the float32 matmul precision the caller has set: torch's default is IEEE float32.
    A user who enables TF32 globally gets TF32 here too: emulated on a CPU, that costs a mean error of
    0.005 to 0.13 and a maximum of 0.1 to 0.4 on the 0..255 scale (depending on how operands are rounded
    to TF32), under the uint8 rounding (0.5) of the PIL reference. Switching TF32 off here
    instead would mean writing a global flag on every batch, which races with other threads, and torch
    >= 2.9 raises when the legacy and the new precision flags are mixed, so it could break a caller.
    """
    x = pixels.float()
    (in_h, in_w), (out_h, out_w) = x.shape[-2:], size
    rows, cols = resize_weights(in_h, out_h, x.device), resize_weights(in_w, out_w, x.device)
    if in_h * out_w * (in_w + out_h) <= out_h * in_w * (in_h + out_w):  # multiply-adds of each order
        return rows @ (x @ cols.T)  # width first: one (B*3*H, W) x (W, w) GEMM, then a batched one
    return (rows @ x) @ cols.T


@functools.lru_cache(maxsize=16)
def resize_weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """(out_size, in_size) float32 weights of torch's / PIL's antialiased bilinear filter along one axis.

    Output pixel i is centred at (i + 0.5) * in/out in input coordinates; the triangle filter has radius
    1 input pixel, widened to in/out when shrinking so that every input pixel counts (that is the
    antialiasing); each row is normalised to sum to 1, which also renormalises the rows cut by the border
    (torch's `_compute_indices_min_size_weights_aa`, PIL's `precompute_coeffs`). The scale and the centres
    are rounded to float32 as torch's kernels do (at a centre near 1000 that moves weights by up to 2e-5,
    0.006 on the 0..255 scale); the rest is float64. Cached because every batch of a run has the same sizes.
    """
    scale = torch.tensor(in_size / out_size, dtype=torch.float32).double()
    centres = (scale * (torch.arange(out_size, dtype=torch.float64) + 0.5)).float().double()
    offsets = (torch.arange(in_size, dtype=torch.float64) + 0.5)[None, :] - centres[:, None]
    weights = (1 - offsets.abs() / scale.clamp(min=1)).clamp_(min=0)
    return (weights / weights.sum(1, keepdim=True)).to(device=device, dtype=torch.float32)


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
