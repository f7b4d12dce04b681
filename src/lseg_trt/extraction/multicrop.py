"""A recipe (`lseg_trt.extraction.recipes`) run on the device: every crop of a batch of images (tiles, scales,
flips) through the network in batches, then stitching, count normalisation, resizes and sums as torch ops.

The projects run the same recipe one crop at a time in a Python loop (lang-seg's `MultiEvalModule`):
36 network calls of one image each for a 4:3 frame of lang-seg's evaluation. Here the crops of all the
images given are cut from one padded canvas per scale (padding the scaled image once with normalised
black equals padding each tile), grouped by shape, and a crop and its mirror image go through the
network in the same batch. What the loop does after the network is done in the loop's own order (tiles
row-major, scales in order), so sums round as the original's do.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lseg_trt.backends import Runner
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.cv2_resize import cv2_linear
from lseg_trt.extraction.preprocess import network_input
from lseg_trt.extraction.recipes import Recipe, ScalePlan, plan_scale
from lseg_trt.models import LOGIT_SCALE

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # mean, std the projects hard-code (recipes.NORMALISATIONS)
BLACK = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std of a recipe without mean/std: pixels / 255


@functools.lru_cache(maxsize=32)
def constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small tensor made once per device: a host-to-device copy per image or batch would make the host
    wait for all the GPU work queued before it (see `preprocess._normalisation`)."""
    return torch.tensor(values, device=device, dtype=dtype)


def up2(x: torch.Tensor) -> torch.Tensor:
    """lang-seg's `output_conv`: x2 bilinear, align_corners=True."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def crop_tensor(tensor: str, out: torch.Tensor) -> torch.Tensor:
    """What one crop contributes (`recipes.TENSORS`), from the network's output: unit-norm features, or raw
    head1 for the tensors that need it."""
    if tensor in ("unit", "raw"):
        return out
    if tensor == "unit-up2":
        return up2(out)
    if tensor == "vlmaps":  # lang-seg's fp32 logit_scale meets an fp16 tensor: rounded to fp16 first
        scale = constant((LOGIT_SCALE,), out.device, torch.float16)[0]  # 0-dim, as lang-seg's parameter
        return up2((scale * out.half()).float())
    if tensor == "up2-unit":
        raised = up2(out)
        return raised / torch.linalg.vector_norm(raised, dim=1, keepdim=True)
    return up2(out)  # "up2"


@dataclass
class _Scale:
    """One scale of one image being assembled: the sum of its tiles and their count."""

    plan: ScalePlan
    canvas: torch.Tensor  # (1, 3, CH, CW) normalised, padded so that every full crop lies inside
    sums: torch.Tensor | None = None
    count: torch.Tensor | None = None
    result: torch.Tensor | None = None  # set when its last tile is in, until added to the image's total


@dataclass
class _Image:
    size: tuple[int, int]  # (h, w) after the input resize
    scales: list[_Scale] = field(default_factory=list)
    single: torch.Tensor | None = None  # the one-pass result
    total: torch.Tensor | None = None  # the sum of the scales added so far, in scale order
    added: int = 0  # how many scales `total` holds


class RecipeRunner:
    """Features of images by a recipe, batched on the runner's device.

    Args:
        runner: a backend runner (not necessarily active), switched to raw head1 or unit features as the
            recipe needs (`set_raw_head1`: raw head1 on torch backends only, others raise a user error here).
        recipe: a checked recipe.
        mean, std: the checkpoint's normalisation (used where the recipe's `normalise` is `checkpoint`).
        batch_size: network inputs per call (a crop and its flip count two). Calls are not padded to it: a
            runner that replays CUDA graphs captures each call shape once, and a run of one frame size has
            two per crop shape (full calls and the remainder), where padding ran a third more of lang-seg
            eval's 36 forwards (48) and a one-frame call of lseg-minimal 16 times over (H100, 2026-12-08).
        call_size: network inputs per call where not `batch_size`. None: one on the CPU, where kernels round
            differently with the batch size and a batch gains nothing (ViT-L, 480x480, 2 cores: a batch of 4
            in 39.4 s, four single calls in 39.5 s), so CPU results equal the project's own crop-by-crop
            loop bit for bit (checked against each project's code); `batch_size` elsewhere.
    """

    def __init__(
        self,
        runner: Runner,
        recipe: Recipe,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        batch_size: int = 16,
        call_size: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise LsegTrtError(f"batch size {batch_size}: must be at least 1")
        if call_size is None:
            call_size = 1 if runner.device.type == "cpu" else batch_size
        if not 1 <= call_size <= batch_size:
            raise LsegTrtError(f"call size {call_size}: must be in 1..batch size ({batch_size})")
        runner.set_raw_head1(recipe.needs_raw)
        self.runner, self.recipe, self.call_size = runner, recipe, call_size
        self.mean, self.std = {"checkpoint": (tuple(mean), tuple(std)), "half": HALF, "none": BLACK}[recipe.normalise]
        self.prepared: set[tuple[int, ...]] = set()

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def __call__(self, images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor) -> list[torch.Tensor]:
        """One (C, H, W) result per uint8 image ((H, W, 3) tensors or arrays, or a (B, H, W, 3) batch), in
        the recipe's dtype, on the runner's device; the caller may keep them."""
        if not self.runner.active:
            self.prepared.clear()  # per-shape set-up (graphs, bindings) goes with the runner's activation
            self.runner.activate()
        results: list[torch.Tensor] = []
        with torch.inference_mode():
            states: list[_Image] = []
            jobs: list[tuple[int, int, int, torch.Tensor]] = []
            for image in images:
                state, crops = self._plan(self.prepared_input(torch.as_tensor(image).to(self.device)))
                if jobs and (len(jobs) + len(crops)) * self.recipe.forwards_per_tile > self.call_size:
                    results += self._assemble(states, jobs)
                    states, jobs = [], []
                jobs += [(len(states), *crop) for crop in crops]
                states.append(state)
            return results + self._assemble(states, jobs)

    def _assemble(self, states: list[_Image], jobs: list[tuple[int, int, int, torch.Tensor]]) -> list[torch.Tensor]:
        """The results of a group of images whose crops fill about one network call, or of one image. Images
        are taken a call's worth at a time because an image being assembled holds full-resolution maps
        (lang-seg eval's are 2.5 GB each at 1280x960 in float32): all of `extract`'s batch of 8 frames at
        once held six each, 120 GB."""
        self._run(states, jobs)
        return [self._finish(state) for state in states]

    def prepared_input(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) float32: the recipe's input resize and normalisation of a uint8 (H, W, 3) image."""
        r = self.recipe
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise LsegTrtError(f"an image must be uint8 (H, W, 3), not {image.dtype} {tuple(image.shape)}")
        if r.resize == "network":
            return network_input(image[None], r.input_size, self.mean, self.std)  # type: ignore[arg-type]
        x = image.permute(2, 0, 1)[None]
        if r.resize in ("cv2", "cv2-float"):  # OpenCV on the uint8 (lseg-minimal) or float64 pixels (gradslam)
            x = cv2_linear(x, r.input_size, fixed=r.resize == "cv2")  # type: ignore[arg-type]
        x = x.float() / 255  # torchvision's ToTensor, then Normalize: (x - mean) / std
        if r.normalise != "none":
            x = (x - constant(self.mean, x.device).view(1, 3, 1, 1)) / constant(self.std, x.device).view(1, 3, 1, 1)
        target = r.input_image_size(tuple(x.shape[-2:]))  # type: ignore[arg-type]
        if r.resize in ("exact", "wider") and target != tuple(x.shape[-2:]):
            x = F.interpolate(x, target, mode="bilinear", align_corners=True)
        elif r.resize == "torchvision":  # torchvision 0.10's Resize of a tensor: no antialiasing
            x = F.interpolate(x, target, mode="bilinear", align_corners=False)
        return x.contiguous()

    def _plan(self, x: torch.Tensor) -> tuple[_Image, list[tuple[int, int, torch.Tensor]]]:
        """The image's state and its crops as (scale, tile, (1, 3, crop, crop) input)."""
        size = (x.shape[-2], x.shape[-1])
        state = _Image(size)
        if not self.recipe.tiled:
            self.recipe.output_shape(1, size)  # checks the one-pass size
            return state, [(0, 0, x)]
        base, crop, stride = self.recipe.geometry(size)
        black = constant(tuple(-m / s for m, s in zip(self.mean, self.std, strict=True)), x.device)
        crops = []
        for s, scale in enumerate(self.recipe.scales):
            plan = plan_scale(size, base, crop, stride, scale)
            if self.recipe.back == "grid" and (not plan.single or crop // 2 < max(size)):
                raise LsegTrtError(
                    f"recipe {self.recipe.name}: the feature grid of one {crop}x{crop} crop must hold the "
                    f"{size[0]}x{size[1]} image (OpenScene: base = crop = 2x the long side)"
                )
            height, width = plan.scaled
            canvas_h = max(t[0] for t in plan.tiles) + crop
            canvas_w = max(t[2] for t in plan.tiles) + crop
            canvas = black.view(1, 3, 1, 1).expand(1, 3, canvas_h, canvas_w).clone()
            canvas[:, :, :height, :width] = F.interpolate(x, (height, width), mode="bilinear", align_corners=True)
            state.scales.append(_Scale(plan, canvas))
            for t, (h0, _, w0, _) in enumerate(plan.tiles):
                crops.append((s, t, canvas[:, :, h0 : h0 + crop, w0 : w0 + crop]))
        return state, crops

    def _run(self, states: list[_Image], jobs: list[tuple[int, int, int, torch.Tensor]]) -> None:
        """Every crop through the network, grouped by shape, each batch's results stitched at once."""
        flips = self.recipe.forwards_per_tile
        per_call = max(1, self.call_size // flips)
        groups: dict[tuple[int, ...], list] = {}
        for job in jobs:
            groups.setdefault(tuple(job[3].shape), []).append(job)
        for group in groups.values():
            for start in range(0, len(group), per_call):
                chunk = group[start : start + per_call]
                x = torch.cat([job[3] for job in chunk])
                if flips == 2:
                    x = torch.cat([x, x.flip(3)])
                out = crop_tensor(self.recipe.tensor, self._forward(x))
                n = len(chunk)
                if flips == 2:
                    out = out[:n] + out[n:].flip(3)
                    if self.recipe.flip == "mean":
                        out = out / 2
                for (index, s, t, _), result in zip(chunk, out, strict=True):
                    self._add(states[index], s, t, result[None])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a batch, in calls of at most `call_size` inputs (a crop and its flip are two)."""
        if x.shape[0] > self.call_size:  # each part copied: the runner may reuse its output buffer
            return torch.cat([self._forward(part).clone() for part in x.split(self.call_size)])
        shape = tuple(x.shape)
        if shape not in self.prepared:
            self.runner.prepare(shape)  # type: ignore[arg-type]
            self.prepared.add(shape)
        return self.runner.infer(x)

    def _add(self, state: _Image, s: int, t: int, result: torch.Tensor) -> None:
        """Stitch one crop's (1, C, ., .) result into its scale, as lang-seg's loop does."""
        if not self.recipe.tiled:
            state.single = result.clone()  # the runner may reuse its output buffer
            return
        scale = state.scales[s]
        plan = scale.plan
        if self.recipe.back == "grid":  # OpenScene returns the cut grid of its one crop
            scale.result = result[:, :, : state.size[0], : state.size[1]].clone()
        elif plan.single:
            scale.result = self._back(result[:, :, : plan.scaled[0], : plan.scaled[1]], state.size)
        else:
            self._stitch(scale, t, result, state.size)
        self._add_scales(state)

    def _stitch(self, scale: _Scale, t: int, result: torch.Tensor, size: tuple[int, int]) -> None:
        """Tile `t` into its scale's sums and counts; the scale's result once its last tile is in."""
        plan = scale.plan
        h0, h1, w0, w1 = plan.tiles[t]
        if scale.sums is None:
            scale.sums = result.new_zeros((1, result.shape[1], *plan.canvas))
            scale.count = result.new_zeros((1, 1, *plan.canvas))
        scale.sums[:, :, h0:h1, w0:w1] += result[:, :, : h1 - h0, : w1 - w0]
        scale.count[:, :, h0:h1, w0:w1] += 1  # type: ignore[index]
        if t == len(plan.tiles) - 1:
            averaged = (scale.sums / scale.count)[:, :, : plan.scaled[0], : plan.scaled[1]]
            scale.result, scale.sums, scale.count = self._back(averaged, size), None, None

    @staticmethod
    def _add_scales(state: _Image) -> None:
        """Adds the finished scales to the image's total in scale order, as the loop's `scores += score`,
        and lets each go: one full-resolution map per scale held to the end would be six for lang-seg eval."""
        while state.added < len(state.scales) and state.scales[state.added].result is not None:
            scale = state.scales[state.added]
            if state.total is None:
                state.total = scale.result  # a tensor of this image's own (a clone or a resize)
            else:
                state.total += scale.result  # type: ignore[operator]
            scale.result = None
            state.added += 1

    def _back(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.recipe.back == "scaled":
            return features.clone()
        return F.interpolate(features, size, mode="bilinear", align_corners=True)

    def _finish(self, state: _Image) -> torch.Tensor:
        r = self.recipe
        if not r.tiled:
            features = state.single
        else:
            features = state.total
            if r.average:
                features = features / (len(r.scales) * r.forwards_per_tile)  # type: ignore[operator]
        if r.output_size is not None:
            features = F.interpolate(features, r.output_size, mode="bilinear", align_corners=r.output_align_corners)
        if r.unit_output:
            features = F.normalize(features, dim=1)
        return features[0].to(torch.float16 if r.dtype == "fp16" else torch.float32)  # type: ignore[index]
