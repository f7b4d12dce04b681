"""Issue 23: the feature store never serves stale, duplicated or corrupt features, and the inputs, the
API and the messages around it hold against a hostile or unlucky user (tiny network, CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lseg_trt.backends import parse_backend
from lseg_trt.backends.torch import TorchRunner
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction import FeatureExtractor, open_features
from lseg_trt.extraction.partition import parse_task
from lseg_trt.models import LSeg

SIZE = (64, 96)
ARGS = ("--weights", "random", "--variant", "tiny_vit", "--sizes", "64x96", "--device", "cpu", "--shard-size", "4")


@pytest.fixture(scope="module")
def fx(tiny_vit: LSeg) -> FeatureExtractor:
    runner = TorchRunner(tiny_vit.image_encoder, parse_backend("torch"), "cpu")
    meta = {"variant": tiny_vit.variant, "weights": tiny_vit.weights_name, "weights_sha256": tiny_vit.sha256}
    with FeatureExtractor(runner, SIZE, tiny_vit.mean, tiny_vit.std, batch_size=4, workers=2, metadata=meta) as ex:
        yield ex


def _image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _images(folder: Path, count: int, seed: int = 0) -> Path:
    for i in range(count):
        _image(folder / f"img{i:03d}.png", seed + i)
    return folder


def _one_line(result, *words: str) -> None:  # noqa: ANN001 - conftest's CliResult
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]  # log lines aside
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], result.stderr


# ---- class 12: --shard digits -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["²/³", "1/٣", "１/２", "0/⁴"])
def test_shard_rejects_digits_that_are_not_ascii(text: str, tmp_path: Path, cli: Callable) -> None:
    with pytest.raises(LsegTrtError, match="expected K/N"):
        parse_task(text)
    _one_line(cli("extract", *ARGS, "--images", tmp_path, "--out", tmp_path / "o", "--shard", text), "--shard")


# ---- class 8 and 13: the API --------------------------------------------------------------------------


def test_one_ndarray_frame_is_one_image_and_views_work(fx: FeatureExtractor) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    one = fx(rgb)
    assert one.shape == (1, *fx.output_shape())
    np.testing.assert_array_equal(one, fx.frame(rgb))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(fx.frame(bgr[..., ::-1]), one)  # the usual BGR->RGB view
    np.testing.assert_array_equal(fx([bgr[..., ::-1]]), one)
    padded = np.zeros((48, 100, 3), np.uint8)
    padded[:, ::-1][:, 20:][:, ::-1] = rgb  # a non-contiguous crop
    np.testing.assert_array_equal(fx.frame(padded[:, :80]), one)
    np.testing.assert_allclose(fx(np.stack([rgb, rgb]))[1:], one, atol=1e-5)  # a 4-d array is a batch


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((4, 0, 3), np.uint8), np.zeros((0, 4, 4, 3), np.uint8)]
)
def test_empty_arrays_are_user_errors(fx: FeatureExtractor, bad: np.ndarray) -> None:
    with pytest.raises(LsegTrtError):
        fx(bad)
    if bad.ndim == 3:
        with pytest.raises(LsegTrtError):
            fx.frame(bad)
    import torch

    with pytest.raises(LsegTrtError):
        fx(torch.from_numpy(bad if bad.ndim == 4 else bad[None]))


# ---- class 11: messages never ask for the flag that was given ---------------------------------------


def test_a_run_without_its_settings_file(tmp_path: Path, cli: Callable) -> None:
    images = _images(tmp_path / "I", 5)
    out = tmp_path / "O"
    assert cli("extract", *ARGS, "--images", images, "--out", out).returncode == 0
    run = next(out.rglob("*.run"))
    (run / "run.json").unlink()
    resumed = cli("extract", *ARGS, "--images", images, "--out", out, "--resume")
    _one_line(resumed, "--force")
    assert "--resume" not in resumed.stderr
    plain = cli("extract", *ARGS, "--images", images, "--out", out)
    _one_line(plain, "--resume", "--force")
    forced = cli("extract", *ARGS, "--images", images, "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (run / "run.json").is_file() and len(open_features(run)) == 5
