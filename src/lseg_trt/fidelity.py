"""Do the fast backends compute the same features? Every backend against torch fp32 on the sample photos.

Collect first, compare later (as Polygraphy does): each backend runs every input in memory, then each
is compared with the float32 reference under its precision's tolerance (`lseg_trt.tolerances`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lseg_trt.artifacts import ModelSource
from lseg_trt.backends import BackendSpec, make_runner, parse_backend
from lseg_trt.backends.base import device_kind, is_unavailable
from lseg_trt.compare import Comparison, judge
from lseg_trt.errors import LsegTrtError
from lseg_trt.images import preprocess
from lseg_trt.metrics import compare_features
from lseg_trt.models import LSeg
from lseg_trt.sizes import format_size

log = logging.getLogger(__name__)

REFERENCE = "torch"
DEFAULTS = {  # per device kind: what a plain `lseg-trt fidelity` checks
    "cpu": {"sizes": ((256, 256), (256, 352)), "backends": "torch-bf16,torch-fused-fp32,onnxruntime,onnxruntime-fp16"},
    "cuda": {
        "sizes": ((480, 480), (480, 640), (1024, 1024)),
        "backends": "torch-fp16,torch-bf16,torch-compile,torch-compile-fp16,torch-compile-fused,"
        "torch-compile-fused-bf16,onnxruntime,tensorrt,tensorrt-fp32",
    },
}


def defaults_for(device: str) -> dict[str, Any]:
    """The sizes and backends a plain `fidelity` checks on this kind of device."""
    return DEFAULTS[device_kind(device)]


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """A float32 reference means float32: PyTorch lets cuDNN use TF32 for convolutions by default.

    Through the `fp32_precision` flags where torch has them (2.9+): they read correctly whichever API the
    caller used, where reading the legacy `allow_tf32` after the caller set the new one raises.
    """
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        name, strict = "fp32_precision", "ieee"
    else:
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
        name, strict = "allow_tf32", False
    saved = [getattr(flag, name) for flag in flags]
    for flag in flags:
        setattr(flag, name, strict)
    try:
        yield
    finally:
        for flag, value in zip(flags, saved, strict=True):
            setattr(flag, name, value)


def engine_of(source: ModelSource, lseg: LSeg) -> bool:
    """Whether an engine was built from this very network (variant and weights' sha256, from its sidecar)."""
    return source.info.variant == lseg.variant and source.info.weights_sha256 == lseg.weights_sha256


def run_fidelity(
    lseg: LSeg,
    backends: list[str],
    images: dict[str, Path],
    sizes: list[tuple[int, int]],
    device: str,
    cache_dir: str | Path,
    out_dir: Path | None = None,
    engines: list[tuple[ModelSource, BackendSpec]] = (),  # type: ignore[assignment]
) -> tuple[list[Comparison], dict[str, str]]:
    """Every backend, and every engine built from `lseg` (`engine_of`), against torch fp32 (float32
    reference) on `images` x `sizes`; pictures into `out_dir`.

    Returns the comparisons and, per backend that could not run here, the reason.
    """
    from tqdm import tqdm

    specs = [parse_backend(b) for b in backends]
    clashing = [spec.name for spec in {spec.name: spec for _, spec in engines}.values()]
    if len(clashing) != len(engines) or set(clashing) & {s.name for s in specs}:
        raise LsegTrtError("give at most one engine per precision, and no --backends of the same name")
    inputs = {
        (name, size): preprocess(path, size, lseg.mean, lseg.std) for name, path in images.items() for size in sizes
    }
    outputs: dict[str, dict[tuple[str, tuple[int, int]], np.ndarray]] = {}
    skipped: dict[str, str] = {}
    order = [(parse_backend(REFERENCE), lseg), *[(s, lseg) for s in specs if s.name != REFERENCE]]
    order += [(spec, source) for source, spec in engines]
    with strict_fp32(), tqdm(total=len(inputs) * len(order), desc=f"fidelity {lseg.variant}", unit="map") as bar:
        for spec, model in order:
            results: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
            try:
                with make_runner(spec, model, device, cache_dir) as runner:
                    for key, x in inputs.items():
                        results[key] = runner.infer_host(x).numpy()
                        bar.update()
            except Exception as e:
                if spec.name == REFERENCE or not is_unavailable(e):
                    raise
                skipped[spec.name] = str(e).splitlines()[0]
                bar.update(len(inputs) - len(results))
                continue
            outputs[spec.name] = results
    reference = outputs[REFERENCE]
    engine_files = {spec.name: source.path.name for source, spec in engines}
    comparisons = []
    for backend, results in outputs.items():
        if backend == REFERENCE:
            continue
        for (image, size), features in results.items():
            c = Comparison("backends", lseg.variant, lseg.weights_name, image, format_size(size), REFERENCE, backend,
                           compare_features(features, reference[(image, size)]),
                           engine=engine_files.get(backend, ""))  # fmt: skip
            comparisons.append(judge(c))
    if out_dir is not None:
        from lseg_trt.figures import save_backend_pictures

        first = next(iter(inputs))
        tag = f"{lseg.variant}_{first[0]}_{format_size(first[1])}"
        save_backend_pictures({b: r[first][0] for b, r in outputs.items()}, REFERENCE, out_dir, tag)
    return comparisons, skipped


def report_record(machine: dict[str, Any], skipped: dict[str, str]) -> dict[str, Any]:
    """What the JSON report carries beside the rows."""
    from dataclasses import asdict

    from lseg_trt.tolerances import TOLERANCES

    return {"machine": machine, "tolerances": {k: asdict(v) for k, v in TOLERANCES.items()}, "not_run": skipped}
