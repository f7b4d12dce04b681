"""AOTInductor packages on disk: compiled once, loaded in seconds by every later process.

One `.pt2` per static input shape, named so that variant, weights, precision, shape, torch release and
target are visible (`lseg_vit_l16_random_fp16__b1x3x480x640__torch2.11.0+cu130_sm90.pt2`, plus
`_o<hash>` when non-default Inductor options were used), with a JSON sidecar `<package>.json` that
records the full request. Reuse rule, as for engines: a package is loaded only when its sidecar records
exactly the request at hand (weights sha256, variant, shape, precision, layout, torch version, target
GPU, Inductor options) and the file still has the size and sha256 the sidecar recorded; anything else
is rebuilt in place. Package and sidecar are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lseg_trt.files import atomic_path, export_dir_prefix, file_sha256, remove_stale_temps, write_json
from lseg_trt.models.fused import GRAPH
from lseg_trt.names import safe_component
from lseg_trt.sidecars import file_matches, read_json, stamp

log = logging.getLogger(__name__)

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class PackageRequest:
    """Everything a compiled package depends on; two equal requests may share one package."""

    variant: str
    weights_name: str  # a safe path component (the checkpoint's stem, or "random")
    weights_sha256: str
    shape: Shape
    precision: str
    channels_last: bool
    target: dict[str, str | None]  # `lseg_trt.hwinfo.gpu_target` of the device
    inductor_options: dict[str, Any] = field(default_factory=dict)
    torch_version: str = torch.__version__
    graph: str = GRAPH  # the network compiled: `lseg_trt.models.fused`'s rewrite of the encoder

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data

    @property
    def file_name(self) -> str:
        cc = self.target["compute_capability"]
        target = "cpu" if cc is None else "sm" + cc.replace(".", "")
        shape = "x".join(str(d) for d in self.shape)
        options = ""
        if self.inductor_options:
            text = json.dumps(self.inductor_options, sort_keys=True)
            options = "_o" + hashlib.sha256(text.encode()).hexdigest()[:8]
        weights = safe_component(self.weights_name, "weights name")
        return (
            f"lseg_{self.variant}_{weights}_{self.precision}__b{shape}__torch{self.torch_version}_{target}{options}.pt2"
        )


def sidecar_of(package: Path) -> Path:
    return package.with_name(package.name + ".json")


def reusable(package: Path, request: PackageRequest) -> bool:
    """Whether `package` is the one `request` asks for (sidecar equal, file size and sha256 as recorded)."""
    if not package.is_file():
        return False
    try:
        record = read_json(sidecar_of(package))
    except ValueError as e:
        log.info("rebuilding %s: its sidecar is %s", package.name, e)
        return False
    if not isinstance(record, dict) or record.get("request") != request.to_dict():
        log.info("rebuilding %s: its sidecar does not match the request", package.name)
        return False
    if not file_matches(package, record.get("package_size"), record.get("package_sha256")):
        log.info("rebuilding %s: the file is not the package its sidecar records", package.name)
        return False
    return True


def package_for(request: PackageRequest, cache_dir: Path, compile_into: Callable[[Path], None]) -> tuple[Path, bool]:
    """The package for `request` in `cache_dir`, and whether it was compiled now (False: reused).

    `compile_into(path)` writes a package to `path` (a `.pt2` name, which AOTInductor insists on, in a
    private folder); it is moved into place, then the sidecar is written, both atomically.
    """
    cache_dir = Path(cache_dir)
    package = cache_dir / request.file_name
    if reusable(package, request):
        log.info("reusing %s", package.name)
        return package, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)
    started = time.perf_counter()
    log.info("compiling %s with AOTInductor ...", package.name)
    with tempfile.TemporaryDirectory(prefix=export_dir_prefix(), dir=cache_dir) as work:
        built = Path(work) / "package.pt2"
        compile_into(built)
        sidecar_of(package).unlink(missing_ok=True)  # never a new package beside an old record
        with atomic_path(package) as tmp:
            os.replace(built, tmp)
    seconds = time.perf_counter() - started
    record = {
        "request": request.to_dict(),
        "package_size": package.stat().st_size,
        "package_sha256": file_sha256(package),
        "compile_seconds": round(seconds, 2),
        **stamp(),
    }
    write_json(sidecar_of(package), record)
    log.info("compiled %s (%.1f MiB) in %.1f s", package.name, record["package_size"] / 2**20, seconds)
    return package, True
