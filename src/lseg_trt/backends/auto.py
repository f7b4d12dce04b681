"""`--backend auto`: the fastest backend known to pass its fidelity tolerance on this device.

A newcomer who names no backend should get the speed this project reaches, not fp32 eager (8.7x slower
on the H100 than the backend our fidelity runs pass there). The choice, in order:
- a model file (ONNX, engine) runs with the backend it implies, as before;
- on a CUDA GPU, a TensorRT engine in the cache (`<cache>/engines/`) built on this GPU model from these very
  weights, whose profile takes the run's shapes, whose TensorRT flavour imports here, and which passed
  `lseg-trt fidelity --engine` (its `.fidelity.json`, tied to the engine's sha256); fp16 before fp32;
- else on a CUDA GPU `torch-compile-fp16+graph`, the fastest torch backend that passes fidelity there;
- on the CPU ONNX Runtime where it is installed (1.9x torch eager for ViT-L/16 and 1.3x for RN101 on two
  cores: `benchmarks/results/cpu-2026-11-25/fused_work.md`), else torch.
The reason is returned with the choice, so a run can print it and record it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from lseg_trt.artifacts import ModelSource, open_model
from lseg_trt.backends import backend_for
from lseg_trt.backends.base import Shape, device_kind
from lseg_trt.engines import EngineRecord, fidelity_passed
from lseg_trt.errors import LsegTrtError
from lseg_trt.hwinfo import gpu_target
from lseg_trt.tensorrt.compat import load

AUTO = "auto"
GPU_TORCH = "torch-compile-fp16+graph"
_PRECISION_ORDER = ("fp16", "tf32", "fp32")


@dataclass(frozen=True)
class Choice:
    """What `auto` picked: the backend name, the model it runs (an engine may replace the weights), and why."""

    backend: str
    source: ModelSource
    reason: str


def choose(
    source: ModelSource, device: str, shapes: list[Shape], cache_dir: str | Path, torch_only: bool = False
) -> Choice:
    """The backend `auto` means for `source` on `device` at `shapes` (every input shape the run feeds);
    `torch_only` for work only torch runners do (a recipe's raw head1, crops of other shapes)."""
    if source.kind != "weights":
        implied = backend_for(source).name
        return Choice(implied, source, f"{implied}: the backend a {source.kind} file runs with, in its precision")
    if device_kind(device) == "cuda":
        engine = None if torch_only else verified_engine(source, shapes, Path(cache_dir) / "engines")
        if engine is not None:
            record = engine.record
            assert record is not None
            return Choice(
                f"tensorrt{'' if record.precision == 'fp16' else '-' + record.precision}+graph",
                engine,
                f"TensorRT engine {engine.path.name}: built on this GPU from these weights, takes these shapes, "  # type: ignore[union-attr]
                "passed `lseg-trt fidelity`",
            )
        return Choice(
            GPU_TORCH,
            source,
            f"{GPU_TORCH}: the fastest backend that passes fidelity on a GPU without a verified TensorRT engine "
            "(the first run of a shape compiles, tens of seconds; later runs load Inductor's cache)",
        )
    if torch_only:
        return Choice("torch", source, "torch: the CPU backend that runs a recipe (raw head1, crops of any shape)")
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        return Choice(
            "onnxruntime",
            source,
            "onnxruntime: 1.3-1.9x torch on CPU cores (the first run exports and verifies the ONNX model; cached)",
        )
    return Choice("torch", source, "torch: ONNX Runtime, faster on CPU cores, is not installed (lseg-trt[onnx])")


def verified_engine(source: ModelSource, shapes: list[Shape], folder: Path) -> ModelSource | None:
    """The best engine under `folder` that `auto` may run for `source` at `shapes` (see the module docstring)."""
    target, found = gpu_target(), []
    for path in sorted(folder.glob("*.engine")) if folder.is_dir() else ():
        try:
            record = EngineRecord.read(path)
        except LsegTrtError:
            continue
        meta = record.onnx_metadata
        usable = (
            record.request.get("target") == target
            and meta.get("variant") == source.info.variant
            and all(record.profile.contains(shape) for shape in shapes)
            and record.matches_file(path, hash_it=False)
            and fidelity_passed(path, record)
            and meta.get("checkpoint_sha256") == source.info.weights_sha256
            and _imports(record.flavour)
        )
        if usable:
            found.append((_PRECISION_ORDER.index(record.precision), path))
    return open_model(engine=str(min(found)[1])) if found else None


def _imports(flavour: str) -> bool:
    try:
        load(flavour)
    except LsegTrtError:  # MissingDependencyError included
        return False
    return True
