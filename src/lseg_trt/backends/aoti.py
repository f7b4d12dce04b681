"""AOTInductor: the encoder compiled ahead of time into one `.pt2` package per static shape.

`torch-compile` recompiles every shape in every new process (about a minute for ViT-L/16 on an H100);
a package is compiled once (`torch.export` + `aoti_compile_and_package`) and a later process loads it
in seconds. Packages live in `<cache_dir>/aoti/` and are keyed and reused by `lseg_trt.compiled_cache`.
The package holds the inference rewrite of the encoder (`lseg_trt.models.fused`), in the precision and
layout of `TorchRunner` (half precisions run channels-last; input, output and the L2 normalisation stay
float32), so it computes what `torch-compile-fused` computes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lseg_trt.backends.base import BackendSpec, Device, GraphCache, Runner, Shape, lseg_of, placed_encoder
from lseg_trt.compiled_cache import PackageRequest, package_for
from lseg_trt.hwinfo import gpu_target

if TYPE_CHECKING:
    from lseg_trt.artifacts import ModelSource
    from lseg_trt.models import LSegImageEncoder
    from lseg_trt.tensorrt.options import Profile

log = logging.getLogger(__name__)

Compiled = Callable[[torch.Tensor], torch.Tensor]


class AotiRunner(Runner):
    """Loads (or first compiles) one AOTInductor package per shape in `prepare`; `+graph` replays a CUDA
    graph around the loaded package, removing its per-kernel launch cost as for `torch-compile`."""

    def __init__(
        self,
        encoder: LSegImageEncoder,
        spec: BackendSpec,
        device: str | torch.device,
        cache_dir: Path,
        *,
        weights_name: str,
        weights_sha256: str,
        inductor_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(spec, device)
        self.encoder = encoder
        self.cache_dir = Path(cache_dir)
        self.weights_name, self.weights_sha256 = weights_name, weights_sha256
        self.inductor_options = dict(inductor_options or {})
        self.compiled: dict[Shape, Compiled] = {}
        self.built: list[Path] = []  # packages this runner compiled (the others it loaded)
        self.graphs: GraphCache | None = None

    @classmethod
    def from_source(
        cls, spec: BackendSpec, source: ModelSource, device: Device, cache_dir: Path, profile: Profile | None
    ) -> AotiRunner:
        return cls(
            lseg_of(source, spec.name).image_encoder,
            spec,
            device,
            Path(cache_dir) / "aoti",
            weights_name=source.info.weights_name,
            weights_sha256=source.info.weights_sha256,
        )

    @property
    def channels_last(self) -> bool:
        return self.spec.precision != "fp32"

    def request(self, shape: Shape) -> PackageRequest:
        return PackageRequest(
            variant=self.encoder.config.name,
            weights_name=self.weights_name,
            weights_sha256=self.weights_sha256,
            shape=tuple(int(d) for d in shape),  # type: ignore[arg-type]
            precision=self.spec.precision,
            channels_last=self.channels_last,
            target=gpu_target(self.device),
            inductor_options=self.inductor_options,
        )

    def _activate(self) -> None:
        if self.spec.cuda_graph:
            self.graphs = GraphCache(self._run, self.device, self.setup_seconds)

    def _deactivate(self) -> None:
        self.compiled.clear()
        self.graphs = None
        super()._deactivate()

    def prepare(self, shape: Shape) -> None:
        shape = tuple(int(d) for d in shape)  # type: ignore[assignment]
        if shape not in self.compiled:
            package, built = package_for(self.request(shape), self.cache_dir, lambda path: self._compile(shape, path))
            if built:
                self.built.append(package)
            index = self.device.index if self.device.index is not None else -1
            self.compiled[shape] = torch._inductor.aoti_load_package(str(package), device_index=index)
        if self.graphs is not None:
            with torch.inference_mode():
                self.graphs.capture(shape)

    def _compile(self, shape: Shape, path: Path) -> None:
        """Export a private copy of the encoder at `shape` and compile it into `path`."""
        model = placed_encoder(self.encoder, self.device, self.spec.precision, fused=True)
        example = torch.randn(shape, device=self.device)
        with torch.no_grad():
            program = torch.export.export(model, (example,), strict=False)
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(path), inductor_configs=self.inductor_options or None
        )
        del program, model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled[tuple(x.shape)](x)  # type: ignore[index]

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.compiled:
            self.prepare(shape)  # type: ignore[arg-type]
        with torch.inference_mode():
            return self.graphs(x) if self.graphs is not None else self._run(x)
