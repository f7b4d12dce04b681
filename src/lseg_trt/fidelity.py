"""Do the fast backends compute the same features? Collect first, compare later (as Polygraphy does).

`compare_tree` compares saved feature trees (backend vs backend, checkpoint vs checkpoint, size vs
size); `run_fidelity` extracts with every backend in memory and compares each with torch fp32 under
per-precision tolerances. Metrics are float64 (`lseg_trt.metrics`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lseg_trt.errors import LsegTrtError
from lseg_trt.extract import FeatureKey, scan
from lseg_trt.figures import save_backend_pictures
from lseg_trt.files import atomic_path
from lseg_trt.metrics import FeatureMetrics, compare_features

log = logging.getLogger(__name__)

# precision -> (metric, floor) against torch fp32; NaN or Inf always fails
TOLERANCES: dict[str, tuple[str, float]] = {
    "fp32": ("pixel_cosine_min", 0.99999),
    "fp16": ("pixel_cosine_mean", 0.999),
    "bf16": ("pixel_cosine_mean", 0.995),
}
MODES = ("backends", "checkpoints", "sizes")


def precision_of(backend: str) -> str:
    from lseg_trt.runners import parse_backend

    try:
        return parse_backend(backend).precision
    except LsegTrtError:
        return "fp32"


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
    passed: bool | None = None  # None: no tolerance applies (e.g. checkpoint vs checkpoint)

    def row(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "metrics"}
        d.update(self.metrics.to_dict())
        return d


def judge(comparison: Comparison, precision: str) -> Comparison:
    metric, floor = TOLERANCES[precision]
    value = getattr(comparison.metrics, metric)
    comparison.tolerance = f"{metric} >= {floor}"
    comparison.passed = comparison.metrics.nonfinite == 0 and value >= floor
    return comparison


def _resize_unit(features: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (1, C, h, w) features to `size` (bilinear, antialiased) and renormalise per pixel."""
    t = torch.from_numpy(features.astype(np.float32))
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return (t / t.norm(dim=1, keepdim=True)).numpy()


def compare_tree(root: Path, mode: str, reference_backend: str = "torch") -> list[Comparison]:
    """All comparisons of one kind within a feature tree written by `lseg-trt extract`."""
    if mode not in MODES:
        raise LsegTrtError(f"unknown comparison {mode!r}; use {', '.join(MODES)}")
    files = scan(root)
    load = lambda key: np.load(files[key])  # noqa: E731
    out: list[Comparison] = []
    groups: dict[tuple, list[FeatureKey]] = {}
    for key in files:
        group = {
            "backends": (key.variant, key.weights, key.image, key.size),
            "checkpoints": (key.backend, key.variant, key.image, key.size),
            "sizes": (key.backend, key.variant, key.weights, key.image),
        }[mode]
        groups.setdefault(group, []).append(key)
    for members in groups.values():
        if mode == "backends":
            backends = sorted(k.backend for k in members)
            ref_name = reference_backend if reference_backend in backends else backends[0]
            ref = next(k for k in members if k.backend == ref_name)
            for k in members:
                if k != ref:
                    _check_shapes(files, ref, k)
                    c = Comparison(mode, k.variant, k.weights, k.image, k.size, ref.backend, k.backend,
                                   compare_features(load(k), load(ref)))  # fmt: skip
                    out.append(judge(c, precision_of(k.backend)))
        elif mode == "checkpoints":
            for a, b in combinations(sorted(members, key=lambda k: k.weights), 2):
                _check_shapes(files, a, b)
                out.append(Comparison(mode, a.variant, f"{a.weights} vs {b.weights}", a.image, a.size, a.weights,
                                      b.weights, compare_features(load(b), load(a))))  # fmt: skip
        else:
            ordered = sorted(members, key=lambda k: np.prod([int(n) for n in k.size.split("x")]))
            base = ordered[0]
            base_features = load(base)
            for k in ordered[1:]:
                resized = _resize_unit(load(k), base_features.shape[2:])
                out.append(Comparison(mode, k.variant, k.weights, k.image, f"{k.size} -> {base.size}", base.size,
                                      k.size, compare_features(resized, base_features)))  # fmt: skip
    if not out:
        raise LsegTrtError(f"nothing to compare by {mode} under {root}: each group has a single feature map")
    return out


def _check_shapes(files: dict[FeatureKey, Path], a: FeatureKey, b: FeatureKey) -> None:
    sa = np.load(files[a], mmap_mode="r").shape
    sb = np.load(files[b], mmap_mode="r").shape
    if sa != sb:
        raise LsegTrtError(f"mismatched feature maps: {files[a]} {sa} vs {files[b]} {sb}")


def write_report(
    comparisons: list[Comparison], out_dir: Path, stem: str, extra: dict[str, Any] | None = None
) -> list[Path]:
    """`<stem>.md`, `.csv`, `.json` with one row per comparison."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [c.row() for c in comparisons]
    md = [
        "| mode | variant | weights | image | size | reference | candidate | cosine | pixel cos min | pixel cos mean "
        "| pixel cos p1 | rel L2 | max-abs | non-finite | verdict |",
        "|---" * 15 + "|",
    ]
    for c in comparisons:
        m = c.metrics
        verdict = "-" if c.passed is None else ("pass" if c.passed else f"FAIL ({c.tolerance})")
        md.append(
            f"| {c.mode} | {c.variant} | {c.weights} | {c.image} | {c.size} | {c.reference} | {c.candidate} "
            f"| {m.cosine:.7f} | {m.pixel_cosine_min:.6f} | {m.pixel_cosine_mean:.7f} | {m.pixel_cosine_p1:.6f} "
            f"| {m.rel_l2:.2e} | {m.max_abs:.2e} | {m.nonfinite} | {verdict} |"
        )
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    with atomic_path(paths[1]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(json.dumps({**(extra or {}), "comparisons": rows}, indent=2) + "\n")
    return paths


@contextlib.contextmanager
def _strict_fp32() -> Iterator[None]:
    """A float32 reference means float32: PyTorch lets cuDNN use TF32 for convolutions by default."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_fidelity(
    lseg: Any,
    backends: list[str],
    images: dict[str, Path],
    sizes: list[tuple[int, int]],
    device: str,
    cache_dir: str,
    out_dir: Path,
) -> tuple[list[Comparison], dict[str, str]]:
    """Every backend against torch fp32 (float32 reference) on `images` x `sizes`; pictures into `out_dir`.

    Returns the comparisons and, per backend that could not run here, the reason.
    """
    from tqdm import tqdm

    from lseg_trt.images import preprocess
    from lseg_trt.runners import make_runner, parse_backend
    from lseg_trt.sizes import format_size

    specs = [parse_backend(b) for b in backends]
    reference_spec = parse_backend("torch")
    inputs = {
        (name, size): preprocess(path, size, lseg.mean, lseg.std) for name, path in images.items() for size in sizes
    }
    outputs: dict[str, dict[tuple[str, tuple[int, int]], np.ndarray]] = {}
    skipped: dict[str, str] = {}
    with _strict_fp32(), tqdm(total=len(inputs) * (len(specs) + 1), desc=f"fidelity {lseg.variant}", unit="map") as bar:
        for spec in [reference_spec, *[s for s in specs if s.name != "torch"]]:
            try:
                runner = make_runner(spec, lseg, device, cache_dir).activate()
            except (LsegTrtError, ImportError, RuntimeError) as e:
                skipped[spec.name] = str(e)
                bar.update(len(inputs))
                continue
            with torch.inference_mode():
                results = {}
                for key, x in inputs.items():
                    results[key] = runner.infer(x.to(runner.device)).float().cpu().numpy().copy()
                    bar.update()
            runner.deactivate()
            outputs[spec.name] = results
    reference = outputs["torch"]
    comparisons = []
    for backend, results in outputs.items():
        if backend == "torch":
            continue
        for (image, size), features in results.items():
            c = Comparison("backends", lseg.variant, lseg.weights_name, image, format_size(size), "torch", backend,
                           compare_features(features, reference[(image, size)]))  # fmt: skip
            comparisons.append(judge(c, precision_of(backend)))
    first = next(iter(inputs))
    tag = f"{lseg.variant}_{first[0]}_{format_size(first[1])}"
    save_backend_pictures({b: r[first][0] for b, r in outputs.items()}, "torch", out_dir, tag)
    return comparisons, skipped


def tree_pictures(tree: Path, out_dir: Path, reference: str) -> None:
    """Backend pictures for the first image and size of every model in a feature tree."""
    groups: dict[tuple[str, str], dict[tuple[str, str], dict[str, Path]]] = {}
    for key, path in scan(tree).items():
        groups.setdefault((key.variant, key.weights), {}).setdefault((key.image, key.size), {})[key.backend] = path
    for (variant, weights), by_input in groups.items():
        (image, size), backends = min(by_input.items())
        maps = {b: np.load(p)[0] for b, p in sorted(backends.items())}
        save_backend_pictures(maps, reference, out_dir, f"{variant}_{weights}_{image}_{size}")
