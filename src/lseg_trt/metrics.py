"""Feature-map agreement in float64.

The seed computed one float32 cosine over ~10^7 elements and reported values above 1. Here every
sum runs in float64, cosines are clipped to [-1, 1] (rounding can still push a float64 ratio a hair
over), and per-pixel statistics are reported beside the flattened cosine, because one bad region
hides in a global mean. L2 alone grows with the pixel count, so the relative L2 is the one to compare
across sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class FeatureMetrics:
    """Agreement of a candidate feature map with a reference of the same shape (B, C, H, W)."""

    cosine: float  # flattened
    pixel_cosine_min: float
    pixel_cosine_mean: float
    pixel_cosine_p1: float  # 1st percentile
    rel_l2: float  # ||a - b|| / ||b||
    max_abs: float
    l2: float
    nonfinite: int  # NaN or Inf values in the candidate and the reference together

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def count_nonfinite(x: ArrayLike) -> int:
    values = _f64(x)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def compare_features(candidate: ArrayLike, reference: ArrayLike) -> FeatureMetrics:
    """All metrics of `candidate` against `reference`, in float64; the channel axis is 1."""
    a, b = _f64(candidate), _f64(reference)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    nonfinite = count_nonfinite(a) + count_nonfinite(b)
    if nonfinite:  # a bad reference must not pass for a good candidate: both count, both are zeroed
        a, b = (np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) for x in (a, b))
    pixel = pixel_cosine_map(a, b)
    diff = a - b
    ref_norm = np.linalg.norm(b)
    return FeatureMetrics(
        cosine=float(_cosine(a.ravel()[None], b.ravel()[None], axis=1)[0]),
        pixel_cosine_min=float(pixel.min()),
        pixel_cosine_mean=float(pixel.mean()),
        pixel_cosine_p1=float(np.percentile(pixel, 1)),
        rel_l2=float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float("inf"),
        max_abs=float(np.abs(diff).max()),
        l2=float(np.linalg.norm(diff)),
        nonfinite=nonfinite,
    )


def _cosine(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """dot / sqrt(|a|²·|b|²): for a == b the division is exact (sqrt(fl(x·x)) == x in IEEE
    arithmetic), so identical maps give exactly 1 and opposite ones exactly -1; 0 where a norm is 0."""
    dot = (a * b).sum(axis=axis)
    denominator = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(denominator > 0, dot / denominator, 0.0), -1.0, 1.0)


def pixel_cosine_map(candidate: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """(B, H, W) per-pixel cosine in float64, for heat-maps."""
    return _cosine(_f64(candidate), _f64(reference), axis=1)
