"""Shrinking features on the device before a byte leaves it: storage dtype, pooled grid, PCA projection.

A dense ViT-L/16 map at 480x640 is 512 x 240 x 320: 157 MB in float32. Each option trades fidelity
for bytes, and `reduction_fidelity` measures what it costs (per-pixel cosine after reconstruction and
agreement of the per-pixel argmax over a set of text vectors, both against the full features).

- dtype: fp16 (default; features are unit vectors, well inside its range) or fp32.
- pool k: average over k x k cells, then renormalised to unit length, since every consumer compares
  features by cosine or dot product with unit text features.
- PCA K: project onto the top K principal directions of a pixel sample (fitted in float64); the
  basis (mean, components) is stored beside the features and `Reduction.restore` maps back to C
  channels (renormalised). Projected values are not renormalised (they are coordinates, not features).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lseg_trt.errors import LsegTrtError
from lseg_trt.files import atomic_path

STORAGE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class PCABasis:
    """x ≈ mean + components.T @ y for a C-vector x and its K coordinates y."""

    mean: torch.Tensor  # (C,) float32
    components: torch.Tensor  # (K, C) float32, orthonormal rows, largest variance first

    @property
    def k(self) -> int:
        return self.components.shape[0]

    def to(self, device: torch.device | str) -> PCABasis:
        return PCABasis(self.mean.to(device), self.components.to(device))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        centred = features - self.mean.view(1, -1, 1, 1)
        return torch.einsum("kc,bchw->bkhw", self.components, centred)

    def reconstruct(self, coordinates: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kc,bkhw->bchw", self.components, coordinates.float()) + self.mean.view(1, -1, 1, 1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.cpu().contiguous(), "components": self.components.cpu().contiguous()}

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for tensor in self.tensors().values():
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(self.tensors(), str(tmp), metadata={"sha256": self.sha256()})

    @classmethod
    def load(cls, path: Path) -> PCABasis:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            return cls(tensors["mean"].float(), tensors["components"].float())
        except (OSError, KeyError, ValueError) as e:
            raise LsegTrtError(f"cannot read PCA basis {path}: {e}") from None


def fit_pca(frames: Sequence[torch.Tensor], k: int, max_pixels: int = 200_000, seed: int = 0) -> PCABasis:
    """Top-`k` principal directions of a seeded pixel subsample of `frames` ((B, C, H, W) batches), in float64.

    Signs are fixed (the largest-magnitude entry of each component is positive) so a refit on the same
    data gives the same basis.
    """
    pixels = torch.cat([f.detach().double().permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in frames])
    channels = pixels.shape[1]
    if not 0 < k <= channels:
        raise LsegTrtError(f"PCA to {k} channels: choose 1..{channels}")
    if pixels.shape[0] > max_pixels:
        generator = torch.Generator().manual_seed(seed)
        pixels = pixels[torch.randperm(pixels.shape[0], generator=generator)[:max_pixels].to(pixels.device)]
    mean = pixels.mean(0)
    centred = pixels - mean
    covariance = centred.T @ centred / max(1, pixels.shape[0] - 1)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    components = vectors[:, -k:].flip(1).T  # (k, C), largest first
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    return PCABasis(mean.float(), (components * signs).float())


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class Reduction:
    """What happens to features between the network and storage, in this order: pool, project, cast."""

    dtype: str = "fp16"
    pool: int = 1
    pca: PCABasis | None = None

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise LsegTrtError(f"storage dtype {self.dtype!r}: choose {', '.join(STORAGE_DTYPES)}")
        if self.pool < 1:
            raise LsegTrtError(f"pooling factor {self.pool}: must be a positive integer")

    def check(self, feature_shape: tuple[int, int, int]) -> None:
        """Refuse a pool factor that does not divide the feature grid (C, H, W) exactly."""
        _, height, width = feature_shape
        if height % self.pool or width % self.pool:
            raise LsegTrtError(f"pooling by {self.pool} needs a feature grid divisible by it, not {height}x{width}")

    def output_shape(self, feature_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        channels, height, width = feature_shape
        return (self.pca.k if self.pca else channels, height // self.pool, width // self.pool)

    def on(self, device: torch.device) -> Reduction:
        """This reduction with its PCA basis on `device`: placed once per run, not copied (and waited for)
        on every batch."""
        return Reduction(self.dtype, self.pool, self.pca.to(device)) if self.pca is not None else self

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """The grid features are projected from (what a PCA basis is fitted on)."""
        return features if self.pool == 1 else _unit(F.avg_pool2d(features, self.pool))

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 unit features -> what is stored, on the same device."""
        reduced = self.pooled(features)
        if self.pca is not None:
            reduced = self.pca.to(reduced.device).project(reduced)
        # Never return the input itself: runners may reuse their output buffer on the next call.
        return reduced.to(STORAGE_DTYPES[self.dtype], copy=reduced is features)

    def restore(self, stored: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Stored features back to C unit channels (float32), bilinearly upsampled to `grid` if given."""
        x = stored.float()
        if self.pca is not None:
            x = self.pca.to(x.device).reconstruct(x)
        x = _unit(x)
        if grid is not None and tuple(x.shape[-2:]) != tuple(grid):
            x = _unit(F.interpolate(x, size=grid, mode="bilinear", align_corners=False))
        return x

    def describe(self) -> dict[str, object]:
        """The settings a manifest records (and a resume must match)."""
        return {
            "dtype": self.dtype,
            "pool": self.pool,
            "pool_renormalised": True,
            "pca_k": self.pca.k if self.pca else None,
            "pca_sha256": self.pca.sha256() if self.pca else None,
        }


def reduction_fidelity(
    features: torch.Tensor, reductions: dict[str, Reduction], text: torch.Tensor
) -> dict[str, dict[str, float]]:
    """What each reduction costs against the full features (N, C, H, W), at the full grid.

    Per option: per-pixel cosine after `restore` (mean, 1st percentile, min), the share of pixels whose
    argmax over the unit `text` vectors (T, C) agrees with the full features', and bytes per item.
    """
    full = features.float()
    reference = torch.einsum("tc,nchw->nthw", text.to(full), full).argmax(1)
    rows = {}
    for name, reduction in reductions.items():
        stored = reduction.apply(full)
        restored = reduction.restore(stored, tuple(full.shape[-2:]))
        cosine = (restored.double() * full.double()).sum(1).flatten()
        labels = torch.einsum("tc,nchw->nthw", text.to(restored), restored).argmax(1)
        rows[name] = {
            "pixel_cosine_mean": float(cosine.mean()),
            "pixel_cosine_p1": float(np.percentile(cosine.cpu().numpy(), 1)),
            "pixel_cosine_min": float(cosine.min()),
            "segmentation_agreement": float((labels == reference).double().mean()),
            "bytes_per_item": stored[0].numel() * stored.element_size(),
        }
    return rows
