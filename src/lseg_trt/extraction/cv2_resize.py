"""OpenCV's `cv2.resize(INTER_LINEAR)` as torch ops, bit for bit: lseg-minimal and ConceptFusion resize
their frames with it before the network, and OpenCV is not a dependency.

OpenCV computes it two ways, depending on the pixels' type (opencv-python 4.x and 5.x, x86 wheels, checked
against the real `cv2.resize` on 170 source/target sizes; `tests/fixtures/cv2_resize.npz` keeps some):

- uint8 (lseg-minimal's `cv2.imread` frames): `resizeGeneric_` with 11-bit fixed-point weights. Source
  positions `(d + 0.5) * scale - 0.5` are rounded to float32, weights to multiples of 1/2048; a column
  left or right of the image takes the edge pixel, a row outside keeps its weights on the clamped rows;
  the row pass rounds as `VResizeLinear<uchar>` does, `((b0 * (D0 >> 4)) >> 16) + ((b1 * (D1 >> 4)) >> 16)
  + 2) >> 2`. A bilinear filter rounded to uint8 is one level off in about one pixel in ten.
- float64 (ConceptFusion: gradslam's dataset reads frames as float64): OpenCV hands 64-bit linear resizes
  to IPP, which keeps positions and weights in double and replicates the edge pixels. Not rounded.

An image already at the target size is returned as it is (OpenCV copies it).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
COEF_SCALE = 1 << COEF_BITS

Taps = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def positions(n: int, m: int, float32: bool) -> tuple[np.ndarray, np.ndarray]:
    """First source index and fraction towards the next of each of `m` output pixels from `n` source pixels,
    as OpenCV computes them: `scale = 1 / (m / n)` in double, the position rounded to float32 on the uint8
    path. The fraction is exact in both (a number minus its floor)."""
    scale = 1.0 / (m / n)
    position = (np.arange(m, dtype=np.float64) + 0.5) * scale - 0.5
    if float32:
        position = position.astype(np.float32)
    first = np.floor(position)
    return first.astype(np.int64), position - first


@functools.lru_cache(maxsize=64)
def taps(n: int, m: int, fixed: bool, clamp_fraction: bool, device: torch.device) -> Taps:
    """Indices of the two source pixels and their weights, for one axis of n -> m pixels, on `device`.

    fixed: the uint8 path (float32 positions, integer weights of 1/2048), else IPP's doubles.
    clamp_fraction: a position outside [0, n - 1] takes the edge pixel with weight one (OpenCV's columns,
    IPP's both axes); else it keeps its fraction and both taps are clamped to the image (OpenCV's rows)."""
    first, fraction = positions(n, m, fixed)
    if clamp_fraction:
        outside = (first < 0) | (first >= n - 1)
        fraction[outside] = 0
        first = first.clip(0, n - 1)
    second = (first + 1).clip(0, n - 1)
    first = first.clip(0, n - 1)
    if fixed:  # saturate_cast<short>(cbuf * 2048): round half to even, of float32 weights
        fraction32 = fraction.astype(np.float32)
        w0 = np.rint((np.float32(1) - fraction32) * COEF_SCALE).astype(np.int64)
        w1 = np.rint(fraction32 * COEF_SCALE).astype(np.int64)
    else:
        w0, w1 = 1.0 - fraction, fraction
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (first, second, w0, w1))  # type: ignore[return-value]


def cv2_linear(x: torch.Tensor, size: tuple[int, int], *, fixed: bool) -> torch.Tensor:
    """`cv2.resize(image, (w, h), interpolation=INTER_LINEAR)` of (B, C, H, W) pixels, `size` = (h, w).

    fixed: uint8-valued pixels, OpenCV's fixed-point path; returns int64 pixel values. Else float pixels
    resized in float64 as IPP does; returns float64 (the caller rounds to its own dtype, as gradslam does)."""
    height, width = x.shape[-2:]
    if (height, width) == tuple(size):
        return x.to(torch.int64 if fixed else torch.float64)
    c0, c1, a0, a1 = taps(width, size[1], fixed, True, x.device)
    r0, r1, b0, b1 = taps(height, size[0], fixed, not fixed, x.device)
    b0, b1 = b0[:, None], b1[:, None]
    if not fixed:
        x = x.to(torch.float64)
        rows = x[..., c0] * a0 + x[..., c1] * a1
        return rows[..., r0, :] * b0 + rows[..., r1, :] * b1
    x = x.to(torch.int64)
    rows = x[..., c0] * a0 + x[..., c1] * a1  # 2048 x the pixel, exact
    top, bottom = rows[..., r0, :] >> 4, rows[..., r1, :] >> 4
    return (((b0 * top) >> 16) + ((b1 * bottom) >> 16) + 2) >> 2
