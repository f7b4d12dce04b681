"""Compare saved feature maps in float64: backend vs backend, checkpoint vs checkpoint, size vs size,
recipe vs recipe (`extract --recipe`: the single pass, or the recipe first by name, is the reference).

Each mode is a row of `MODES`: which keys form a group (everything but the compared axis is equal)
and which pairs within a group are compared. Backend comparisons are judged by the candidate's
precision (`lseg_trt.tolerances`); the others carry metrics only. Collect first, judge later, as
Polygraphy's comparator does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lseg_trt.errors import LsegTrtError
from lseg_trt.feature_tree import DEFAULT_RECIPE, FeatureKey, load_features, scan
from lseg_trt.metrics import FeatureMetrics, compare_features
from lseg_trt.tolerances import TOLERANCES

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """One candidate against one reference feature map."""

    mode: str
    variant: str
    weights: str
    image: str
    size: str
    reference: str  # what was compared against (backend, weights or size, by mode)
    candidate: str
    metrics: FeatureMetrics
    tolerance: str = ""
    passed: bool | None = None  # None: no tolerance applies (checkpoints, sizes, unknown backend names)
    engine: str = ""  # the engine file a tensorrt candidate ran

    def row(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "metrics"}
        d.update(self.metrics.to_dict())
        return d

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "-" if not self.metrics.nonfinite else "FAIL (NaN/Inf)"
        return "pass" if self.passed else f"FAIL ({self.tolerance})"

    @property
    def failed(self) -> bool:
        return self.passed is False or self.metrics.nonfinite > 0


def precision_of(backend: str) -> str | None:
    """The precision a backend name implies, or None for a name we do not know (e.g. the seed's `trt`)."""
    from lseg_trt.backends import parse_backend

    try:
        return parse_backend(backend).precision
    except LsegTrtError:
        return None


def judge(comparison: Comparison) -> Comparison:
    """Apply the candidate backend's tolerance; unknown backend names stay unjudged (metrics only)."""
    precision = precision_of(comparison.candidate)
    if precision is None:
        log.warning("%s: not a backend name this version knows; no tolerance applied", comparison.candidate)
        return comparison
    tolerance = TOLERANCES[precision]
    comparison.tolerance = str(tolerance)
    comparison.passed = tolerance.passes(comparison.metrics)
    return comparison


def _resize_unit(features: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (1, C, h, w) features to `size` (bilinear, antialiased) and renormalise per pixel."""
    t = torch.from_numpy(features.astype(np.float32))
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return (t / t.norm(dim=1, keepdim=True)).numpy()


def _pixels(key: FeatureKey) -> int:
    return int(np.prod([int(n) for n in key.size.split("x")]))


Pairs = Callable[[list[FeatureKey], str], Iterator[tuple[FeatureKey, FeatureKey]]]


def _backend_pairs(members: list[FeatureKey], reference: str) -> Iterator[tuple[FeatureKey, FeatureKey]]:
    ref = next((k for k in members if k.backend == reference), None)
    if ref is None:
        log.warning("%s: no %s features to compare against", members[0], reference)
        return
    for k in sorted(members, key=lambda k: k.backend):
        if k != ref:
            yield ref, k


def _checkpoint_pairs(members: list[FeatureKey], _: str) -> Iterator[tuple[FeatureKey, FeatureKey]]:
    yield from combinations(sorted(members, key=lambda k: k.weights), 2)


def _recipe_pairs(members: list[FeatureKey], _: str) -> Iterator[tuple[FeatureKey, FeatureKey]]:
    ordered = sorted(members, key=lambda k: (k.recipe != DEFAULT_RECIPE, k.recipe))
    for k in ordered[1:]:
        yield ordered[0], k


def _size_pairs(members: list[FeatureKey], _: str) -> Iterator[tuple[FeatureKey, FeatureKey]]:
    ordered = sorted(members, key=_pixels)
    for k in ordered[1:]:
        yield ordered[0], k


@dataclass(frozen=True)
class Mode:
    axis: str  # the FeatureKey field that differs within a group
    pairs: Pairs
    judged: bool  # whether tolerances apply


MODES: dict[str, Mode] = {
    "backends": Mode("backend", _backend_pairs, True),
    "checkpoints": Mode("weights", _checkpoint_pairs, False),
    "sizes": Mode("size", _size_pairs, False),
    "recipes": Mode("recipe", _recipe_pairs, False),
}


def compare_tree(root: Path, mode: str, reference_backend: str = "torch") -> list[Comparison]:
    """All comparisons of one kind within a feature tree written by `lseg-trt extract`."""
    if mode not in MODES:
        raise LsegTrtError(f"unknown comparison {mode!r}; use {', '.join(MODES)}")
    spec = MODES[mode]
    files = scan(root)
    if mode == "backends":
        backends = sorted({k.backend for k in files})
        if reference_backend not in backends:
            raise LsegTrtError(
                f"no {reference_backend!r} features under {root} to compare against; "
                f"it holds {', '.join(backends)} (choose one with --reference)"
            )
    groups: dict[tuple, list[FeatureKey]] = {}
    for key in files:
        rest = tuple(v for field, v in asdict(key).items() if field != spec.axis)
        groups.setdefault(rest, []).append(key)
    out: list[Comparison] = []
    for members in groups.values():
        loaded: dict[FeatureKey, np.ndarray] = {}  # one group's maps: the reference is read once, not per pair
        for ref, cand in spec.pairs(members, reference_backend):
            for key in (ref, cand):
                if key not in loaded:
                    loaded[key] = load_features(files[key])
            a, b = loaded[ref], loaded[cand]
            size = ref.size
            if mode == "sizes":
                b, size = _resize_unit(b, a.shape[2:]), f"{cand.size} -> {ref.size}"
            elif mode == "recipes":  # grids, dtypes and norms differ by recipe: directions on the reference's grid
                a, b = _resize_unit(a, a.shape[2:]), _resize_unit(b, a.shape[2:])
                size = f"{ref.size} ({a.shape[2]}x{a.shape[3]} grid)"
            elif a.shape != b.shape:
                raise LsegTrtError(f"mismatched feature maps: {files[ref]} {a.shape} vs {files[cand]} {b.shape}")
            weights = f"{ref.weights} vs {cand.weights}" if mode == "checkpoints" else ref.weights
            c = Comparison(mode, ref.variant, weights, ref.image, size, getattr(ref, spec.axis),
                           getattr(cand, spec.axis), compare_features(b, a))  # fmt: skip
            out.append(judge(c) if spec.judged else c)
    if not out:
        raise LsegTrtError(f"nothing to compare by {mode} under {root}: each group has a single feature map")
    return out


def markdown(comparisons: list[Comparison], title: str) -> str:
    lines = [
        f"# {title}\n",
        "| mode | variant | weights | image | size | reference | candidate | cosine | pixel cos min | pixel cos mean "
        "| pixel cos p1 | rel L2 | max-abs | non-finite | verdict |",
        "|---" * 15 + "|",
    ]
    for c in comparisons:
        m = c.metrics
        # with NaN/Inf the metrics are of zero-filled maps: not numbers to read as agreement
        values = (
            ["n/a"] * 6
            if m.nonfinite
            else [f"{m.cosine:.7f}", f"{m.pixel_cosine_min:.6f}", f"{m.pixel_cosine_mean:.7f}",
                  f"{m.pixel_cosine_p1:.6f}", f"{m.rel_l2:.2e}", f"{m.max_abs:.2e}"]
        )  # fmt: skip
        lines.append(
            f"| {c.mode} | {c.variant} | {c.weights} | {c.image} | {c.size} | {c.reference} | {c.candidate} | "
            + " | ".join(values)
            + f" | {m.nonfinite} | {c.verdict} |"
        )
    return "\n".join(lines) + "\n"


def tree_pictures(tree: Path, out_dir: Path, reference: str) -> None:
    """Backend pictures for the first image and size of every model in a feature tree."""
    from lseg_trt.figures import save_backend_pictures

    groups: dict[tuple[str, str], dict[tuple[str, str], dict[str, Path]]] = {}
    for key, path in scan(tree).items():
        groups.setdefault((key.variant, key.weights), {}).setdefault((key.image, key.size), {})[key.backend] = path
    for (variant, weights), by_input in groups.items():
        (image, size), backends = min(by_input.items())
        maps = {b: load_features(p)[0] for b, p in sorted(backends.items())}
        save_backend_pictures(maps, reference, out_dir, f"{variant}_{weights}_{image}_{size}")
