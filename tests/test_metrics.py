"""Metrics against known values, in float64."""

from __future__ import annotations

import numpy as np
import torch

from lseg_trt.metrics import compare_features


def test_identical_and_opposite() -> None:
    x = torch.randn(1, 32, 16, 16)
    same = compare_features(x, x)
    assert same.cosine == 1.0 and same.pixel_cosine_min == 1.0 and same.max_abs == 0.0 and same.rel_l2 == 0.0
    opposite = compare_features(-x, x)
    assert opposite.cosine == -1.0 and opposite.pixel_cosine_mean == -1.0
    assert opposite.rel_l2 == np.float64(2.0)


def test_cosine_never_above_one_for_large_float32_maps() -> None:
    """The seed reported 1.0033 for a 512x240x240 self-cosine computed in float32."""
    x = torch.randn(1, 512, 240, 240)
    x = x / x.norm(dim=1, keepdim=True)
    m = compare_features(x, x.clone())
    assert m.cosine <= 1.0 and m.pixel_cosine_min <= 1.0
    assert m.cosine > 0.9999999


def test_known_angle_and_nonfinite() -> None:
    a = np.zeros((1, 2, 1, 2))
    a[0, 0] = 1.0  # unit x
    b = np.zeros((1, 2, 1, 2))
    b[0, :, 0, 0] = (1.0, 0.0)
    b[0, :, 0, 1] = (0.0, 1.0)  # orthogonal at the second pixel
    m = compare_features(a, b)
    assert m.pixel_cosine_min == 0.0 and m.pixel_cosine_mean == 0.5
    a[0, 0, 0, 0] = np.nan
    assert compare_features(a, b).nonfinite == 1
    assert compare_features(b, a).nonfinite == 1  # a NaN in the reference counts as much as one in the candidate


def test_tolerances_fail_on_nonfinite_either_side() -> None:
    from lseg_trt.tolerances import TOLERANCES

    x = torch.randn(1, 8, 4, 4)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    for precision, tolerance in TOLERANCES.items():
        assert tolerance.passes(compare_features(x, x)), precision
        assert not tolerance.passes(compare_features(x, bad)) and not tolerance.passes(compare_features(bad, x))
