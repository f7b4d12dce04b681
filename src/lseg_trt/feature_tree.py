"""The per-image feature tree that `extract` writes and `compare` reads (the seed's layout).

`<root>/<backend>/<variant>/<weights>/<image>/<H>x<W>.npy`, each a float32 or float16 array
(1, C, H/2, W/2) of unit-norm features; H x W is the network input size. A downstream recipe's run
(`lseg_trt.extraction.recipes`) writes `<H>x<W>-<recipe>.npy`, H x W then being the image size. Every
component is a safe single path component (`lseg_trt.names`), so no key can point outside the root.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lseg_trt.errors import LsegTrtError
from lseg_trt.names import regular_file

log = logging.getLogger(__name__)

FLOAT_KINDS = "f"  # numpy dtype kinds a feature file may hold
DEFAULT_RECIPE = "default"  # the single pass, whose files carry no recipe name
# a feature file's name: its size (ASCII digits only), then a recipe's name where it is not the single pass
FEATURE_STEM = re.compile(r"[0-9]+x[0-9]+(-[a-z0-9][a-z0-9-]*)?")


@dataclass(frozen=True)
class FeatureKey:
    """Where one feature map belongs in a tree."""

    backend: str
    variant: str
    weights: str
    image: str
    size: str  # HxW
    recipe: str = DEFAULT_RECIPE

    def path(self, root: Path) -> Path:
        return root / self.backend / self.variant / self.weights / self.image / f"{self.label}.npy"

    @property
    def label(self) -> str:
        """The file's stem: the size, and the recipe unless it is the single pass."""
        return self.size if self.recipe == DEFAULT_RECIPE else f"{self.size}-{self.recipe}"


def scan(root: Path) -> dict[FeatureKey, Path]:
    """Every feature file under `root`, keyed by its place in the layout."""
    if not root.is_dir():
        raise LsegTrtError(f"feature tree not found: {root}")
    found = {}
    for path in sorted(root.glob("*/*/*/*/*.npy")):
        if not FEATURE_STEM.fullmatch(path.stem):  # `final.npy`, `2x.npy`: not a feature map of the layout
            log.warning("skipped %s: not named <H>x<W>.npy or <H>x<W>-<recipe>.npy", path)
            continue
        backend, variant, weights, image = path.relative_to(root).parts[:4]
        size, _, recipe = path.stem.partition("-")
        found[FeatureKey(backend, variant, weights, image, size, recipe or DEFAULT_RECIPE)] = path
    if not found:
        raise LsegTrtError(f"no feature files under {root} (expected <backend>/<variant>/<weights>/<image>/<HxW>.npy)")
    return found


def load_features(path: Path, mmap: bool = False) -> np.ndarray:
    """A (1, C, h, w) float feature map from a .npy file, or one clear error: files in a tree are
    untrusted (text, pickled objects, empty or special files, headers that promise more data than the
    file holds), and pickles are never loaded. The header is checked against the file through a memory
    map before anything is read into memory."""
    regular_file(path, "feature map")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LsegTrtError(f"{path} is not a readable .npy feature map: {e}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in FLOAT_KINDS or array.ndim != 4:
        kind = getattr(array, "dtype", type(array).__name__)
        shape = getattr(array, "shape", "?")
        raise LsegTrtError(f"{path} holds {kind} {shape}, not a float (1, C, h, w) feature map")
    return array if mmap else np.array(array)
