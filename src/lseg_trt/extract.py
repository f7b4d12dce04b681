"""Feature extraction to .npy trees that `lseg-trt compare` reads.

Layout: `<out>/<backend>/<variant>/<weights-stem>/<image-stem>/<H>x<W>.npy`, each a float32 (or, on
request, float16) array (1, 512, H/2, W/2) of unit-norm features; H x W is the network input size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lseg_trt.errors import LsegTrtError
from lseg_trt.files import atomic_path
from lseg_trt.images import preprocess
from lseg_trt.runners import Runner
from lseg_trt.sizes import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureKey:
    """Where one feature map belongs in a tree."""

    backend: str
    variant: str
    weights: str
    image: str
    size: str  # HxW

    def path(self, root: Path) -> Path:
        return root / self.backend / self.variant / self.weights / self.image / f"{self.size}.npy"


def extract(
    runner: Runner,
    images: list[Path],
    sizes: list[tuple[int, int]],
    key: FeatureKey,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out: Path,
    batch: int = 1,
    fp16_storage: bool = False,
) -> list[Path]:
    """Run `runner` on every image at every size (images batched per size) and save the features."""
    written = []
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        raise LsegTrtError("two images share a file stem; their feature files would collide")
    with tqdm(total=len(images) * len(sizes), desc=f"extract {runner.name}", unit="img") as bar:
        for size in sizes:
            for start in range(0, len(images), batch):
                chunk = images[start : start + batch]
                x = torch.cat([preprocess(p, size, mean, std) for p in chunk]).to(runner.device)
                runner.prepare(tuple(x.shape))  # type: ignore[arg-type]
                features = runner.infer(x).float().cpu().numpy()
                for path, f in zip(chunk, features, strict=True):
                    target = FeatureKey(key.backend, key.variant, key.weights, path.stem, format_size(size)).path(out)
                    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                        np.save(fh, f[None].astype(np.float16 if fp16_storage else np.float32))
                    written.append(target)
                bar.update(len(chunk))
    return written


def scan(root: Path) -> dict[FeatureKey, Path]:
    """Every feature file under `root`, keyed by its place in the layout."""
    if not root.is_dir():
        raise LsegTrtError(f"feature tree not found: {root}")
    found = {}
    for path in sorted(root.glob("*/*/*/*/*.npy")):
        backend, variant, weights, image = path.relative_to(root).parts[:4]
        found[FeatureKey(backend, variant, weights, image, path.stem)] = path
    if not found:
        raise LsegTrtError(f"no feature files under {root} (expected <backend>/<variant>/<weights>/<image>/<HxW>.npy)")
    return found
