"""Pictures, always written to files (never shown): segmentations, PCA feature maps, cosine heat-maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lseg_trt.files import atomic_path
from lseg_trt.segment import Segmentation, palette


def pyplot():  # noqa: ANN201 - lazy: matplotlib is an optional extra
    try:
        import matplotlib
    except ImportError:
        from lseg_trt.errors import MissingDependencyError

        raise MissingDependencyError("pictures need matplotlib: pip install 'lseg-trt[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:  # noqa: ANN001 - a matplotlib Figure
    """Written atomically as PNG, then closed (pictures are files, never windows)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    pyplot().close(fig)


def save_segmentation(image: Image.Image, seg: Segmentation, path: Path, title: str, legend: int = 20) -> None:
    """Input and a 50 % overlay side by side, with a legend of the `legend` largest labels."""
    from matplotlib.patches import Patch

    plt = pyplot()
    colours = palette(max(len(seg.names), 1))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    axes[0].imshow(image)
    axes[0].set_title("input")
    axes[1].imshow(overlay(image, seg))
    axes[1].set_title(title)
    for ax in axes:
        ax.axis("off")
    index = {name: i for i, name in enumerate(seg.names)}
    handles = [
        Patch(color=colours[index[name]] / 255, label=f"{name} ({100 * share:.1f} %)")
        for name, share in seg.shares()[:legend]
    ]
    axes[1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)
    save_figure(fig, path)


def overlay(image: Image.Image, seg: Segmentation) -> Image.Image:
    """The image blended 50 % with the label colours (lang-seg's palette); a label map at feature resolution
    (word-free) is scaled up to the image's size with nearest-neighbour, so each cell keeps one colour."""
    colours = palette(max(len(seg.names), 1))
    mask = Image.fromarray(colours[seg.label_map]).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB"), mask, 0.5)


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """(C, H, W) features -> (H, W, 3) in [0, 1]: first three principal components, min-max scaled.

    NaN/Inf (counted and failed by the metrics) are drawn as zero features rather than breaking the SVD.
    """
    c, h, w = features.shape
    x = np.nan_to_num(features.reshape(c, -1).T.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:3].T
    proj = (proj - proj.min(axis=0)) / np.maximum(np.ptp(proj, axis=0), 1e-12)
    return proj.reshape(h, w, 3)


def save_pca_grid(maps: dict[str, np.ndarray], path: Path, title: str) -> None:
    """Feature maps (label -> (C, H, W)) as PCA pictures side by side, one shared basis per picture."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4.2), squeeze=False)
    for ax, (label, features) in zip(axes[0], maps.items(), strict=True):
        ax.imshow(pca_rgb(features))
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)


def save_cosine_heatmap(cosine: np.ndarray, path: Path, title: str) -> None:
    """(H, W) per-pixel cosine between two backends."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(cosine, cmap="viridis", vmin=min(float(cosine.min()), 0.999), vmax=1.0)
    fig.colorbar(image, ax=ax, label="per-pixel cosine")
    ax.set_title(f"{title}\nmin {cosine.min():.6f}, mean {cosine.mean():.6f}", fontsize=9)
    ax.axis("off")
    save_figure(fig, path)


def save_backend_pictures(maps: dict[str, np.ndarray], reference: str, out_dir: Path, tag: str) -> None:
    """For one input: the PCA pictures of every backend side by side, and a cosine heat-map of each
    backend against `reference` (maps are (C, H, W))."""
    from lseg_trt.metrics import pixel_cosine_map

    save_pca_grid(maps, out_dir / f"pca_{tag}.png", tag)
    if reference not in maps:
        return
    for backend, features in maps.items():
        if backend != reference:
            heat = pixel_cosine_map(features[None], maps[reference][None])[0]
            save_cosine_heatmap(heat, out_dir / f"cosine_{tag}_{backend}.png", f"{backend} vs {reference}, {tag}")
