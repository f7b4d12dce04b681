"""Image loading and pre-processing: file -> RGB -> (H, W) -> [0, 1] -> per-variant mean/std.

Every input (path, PIL image, array) goes through one decode, `load_rgb_array`, which gives what a
photo viewer shows as 8-bit RGB:
- EXIF orientation is applied (`ImageOps.exif_transpose`), as viewers do;
- 16-bit samples (PNG `I;16*`, and `I`, which PIL also uses for 16-bit data) are scaled by 1/257
  (`I` clipped to 0..65535 first), so a 16-bit white stays white instead of clipping;
- 32-bit float (`F`, e.g. float TIFF): values within [0, 1] are taken as they are; anything else is
  stretched linearly from its finite minimum to its finite maximum (NaN becomes the minimum), since
  float images carry no agreed white level;
- alpha (RGBA, LA, palette transparency) is dropped, not composited: the same pixels as
  `Image.convert("RGB")`, which lang-seg's demos and torchvision pipelines use; CMYK, 1-bit, palette
  and the other PIL modes go through PIL's own conversion.
Only regular files are opened (a FIFO or device would block or never end), and PIL's decompression-
bomb limit stays at its default. The decode keeps no state, so worker threads may call it at once.

Resizing uses PIL's bilinear filter, which antialiases when shrinking: the same as
`torchvision.transforms.Resize` on a PIL image, which lang-seg's zero-shot evaluation and the
downstream Python demos use. The aspect ratio is not kept (as there); pick the size to keep it.
"""

from __future__ import annotations

import struct
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from lseg_trt.errors import LsegTrtError
from lseg_trt.names import regular_file
from lseg_trt.sizes import SIZE_MULTIPLE, check_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SAMPLES = {"chelsea": "chelsea.png", "astronaut": "astronaut.png", "coffee": "coffee.png"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# What PIL's decoders raise on a corrupt, truncated or hostile file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

ImageLike = str | Path | Image.Image | np.ndarray


def samples() -> dict[str, Path]:
    """Real photos usable offline: the ones scikit-image ships inside its package (name -> path)."""
    data = resources.files("skimage") / "data"
    paths = {name: Path(str(data / filename)) for name, filename in _SAMPLES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise LsegTrtError(f"scikit-image sample images not found: {', '.join(missing)}")
    return paths


def load_rgb_array(source: ImageLike) -> np.ndarray:
    """A new (H, W, 3) uint8 C-contiguous array from a path, a PIL image or an array; thread-safe.

    Arrays may be uint8 (HxW, HxWx1, HxWx3, HxWx4: alpha dropped), uint16 (scaled by 1/257) or
    float with every value in [0, 1]; anything else is a user error.
    """
    if isinstance(source, np.ndarray):
        return _rgb_from_array(source)
    if isinstance(source, Image.Image):
        return _rgb_from_pil(source)
    path = regular_file(source, "image")
    try:
        with Image.open(path) as image:
            image.load()
            return _rgb_from_pil(image)
    except Image.DecompressionBombError as e:
        raise LsegTrtError(f"refusing image {path} (decompression bomb?): {e}") from None
    except _DECODE_ERRORS as e:
        raise LsegTrtError(f"cannot read image {path} (corrupt, truncated or not an image): {e}") from None


def load_image(source: ImageLike) -> Image.Image:
    """An RGB PIL image, decoded as `load_rgb_array` decodes."""
    return Image.fromarray(load_rgb_array(source))


def _rgb_from_pil(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT:
        return _rgb_from_array(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
    if image.mode == "F":
        return _rgb_from_array(_unit_range(np.asarray(image, dtype=np.float64)))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette transparency, converted as PIL asks
    try:
        return _rgb_from_array(np.asarray(image.convert("RGB")))
    except ValueError as e:
        raise LsegTrtError(f"unsupported image mode {image.mode}: {e}") from None


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Float samples mapped into [0, 1]: kept if already there, else stretched over their finite range."""
    finite = values[np.isfinite(values)]
    if finite.size == values.size and (finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)):
        return values
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
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


def default_size(image: Image.Image, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The image's own (H, W), each rounded to the nearest valid multiple."""
    return tuple(max(multiple, round(n / multiple) * multiple) for n in (image.height, image.width))  # type: ignore[return-value]


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
