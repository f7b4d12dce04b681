"""Decoding (modes, EXIF, hostile files) and pre-processing: resize, [0, 1] scaling, per-variant normalisation."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lseg_trt import LsegTrtError, images
from lseg_trt.images import _rgb_from_integers, load_image, load_rgb_array, preprocess, samples
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
    assert images.default_size(Image.new("RGB", (300, 200)), longest=640) == (192, 288)  # never enlarged
    assert images.default_size(Image.new("RGB", (4000, 3000)), longest=640) == (480, 640)
    assert images.default_size(Image.new("RGB", (3000, 100)), longest=640) == (32, 640)


def test_bad_images(tmp_path: Path, tiny_vit: LSeg) -> None:
    with pytest.raises(LsegTrtError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LsegTrtError, match="cannot read image"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="nearest"):
        tiny_vit.preprocess(samples()["chelsea"], (100, 100))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 128, 129]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    rgb = load_rgb_array(tmp_path / "gray16.png")
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 100, 255, 0, 1])
    assert (rgb == rgb[..., :1]).all()
    in_memory = Image.fromarray(np.array([[-5, 257 * 100, 65535]], dtype=np.int32))  # no stated depth: 16-bit
    assert in_memory.mode == "I"
    np.testing.assert_array_equal(load_rgb_array(in_memory)[0, :, 1], [0, 100, 255])
    wider = Image.fromarray(np.array([[-5, 65535, 70000]], dtype=np.int32))  # more than 16 bits: stretched
    np.testing.assert_array_equal(load_rgb_array(wider)[0, :, 1], [0, 239, 255])


def _gray_tiff(values: np.ndarray, bits: int, signed: bool) -> bytes:
    """A one-strip little-endian gray TIFF, for the sample formats Pillow opens as mode `I` but cannot write."""
    data = values.astype(f"<{'i' if signed else 'u'}{bits // 8}").tobytes()
    height, width = values.shape
    tags = [(256, width), (257, height), (258, bits), (259, 1), (262, 1), (273, 0), (277, 1), (278, height),
            (279, len(data)), (339, 2 if signed else 1)]  # fmt: skip
    offset = 8 + 2 + 12 * len(tags) + 4
    tags[5] = (273, offset)
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", tag, 4, 1, value) for tag, value in tags)
    return struct.pack("<2sHI", b"II", 42, 8) + ifd + struct.pack("<I", 0) + data


def test_integer_tiffs_are_scaled_by_their_bit_depth(tmp_path: Path) -> None:
    dim = np.arange(6, 244, dtype=np.uint8).reshape(14, 17)
    Image.fromarray(dim).convert("I").save(tmp_path / "i32.tif")  # 32-bit samples, values 6..243
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    rgb = load_rgb_array(tmp_path / "i32.tif")
    assert rgb.min() == 0 and rgb.max() == 255  # stretched, not read as 16-bit (all black)
    signed16 = np.array([[-300, 0, 257 * 100, 32767]])
    (tmp_path / "s16.tif").write_bytes(_gray_tiff(signed16, 16, signed=True))
    assert Image.open(tmp_path / "s16.tif").mode == "I"  # Pillow's mode for signed 16-bit samples
    np.testing.assert_array_equal(load_rgb_array(tmp_path / "s16.tif")[0, :, 0], [0, 0, 100, 127])
    wide32 = np.array([[-1000, 0, 1000, 3000]])
    (tmp_path / "s32.tif").write_bytes(_gray_tiff(wide32, 32, signed=True))
    np.testing.assert_array_equal(load_rgb_array(tmp_path / "s32.tif")[0, :, 0], [0, 64, 128, 255])
    # 8 bits stated with mode I (no file layout of current Pillow gives it): values kept, clipped
    np.testing.assert_array_equal(_rgb_from_integers(np.array([[-3, 7, 300]]), 8, "image")[0, :, 0], [0, 7, 255])


def test_float_tiff_is_scaled(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(load_rgb_array(tmp_path / "unit.tif")[0, :, 2], [0, 128, 255])
    wide = np.array([[-100.0, 150.0, 900.0]], dtype=np.float32)
    Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(load_rgb_array(tmp_path / "wide.tif")[0, :, 0], [0, 64, 255])
    for bad in (np.nan, np.inf, -np.inf):
        Image.fromarray(np.array([[0.0, 0.5, bad]], dtype=np.float32), mode="F").save(tmp_path / "bad.tif")
        with pytest.raises(LsegTrtError, match=r"image .*bad\.tif holds NaN/Inf pixels"):
            load_rgb_array(tmp_path / "bad.tif")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:10] = (255, 0, 0)  # top half red
    stored[10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 degrees clockwise: the stored top becomes the right side
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    rgb = load_rgb_array(tmp_path / "rotated.jpg")
    assert rgb.shape == (40, 20, 3)
    assert rgb[:, -3:, 0].min() > 200 and rgb[:, -3:, 2].max() < 60  # right: red
    assert rgb[:, :3, 2].min() > 200 and rgb[:, :3, 0].max() < 60  # left: blue
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("RGBA", (10, 20, 30)), ("LA", (10, 10, 10)), ("1", (255, 255, 255)), ("CMYK", (245, 235, 225))],
)
def test_other_modes_become_rgb(mode: str, expected: tuple[int, int, int], tmp_path: Path) -> None:
    colour = {"RGBA": (10, 20, 30, 0), "LA": (10, 0), "1": 1, "CMYK": (10, 20, 30, 0)}[mode]
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.new(mode, (3, 2), colour).save(path)
    rgb = load_rgb_array(path)
    assert rgb.shape == (2, 3, 3) and tuple(rgb[1, 2]) == expected  # alpha dropped, not composited


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 2), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=1)
    np.testing.assert_array_equal(load_rgb_array(tmp_path / "p.png"), np.full((2, 2, 3), (200, 100, 50)))


def test_arrays_in_and_out() -> None:
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    expected = np.repeat(gray[..., None], 3, axis=2)
    for source in (gray, gray[..., None], np.dstack([expected, np.zeros_like(gray)]), gray.astype(np.uint16) * 257):
        out = load_rgb_array(source)
        np.testing.assert_array_equal(out, expected)
        assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable
        assert not np.shares_memory(out, source)
    np.testing.assert_array_equal(load_rgb_array(np.full((2, 2, 3), 0.5, np.float32)), np.full((2, 2, 3), 128))
    transposed = np.ascontiguousarray(expected.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert load_rgb_array(transposed).flags.c_contiguous
    bad = {
        "finite values in": np.full((2, 2, 3), 1.5),
        "not int32": np.zeros((2, 2, 3), np.int32),
        "not bool": np.zeros((2, 2), bool),
        "not shape": np.zeros((2, 2, 2), np.uint8),
        "empty": np.zeros((0, 4, 3), np.uint8),
    }
    for message, array in bad.items():
        with pytest.raises(LsegTrtError, match=message):
            load_rgb_array(array)
    with pytest.raises(LsegTrtError, match="finite"):
        load_rgb_array(np.array([[np.nan]], np.float32))
    assert np.asarray(load_image(gray)).tolist() == expected.tolist()


def test_hostile_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, png_header_claiming: Callable[[int, int], bytes]
) -> None:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "photo.jpg")
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "bomb.png").write_bytes(png_header_claiming(100_000, 100_000))
    (tmp_path / "text.png").write_text("hello\n")
    (tmp_path / "empty.png").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    cases = {
        "truncated.jpg": "cannot read image .*truncated",
        "bomb.png": "decompression bomb",
        "text.png": "cannot read image",
        "empty.png": "empty",
        "fifo.png": "not a regular file",
        "folder.png": "directory",
    }
    for name, message in cases.items():
        with pytest.raises(LsegTrtError, match=message) as info:
            load_rgb_array(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(LsegTrtError, match="not a regular file"):
        load_image("/dev/zero")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is then over twice the limit
    with pytest.raises(LsegTrtError, match="decompression bomb"):
        load_image(tmp_path / "photo.jpg")


def test_pixel_limit_is_read_from_the_header(tmp_path: Path, png_header_claiming: Callable[[int, int], bytes]) -> None:
    """Below PIL's own limit (89 MP), a header promising more than `max_pixels` is refused before decoding."""
    (tmp_path / "big.png").write_bytes(png_header_claiming(8000, 8000))
    with pytest.raises(LsegTrtError, match="8000x8000 pixels, more than the 50 megapixels"):
        load_rgb_array(tmp_path / "big.png", max_pixels=50_000_000)
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    assert load_rgb_array(tmp_path / "small.png", max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(LsegTrtError, match="40x30 pixels"):
        load_rgb_array(tmp_path / "small.png", max_pixels=1199)


def _photo_like(height: int, width: int) -> np.ndarray:
    """Gradients, edges and noise: every DCT frequency and chroma upsampling matter to the pixels."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 256, (height, width))
    return np.stack([(x * 3 + 40 * np.sin(y / 5)) % 256, (y * 7) % 256, noise], -1).astype(np.uint8)


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("RGB", {"subsampling": "4:2:0"}),
        ("RGB", {"subsampling": "4:2:2"}),
        ("RGB", {"subsampling": "4:4:4", "quality": 100}),
        ("RGB", {"progressive": True}),
        ("RGB", {"optimize": True, "restart_marker_blocks": 7}),
        ("L", {}),
    ],
)
def test_plain_jpegs_take_libjpeg_turbo_and_match_pil(mode: str, options: dict, tmp_path: Path) -> None:
    path = tmp_path / "frame.jpg"
    Image.fromarray(_photo_like(37, 53)).convert(mode).save(path, **options)
    with Image.open(path) as image:
        assert images._plain_jpeg(image)
        image.load()
        expected = np.asarray(image.convert("RGB"))
    assert images._jpeg_pixels(path.read_bytes()) is not None
    decoded = load_rgb_array(path)
    assert decoded.flags.c_contiguous and decoded.flags.writeable and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


def test_jpegs_that_need_pil_go_to_pil(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    Image.fromarray(_photo_like(16, 24)).save(tmp_path / "rotated.jpg", exif=exif)
    Image.fromarray(_photo_like(16, 24)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(_photo_like(16, 24)).save(tmp_path / "photo.png")
    for name in ("rotated.jpg", "cmyk.jpg", "photo.png"):
        with Image.open(tmp_path / name) as image:
            assert not images._plain_jpeg(image), name
    with Image.open(tmp_path / "rotated.jpg") as image:
        upright = np.asarray(image.convert("RGB"))[::-1, ::-1]
    np.testing.assert_array_equal(load_rgb_array(tmp_path / "rotated.jpg"), upright)


def test_decode_from_threads_matches_serial() -> None:
    paths = list(samples().values()) * 3
    serial = [load_rgb_array(p) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(load_rgb_array, paths))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(load_image(paths[0])), serial[0])
