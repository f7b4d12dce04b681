"""Image loading and pre-processing: file -> RGB -> (H, W) -> [0, 1] -> per-variant mean/std.

Resizing uses PIL's bilinear filter, which antialiases when shrinking: the same as
`torchvision.transforms.Resize` on a PIL image, which lang-seg's zero-shot evaluation and the
downstream Python demos use. The aspect ratio is not kept (as there); pick the size to keep it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lseg_trt.errors import LsegTrtError
from lseg_trt.sizes import SIZE_MULTIPLE, check_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SAMPLES = {"chelsea": "chelsea.png", "astronaut": "astronaut.png", "coffee": "coffee.png"}

ImageLike = str | Path | Image.Image | np.ndarray


def samples() -> dict[str, Path]:
    """Real photos usable offline: the ones scikit-image ships inside its package (name -> path)."""
    data = resources.files("skimage") / "data"
    paths = {name: Path(str(data / filename)) for name, filename in _SAMPLES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise LsegTrtError(f"scikit-image sample images not found: {', '.join(missing)}")
    return paths


def load_image(source: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an HxWx3 / HxW uint8 array."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        return Image.fromarray(source).convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise LsegTrtError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise LsegTrtError(f"cannot read image {path}: {e}") from None


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand directories to their image files (sorted); files are kept as given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(p)
    if not found:
        raise LsegTrtError(f"no images found in {', '.join(map(str, paths))}")
    return found


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
