"""Pre-processing: sample photos, resize, [0, 1] scaling and per-variant normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lseg_trt import LsegTrtError
from lseg_trt.images import list_images, load_image, preprocess, samples
from lseg_trt.models import LSeg


def test_samples_are_real_photos() -> None:
    paths = samples()
    assert set(paths) == {"chelsea", "astronaut", "coffee"}
    for path in paths.values():
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 256


def test_preprocess_maps_to_normalised_range(tiny_rn: LSeg, tiny_vit: LSeg) -> None:
    image = np.zeros((50, 70, 3), dtype=np.uint8)
    image[:, 35:] = 255
    x = preprocess(image, (64, 96), tiny_vit.mean, tiny_vit.std)
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)
    y = tiny_rn.preprocess(image, (64, 96))
    assert y[0, 0, 0, 0].item() == pytest.approx((0 - 0.485) / 0.229, abs=1e-6)
    assert y[0, 2, 0, -1].item() == pytest.approx((1 - 0.406) / 0.225, abs=1e-6)


def test_default_size_rounds_to_32(tiny_vit: LSeg) -> None:
    x = tiny_vit.preprocess(Image.new("RGB", (300, 200)))
    assert x.shape[-2:] == (192, 288)


def test_bad_images(tmp_path: Path, tiny_vit: LSeg) -> None:
    with pytest.raises(LsegTrtError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LsegTrtError, match="cannot read image"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="nearest"):
        tiny_vit.preprocess(samples()["chelsea"], (100, 100))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LsegTrtError, match="no images"):
        list_images([tmp_path / "empty"])
