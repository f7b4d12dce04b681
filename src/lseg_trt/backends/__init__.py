"""One interface, many backends: the benchmark, fidelity and the feature extractor drive all of them alike.

Backend names: a registry key, an optional `-<precision>` when it is not the entry's default, and an
optional `+graph` to replay one CUDA graph per static shape (GPU only, where the entry allows it):
`torch` (fp32), `torch-fp16`, `torch-bf16`, `torch-compile[-fp16|-bf16]` (Inductor),
`torch-fused[-bf16|-fp32]` and `torch-compile-fused[-bf16|-fp32]` (the inference rewrite of
`lseg_trt.models.fused`, fp16 by default), `torch-aoti[-bf16|-fp32]` (AOTInductor packages, fp16 by default),
`onnxruntime[-fp16]`, `tensorrt[-fp32|-tf32]` (`-tf32`: an fp32 engine allowed TF32 kernels).

Adding a backend: write its runner (a `Runner` subclass with `from_source`) in a module of this
package and add one `REGISTRY` entry. Runner classes are imported only when used, so importing this
package needs neither onnxruntime nor TensorRT.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lseg_trt.backends.base import BackendSpec, GraphCache, Runner, Shape
from lseg_trt.errors import LsegTrtError

if TYPE_CHECKING:
    from lseg_trt.artifacts import ModelSource
    from lseg_trt.models import LSeg
    from lseg_trt.tensorrt.options import Profile


@dataclass(frozen=True)
class Backend:
    """A registry entry: where its runner lives and what it can do."""

    runner: str  # "module:Class", imported on first use
    precisions: tuple[str, ...]  # the first is what the bare name means
    graph: bool  # may replay CUDA graphs (`+graph`)
    runs: tuple[str, ...]  # model sources it can run: "weights", "onnx", "engine"

    def runner_class(self) -> type[Runner]:
        module, _, name = self.runner.partition(":")
        return getattr(importlib.import_module(module), name)


REGISTRY: dict[str, Backend] = {
    "torch": Backend("lseg_trt.backends.torch:TorchRunner", ("fp32", "fp16", "bf16"), True, ("weights",)),
    "torch-compile": Backend(
        "lseg_trt.backends.torch:TorchCompileRunner", ("fp32", "fp16", "bf16"), True, ("weights",)
    ),
    "torch-fused": Backend("lseg_trt.backends.torch:FusedTorchRunner", ("fp16", "bf16", "fp32"), True, ("weights",)),
    "torch-compile-fused": Backend(
        "lseg_trt.backends.torch:FusedCompileRunner", ("fp16", "bf16", "fp32"), True, ("weights",)
    ),
    "torch-aoti": Backend("lseg_trt.backends.aoti:AotiRunner", ("fp16", "bf16", "fp32"), True, ("weights",)),
    "onnxruntime": Backend(
        "lseg_trt.backends.onnxruntime:OnnxRuntimeRunner", ("fp32", "fp16"), False, ("weights", "onnx")
    ),
    "tensorrt": Backend(
        "lseg_trt.backends.tensorrt:TensorRTRunner", ("fp16", "fp32", "tf32"), True, ("weights", "onnx", "engine")
    ),
}


def known_backends() -> list[str]:
    """Every backend name without `+graph`, default precision first."""
    return [
        base if precision == entry.precisions[0] else f"{base}-{precision}"
        for base, entry in REGISTRY.items()
        for precision in entry.precisions
    ]


def parse_backend(name: str) -> BackendSpec:
    """`torch-fp16+graph` -> BackendSpec(base='torch', precision='fp16', cuda_graph=True)."""
    text, graph = (name[: -len("+graph")], True) if name.endswith("+graph") else (name, False)
    for base in sorted(REGISTRY, key=len, reverse=True):
        entry = REGISTRY[base]
        if text == base or text.startswith(base + "-"):
            precision = text[len(base) + 1 :] or entry.precisions[0]
            if precision in entry.precisions and (entry.graph or not graph):
                return BackendSpec(base, precision, entry.precisions[0], graph)
    raise LsegTrtError(
        f"unknown backend {name!r}; known: {', '.join(known_backends())} "
        f"(+graph for CUDA graphs on {', '.join(b for b, e in REGISTRY.items() if e.graph)})"
    )


def parse_backends(text: str) -> list[BackendSpec]:
    """A comma-separated list in the order typed; empty items are ignored, an empty list is an error."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise LsegTrtError(f"no backend named in {text!r}; known: {', '.join(known_backends())}")
    return [parse_backend(n) for n in dict.fromkeys(names)]


def backend_for(source: ModelSource, name: str | None = None) -> BackendSpec:
    """The backend that runs `source`: the one its file implies, in the file's own precision, or `name`,
    checked against what the file can be run by (ONNX Runtime results must never be filed as torch)."""
    if name is None:
        entry = REGISTRY[source.backend]
        return BackendSpec(source.backend, source.info.precision, entry.precisions[0])
    return checked_for(source, parse_backend(name))


def checked_for(source: ModelSource, spec: BackendSpec) -> BackendSpec:
    """`spec` if it can run `source`, else a one-line user error naming what can."""
    if source.kind not in REGISTRY[spec.base].runs:
        runs = [b for b, e in REGISTRY.items() if source.kind in e.runs]
        raise LsegTrtError(f"{spec.name} cannot run {source.path}: a {source.kind} file runs with {', '.join(runs)}")
    fixed_precision = source.kind == "engine" or (source.kind == "onnx" and spec.base == "onnxruntime")
    if fixed_precision and spec.precision != source.info.precision:
        raise LsegTrtError(
            f"{spec.name} asks for {spec.precision}, but {source.path} is an {source.info.precision} model"
        )
    return spec


def make_runner(
    spec: BackendSpec,
    model: LSeg | ModelSource,
    device: str | torch.device,
    cache_dir: str | Path = "models",
    profile: Profile | None = None,
) -> Runner:
    """A runner for `spec` on `model` (a loaded network, or weights / an ONNX file / an engine), exporting
    ONNX and building engines through the caches under `cache_dir` (`onnx/`, `engines/`) when needed."""
    from lseg_trt.artifacts import ModelSource

    source = model if isinstance(model, ModelSource) else ModelSource.from_lseg(model)
    spec = checked_for(source, spec)
    return REGISTRY[spec.base].runner_class().from_source(spec, source, device, Path(cache_dir), profile)


__all__ = [
    "REGISTRY",
    "Backend",
    "BackendSpec",
    "GraphCache",
    "Runner",
    "Shape",
    "backend_for",
    "known_backends",
    "make_runner",
    "parse_backend",
    "parse_backends",
]
