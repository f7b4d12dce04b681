"""`FeatureExtractor`: images in, LSeg features out, on the device, as fast as the device allows.

The core needs only a runner, the checkpoint's mean/std and a metadata dict for manifests;
`FeatureExtractor.open` is the one place that turns weights, an ONNX file or an engine into those.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from lseg_trt import compile_workers
from lseg_trt.backends import Runner, backend_for, make_runner
from lseg_trt.backends.auto import AUTO, choose
from lseg_trt.backends.base import default_device, is_oom
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.multicrop import RecipeRunner
from lseg_trt.extraction.pipeline import Lane, Timings, background, batches, decode_ahead
from lseg_trt.extraction.preprocess import network_input
from lseg_trt.extraction.recipes import DEFAULT, Recipe, get_recipe
from lseg_trt.extraction.sources import Source, list_items
from lseg_trt.images import load_rgb_array
from lseg_trt.models.config import VARIANTS
from lseg_trt.sizes import check_size

if TYPE_CHECKING:
    from lseg_trt.artifacts import ModelSource

log = logging.getLogger(__name__)

BatchLike = torch.Tensor | Sequence[str | Path | np.ndarray | Image.Image]


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a scheduler's limit) where the OS has one."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Decode threads: one core is left to the loop that feeds the device; more than 8 gained nothing
    measured. Counted on the cores this process may use, so a SLURM task of 4 cores does not start 8."""
    return max(1, min(8, usable_cores() - 1))


class FeatureExtractor:
    """Dense LSeg features of images at one network size, computed on the runner's device.

    Use as a context manager (or `activate()` / `deactivate()`): activation loads the runner and
    prepares the batch shape, outside any loop.

    Args:
        runner: any backend runner (not yet active).
        size: network input (H, W), multiples of 32; features are (C, H/2, W/2). With a recipe other than
            `default`: the size of the images (any H, W), from which the recipe's output shape follows.
        mean, std: the checkpoint's normalisation.
        batch_size: images per network call when streaming (the last batch of a group is padded).
        workers: decode threads for `stream` and extraction runs.
        metadata: what manifests record about the model (variant, weights, weights_sha256, ...).
        recipe: how a downstream project extracts (`lseg_trt.extraction.recipes`: a row, or its name);
            None or `default` (without overrides) is the single pass. Others run every crop of a batch on the device
            (`multicrop.RecipeRunner`), give the recipe's output per image, and record it in the metadata.
    """

    def __init__(
        self,
        runner: Runner,
        size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        batch_size: int = 8,
        workers: int = default_workers(),
        metadata: dict[str, Any] | None = None,
        recipe: Recipe | str | None = None,
    ) -> None:
        self.multicrop = _recipe_runner(recipe, runner, tuple(size), mean, std, batch_size)
        if self.multicrop is None:
            check_size(*size)
        if batch_size < 1:
            raise LsegTrtError(f"batch size {batch_size}: must be at least 1")
        self.runner, self.size, self.mean, self.std = runner, tuple(size), tuple(mean), tuple(std)
        self.batch_size, self.workers = batch_size, workers
        self.metadata = {"backend": runner.name, **(metadata or {})}
        if self.multicrop is not None:
            self.metadata["recipe"] = self.multicrop.recipe.describe()
        self.feature_shape: tuple[int, int, int] | None = None
        self.prepared: set[tuple[int, ...]] = set()

    @classmethod
    def open(
        cls,
        *,
        weights: str | Path | None = None,
        onnx: str | Path | None = None,
        engine: str | Path | None = None,
        variant: str | None = None,
        backend: str | None = AUTO,
        size: tuple[int, int] = (480, 640),
        batch_size: int = 8,
        device: str | torch.device = "auto",
        cache_dir: str | Path = "models",
        workers: int = default_workers(),
        recipe: Recipe | str | None = None,
    ) -> FeatureExtractor:
        """An extractor for exactly one of `weights` (a checkpoint or "random"), `onnx` or `engine`."""
        from lseg_trt.artifacts import open_model

        given = {"weights": weights, "onnx": onnx, "engine": engine}
        source = open_model(**{k: str(v) for k, v in given.items() if v is not None}, variant=variant)
        return cls.from_source(
            source, backend, size, batch_size=batch_size, device=device, cache_dir=cache_dir, workers=workers,
            recipe=recipe,
        )  # fmt: skip

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        backend: str | None,
        size: tuple[int, int],
        *,
        batch_size: int = 8,
        device: str | torch.device = "auto",
        cache_dir: str | Path = "models",
        workers: int = default_workers(),
        recipe: Recipe | str | None = None,
    ) -> FeatureExtractor:
        """An extractor for an opened model (`lseg_trt.artifacts.open_model`); `backend` "auto" (or None) runs
        weights with the fastest backend known to pass fidelity on this device (`lseg_trt.backends.auto`, which
        may pick a verified engine of them) and a model file with the backend it implies."""
        device = default_device() if str(device) == "auto" else str(device)
        if backend in (None, AUTO):
            recipe_name = getattr(recipe, "name", recipe)
            shapes = [(batch_size, 3, *size), (1, 3, *size)]
            choice = choose(source, device, shapes, cache_dir, torch_only=recipe_name not in (None, "default"))
            source, backend, reason = choice.source, choice.backend, choice.reason
        else:
            reason = "given"
        runner = make_runner(backend_for(source, backend), source, device, cache_dir)
        info = source.info
        metadata = {
            "variant": info.variant,
            "weights": info.weights_name,
            "weights_sha256": info.weights_sha256,
            "model_kind": source.kind,
            "backend_reason": reason,
        }
        return cls(
            runner, size, info.mean, info.std, batch_size=batch_size, workers=workers, metadata=metadata, recipe=recipe
        )

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def activate(self) -> FeatureExtractor:
        if not self.runner.active:
            self.runner.activate()
            try:  # one warm-up batch: allocates what the run needs, before anything is written
                images = 1 if self.multicrop else self.batch_size  # a recipe's crops of one image fill batches
                features = self.forward(torch.zeros((images, *self.size, 3), dtype=torch.uint8, device=self.device))
            except Exception as e:
                if not is_oom(e):
                    raise
                self.runner.deactivate()
                raise LsegTrtError(
                    f"out of memory for a batch of {self.batch_size} at {self.size[0]}x{self.size[1]} on "
                    f"{self.device}; lower --batch or the size"
                ) from None
            self.feature_shape = tuple(features.shape[1:])  # type: ignore[assignment]
            compile_workers.stop()  # warm: a pool Inductor started would only slow the run and its exit
            declared = self._declared_shape()
            if declared is not None and declared != self.feature_shape:
                self.deactivate()
                raise LsegTrtError(
                    f"the model gives features of shape {self.feature_shape}, but a {self.metadata['variant']} "
                    f"network gives {declared} at {self.size[0]}x{self.size[1]}"
                )
        return self

    def output_shape(self) -> tuple[int, int, int]:
        """(C, H/2, W/2) of the features, without running the model when its variant is known: a process
        that only opens a run for workers (`extract --devices`, `--ray`) then needs no model of its own,
        and the workers start without waiting for one. Activation checks the two agree."""
        if self.feature_shape is not None:
            return self.feature_shape
        declared = self._declared_shape()
        return declared if declared is not None else self.activate().feature_shape  # type: ignore[return-value]

    def _declared_shape(self) -> tuple[int, int, int] | None:
        variant = self.metadata.get("variant")
        if variant not in VARIANTS:
            return None
        if self.multicrop is not None:
            return self.multicrop.recipe.output_shape(VARIANTS[variant].out_c, self.size)  # type: ignore[arg-type]
        return (VARIANTS[variant].out_c, self.size[0] // 2, self.size[1] // 2)

    def deactivate(self) -> None:
        self.runner.deactivate()
        self.prepared.clear()

    def __enter__(self) -> FeatureExtractor:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def forward(self, pixels: torch.Tensor | list[torch.Tensor], pad_to: int | None = None) -> torch.Tensor:
        """Features of uint8 pixels already on the device, padded with black images to `pad_to`
        (one static shape for CUDA graphs and engines). May return a buffer the runner reuses.
        With a recipe: its (B, C, h, w) results, which must share one shape (that of the first image)."""
        if self.multicrop is not None:
            return self._recipe_forward(pixels)
        x = network_input(pixels, self.size, self.mean, self.std)
        if pad_to is not None and x.shape[0] < pad_to:
            x = torch.cat([x, x.new_zeros((pad_to - x.shape[0], *x.shape[1:]))])
        shape = tuple(x.shape)
        if shape not in self.prepared:
            self.runner.prepare(shape)  # type: ignore[arg-type]
            self.prepared.add(shape)
        return self.runner.infer(x)

    def _recipe_forward(self, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        multicrop: RecipeRunner = self.multicrop  # type: ignore[assignment]
        images = [p.permute(1, 2, 0) if p.shape[0] == 3 and p.shape[-1] != 3 else p for p in pixels]
        results = multicrop(images)
        expected = self.feature_shape or tuple(results[0].shape)
        for result in results:
            if tuple(result.shape) != expected:
                raise LsegTrtError(
                    f"recipe {multicrop.recipe.name}: an image gives features of shape {tuple(result.shape)}, the "
                    f"run's are {expected}: extract images of one size per run (--sizes, the images' size)"
                )
        return torch.stack(results)

    def __call__(self, batch: BatchLike) -> torch.Tensor:
        """(B, C, H/2, W/2) float32 features on the device (a recipe's output and dtype, with one) for paths,
        arrays, PIL images or a uint8 tensor (B, H, W, 3) / (B, 3, H, W) on any device. The result is the
        caller's to keep."""
        self.activate()
        if isinstance(batch, torch.Tensor):
            if batch.numel() == 0:
                raise LsegTrtError(f"empty image batch (shape {tuple(batch.shape)})")
            pixels: torch.Tensor | list[torch.Tensor] = batch.to(self.device)
        else:
            pixels = [_host_pixels(image).to(self.device) for image in _images_of(batch)]
            if not pixels:
                raise LsegTrtError("empty batch")
            if len({p.shape for p in pixels}) == 1:
                pixels = torch.stack(pixels)
        return self.forward(pixels).clone()

    def frame(self, image: np.ndarray) -> torch.Tensor:
        """(1, C, H/2, W/2) features of one HxWx3 camera frame: the low-latency path. A uint8 C-contiguous
        frame goes to the device as it is; any other (a BGR->RGB `[..., ::-1]` view, a crop, uint16) is
        converted as `load_rgb_array` converts, since torch cannot hold negative strides."""
        if not isinstance(image, np.ndarray):
            raise LsegTrtError(f"frame() takes one HxWx3 numpy array, not {type(image).__name__}")
        return self(torch.stack([_host_pixels(image)]))

    def stream(self, source: Source, timings: Timings | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, (C, H/2, W/2) features on the device) for every readable image of `source` (a folder, a
        glob, a list file, a video, or a list of these), in name order. Unreadable items are logged and
        skipped; runs that must account for them use `lseg_trt.extraction.extract`."""
        self.activate()
        items = list_items(source)
        timings = timings or Timings()
        lane = Lane(self.device, timings)
        decoded = decode_ahead(items, self.workers, timings)
        staged = batches([(0, items)], decoded, self.batch_size, pin=lane.cuda)
        for batch in background(staged, depth=3, name="lseg-trt-collate"):
            for item, reason in batch.failed:
                log.warning("skipped %s: %s", item.name, reason)
            if batch.pixels is None:
                continue
            pixels, _ = lane.upload(batch.pixels)
            features = self.forward(pixels, pad_to=self.batch_size)[: len(batch.items)].clone()
            yield from zip([i.name for i in batch.items], features, strict=True)


def _recipe_runner(
    recipe: Recipe | str | None,
    runner: Runner,
    size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int,
) -> RecipeRunner | None:
    """The multi-crop runner of a recipe, or None for the single pass (`default` at the extractor's size)."""
    if recipe is None:
        return None
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    if recipe.name == DEFAULT.name:
        recipe = recipe.with_overrides(input_size=size)
        if recipe == DEFAULT.with_overrides(input_size=size):
            return None
    return RecipeRunner(runner, recipe, mean, std, batch_size=batch_size)


def _images_of(batch: BatchLike) -> Sequence[str | Path | np.ndarray | Image.Image]:
    """The images of a non-tensor batch: one path, PIL image or HxW(xC) array is one image (iterating it
    would give characters or pixel rows), a (B, H, W, C) array is B images."""
    if isinstance(batch, str | Path | Image.Image):
        return [batch]
    if isinstance(batch, np.ndarray):
        if batch.ndim in (2, 3):
            return [batch]
        if batch.ndim != 4:
            raise LsegTrtError(f"an image array is HxW, HxWxC or a batch BxHxWxC, not shape {batch.shape}")
    return batch


def _host_pixels(image: str | Path | np.ndarray | Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 pixels on the host: a writable uint8 C-contiguous RGB array without a copy, anything else
    through `load_rgb_array` (which refuses empty arrays and copies strided views into a new one)."""
    if (
        isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        and image.size and image.flags.c_contiguous and image.flags.writeable  # torch warns on read-only memory
    ):  # fmt: skip
        return torch.from_numpy(image)
    return torch.from_numpy(load_rgb_array(image))
