"""Image loading and pre-processing: file -> RGB -> (H, W) -> [0, 1] -> per-variant mean/std.

Every input (path, PIL image, array) goes through one decode, `load_rgb_array`, which gives what a
photo viewer shows as 8-bit RGB:
- EXIF orientation is applied (`ImageOps.exif_transpose`), as viewers do;
- 16-bit samples (`I;16*`) are scaled by 1/257, so a 16-bit white stays white instead of clipping;
- integer samples in PIL's 32-bit mode `I` are scaled by their stored bit depth, which `I` itself
  does not tell: a TIFF's BitsPerSample (tag 258) of 8 keeps the values (clipped to 0..255), 16
  scales by 1/257, 32 stretches them as float images are (below), since a 32-bit integer image has no
  agreed white level either; without one of these depths (PNG, which older Pillow opens as `I` for 16-bit
  data, or an image made in memory) values up to 65535 are taken as 16-bit (1/257, negatives clipped
  to 0) and a larger maximum means a wider range, stretched;
- 32-bit float (`F`, e.g. float TIFF): values within [0, 1] are taken as they are; anything else is
  stretched linearly from its minimum to its maximum, since float images carry no agreed white
  level; NaN or Inf pixels are refused (a user error), as no colour is right for them;
- alpha (RGBA, LA, palette transparency) is dropped, not composited: the same pixels as
  `Image.convert("RGB")`, which lang-seg's demos and torchvision pipelines use; CMYK, 1-bit, palette
  and the other PIL modes go through PIL's own conversion.
Only regular files are opened (a FIFO or device would block or never end), and PIL's decompression-
bomb limit stays at its default. The decode keeps no state, so worker threads may call it at once.

Plain JPEGs (8-bit RGB or gray, upright: nothing for `exif_transpose` to do) are decoded by simplejpeg
after PIL has read their header: libjpeg-turbo, the library Pillow's wheels bundle, with the same
accurate DCT and fancy upsampling, so the same pixels bit for bit (a test compares them; a Pillow built
on IJG's libjpeg 9, which upsamples chroma differently, would fail it). The reason is the GIL: PIL's
load, conversion and copies hold it for most of a frame's decode, and on a GPU host the decode threads
then keep the thread that launches the network's kernels waiting for it, so the GPU idles between
kernels. simplejpeg decodes with the GIL released, straight into a new array. Anything it refuses goes
to PIL, which gives the error.

Resizing uses PIL's bilinear filter, which antialiases when shrinking: the same as
`torchvision.transforms.Resize` on a PIL image, which lang-seg's zero-shot evaluation and the
downstream Python demos use. The aspect ratio is not kept (as there); pick the size to keep it.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps

from lseg_trt.errors import LsegTrtError
from lseg_trt.names import regular_file
from lseg_trt.sizes import SIZE_MULTIPLE, check_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")  # every Pillow >= 10
_PLUGIN_SUFFIXES = (".avif", ".heic", ".heif", ".jxl")  # read where this Pillow, or a plugin loaded, has a decoder
_SAMPLES = {"chelsea": "chelsea.png", "astronaut": "astronaut.png", "coffee": "coffee.png"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_BITS_PER_SAMPLE = 258  # TIFF tag
_ORIENTATION = 0x0112  # EXIF tag (PIL's getexif also reads an XMP tiff:Orientation into it)
# What PIL's decoders raise on a corrupt, truncated or hostile file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

ImageLike = str | Path | Image.Image | np.ndarray


@functools.cache
def image_suffixes() -> tuple[str, ...]:
    """The image suffixes an input listing takes: `IMAGE_SUFFIXES`, and those of `_PLUGIN_SUFFIXES` this
    install decodes (AVIF is built into Pillow 11.3's wheels; HEIC needs pillow-heif's opener registered
    before the listing)."""
    Image.init()
    registered = Image.registered_extensions()
    return IMAGE_SUFFIXES + tuple(s for s in _PLUGIN_SUFFIXES if s in registered)


def samples() -> dict[str, Path]:
    """Real photos usable offline: the ones scikit-image ships inside its package (name -> path)."""
    data = resources.files("skimage") / "data"
    paths = {name: Path(str(data / filename)) for name, filename in _SAMPLES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise LsegTrtError(f"scikit-image sample images not found: {', '.join(missing)}")
    return paths


def load_rgb_array(source: ImageLike, max_pixels: int | None = None) -> np.ndarray:
    """A new (H, W, 3) uint8 C-contiguous array from a path, a PIL image or an array; thread-safe.

    Arrays may be uint8 (HxW, HxWx1, HxWx3, HxWx4: alpha dropped), uint16 (scaled by 1/257) or
    float with every value in [0, 1]; anything else is a user error. `max_pixels` refuses a file
    whose header promises more pixels, before they are decoded: PIL's own limit lets through up to
    twice its 89 megapixels with a warning, gigabytes of memory a web page's upload must not cost.
    """
    if isinstance(source, np.ndarray):
        return _rgb_from_array(source)
    if isinstance(source, Image.Image):
        return _rgb_from_pil(source)
    data, _ = read_image_file(source)
    return rgb_from_bytes(data, Path(source), max_pixels)


def read_image_file(source: str | Path) -> tuple[bytes, os.stat_result]:
    """The bytes of an image file and the `fstat` of the file they were read from (so a digest of these
    bytes and this stat describe the same file, whatever happens to the path meanwhile)."""
    path = regular_file(source, "image")
    try:
        with open(path, "rb") as fh:
            return fh.read(), os.fstat(fh.fileno())
    except OSError as e:
        raise LsegTrtError(f"cannot read image {path}: {e.strerror or e}") from None


def rgb_from_bytes(data: bytes, path: Path, max_pixels: int | None = None) -> np.ndarray:
    """`load_rgb_array` of an image file's bytes (`read_image_file`); `path` names it in errors."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only, until `load`
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise LsegTrtError(
                    f"image {path.name} is {image.width}x{image.height} pixels, more than the "
                    f"{max_pixels / 1e6:g} megapixels allowed here"
                )
            pixels = _jpeg_pixels(data) if _plain_jpeg(image) else None
            if pixels is not None:
                return pixels
            image.load()
            return _rgb_from_pil(image, f"image {path}")
    except Image.DecompressionBombError as e:
        raise LsegTrtError(f"refusing image {path} (decompression bomb?): {e}") from None
    except Image.UnidentifiedImageError:  # its own text names the in-memory buffer
        raise LsegTrtError(
            f"cannot read image {path} (corrupt, truncated or not an image): no format matches"
        ) from None
    except _DECODE_ERRORS as e:
        raise LsegTrtError(f"cannot read image {path} (corrupt, truncated or not an image): {e}") from None


def _plain_jpeg(image: Image.Image) -> bool:
    """Whether libjpeg-turbo's RGB output is what `_rgb_from_pil` would give: CMYK and YCCK JPEGs take
    PIL's Adobe inversion rules, a rotated one its transpose, and MPO or other formats PIL's own path."""
    return image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(_ORIENTATION, 1) == 1


def _jpeg_pixels(data: bytes) -> np.ndarray | None:
    """The (H, W, 3) pixels, decoded with the GIL released; None where libjpeg-turbo stops at an error or
    at a warning such as a truncated file (`strict`), so PIL decodes it again and raises its own error."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None


def load_image(source: ImageLike) -> Image.Image:
    """An RGB PIL image, decoded as `load_rgb_array` decodes."""
    return Image.fromarray(load_rgb_array(source))


def _rgb_from_pil(image: Image.Image, what: str = "image") -> np.ndarray:
    bits = _stated_bits(image)  # before the transpose: its copy keeps no TIFF tags
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT:
        return _rgb_from_array(np.asarray(image).astype(np.uint16))
    if image.mode == "I":
        return _rgb_from_integers(np.asarray(image, dtype=np.int64), bits, what)
    if image.mode == "F":
        return _rgb_from_array(_unit_range(np.asarray(image, dtype=np.float64), what))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette transparency, converted as PIL asks
    try:
        return _rgb_from_array(np.asarray(image.convert("RGB")))
    except ValueError as e:
        raise LsegTrtError(f"unsupported image mode {image.mode}: {e}") from None


def _stated_bits(image: Image.Image) -> int | None:
    """A TIFF's BitsPerSample (one value per channel; they agree for the gray images PIL opens as `I`)."""
    tags = getattr(image, "tag_v2", None)
    stated = tags.get(_BITS_PER_SAMPLE) if tags is not None else None
    if isinstance(stated, tuple):
        stated = stated[0] if stated else None
    return stated if isinstance(stated, int) else None


def _rgb_from_integers(values: np.ndarray, bits: int | None, what: str) -> np.ndarray:
    """Mode `I` samples by their bit depth (module docstring)."""
    if bits == 8:
        return _rgb_from_array(np.clip(values, 0, 255).astype(np.uint8))
    if bits == 16 or (bits != 32 and values.size and values.max() <= 65535):
        return _rgb_from_array(np.clip(values, 0, 65535).astype(np.uint16))
    return _rgb_from_array(_unit_range(values.astype(np.float64), what))


def _unit_range(values: np.ndarray, what: str) -> np.ndarray:
    """Float samples mapped into [0, 1]: kept if already there, else stretched over their range."""
    if not np.isfinite(values).all():
        raise LsegTrtError(f"{what} holds NaN/Inf pixels")
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        return values
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _rgb_from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        channels = array[..., :3]
    elif array.ndim == 2:
        channels = array[..., None]
    else:
        raise LsegTrtError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, not shape {array.shape}")
    if channels.shape[0] == 0 or channels.shape[1] == 0:
        raise LsegTrtError(f"image array is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        scaled = channels
    elif array.dtype == np.uint16:
        scaled = (channels.astype(np.uint32) + 128) // 257
    elif np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(channels).all() and channels.min() >= 0 and channels.max() <= 1):
            raise LsegTrtError("float image arrays must hold finite values in [0, 1]")
        scaled = np.rint(channels.astype(np.float64) * 255)
    else:
        raise LsegTrtError(f"image arrays must be uint8, uint16 or float in [0, 1], not {array.dtype}")
    return np.array(np.broadcast_to(scaled, (*scaled.shape[:2], 3)), dtype=np.uint8, order="C")


def default_size(image: Image.Image, multiple: int = SIZE_MULTIPLE, longest: int | None = None) -> tuple[int, int]:
    """The image's own (H, W), each rounded to the nearest valid multiple; with `longest`, first scaled
    down (aspect kept) so that the longer side is at most that (the demo page's default network input)."""
    scale = min(1.0, longest / max(image.height, image.width)) if longest else 1.0
    return tuple(max(multiple, round(n * scale / multiple) * multiple) for n in (image.height, image.width))  # type: ignore[return-value]


def preprocess(
    source: ImageLike,
    size: tuple[int, int] | None,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """(1, 3, H, W) float32 network input; `size` None keeps the image's size rounded to 32."""
    image = load_image(source)
    height, width = size or default_size(image)
    check_size(height, width)
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    tensor = (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return tensor.unsqueeze(0).contiguous()
