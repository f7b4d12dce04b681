"""AOTInductor packages on the CPU with the tiny ViT: compile once, load without compiling, rebuild on a
sidecar mismatch, and compute what torch fp32 computes. Each compile takes ~25 s on a 2-core CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.backends.aoti import AotiRunner
from lseg_trt.compiled_cache import reusable, sidecar_of
from lseg_trt.errors import LsegTrtError
from lseg_trt.fidelity import strict_fp32
from lseg_trt.images import samples
from lseg_trt.metrics import compare_features
from lseg_trt.models import LSeg
from lseg_trt.tolerances import TOLERANCES

SHAPE = (1, 3, 64, 64)


pytestmark = pytest.mark.slow  # two Inductor compiles on the CPU (~40 s)


def _runner(lseg: LSeg, cache: Path) -> AotiRunner:
    runner = make_runner(parse_backend("torch-aoti-fp32"), lseg, "cpu", cache)
    assert isinstance(runner, AotiRunner)
    return runner.activate()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def photo(tiny_vit: LSeg) -> torch.Tensor:
    return tiny_vit.preprocess(samples()["chelsea"], SHAPE[2:])


@pytest.fixture(scope="module")
def compiled(tiny_vit: LSeg, photo: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache dir, package) after one runner compiled the tiny ViT at SHAPE."""
    cache = tmp_path_factory.mktemp("models")
    runner = _runner(tiny_vit, cache)
    runner.prepare(SHAPE)
    assert len(runner.built) == 1
    return cache, runner.built[0]


def test_package_is_named_and_keyed(compiled: tuple[Path, Path]) -> None:
    cache, package = compiled
    assert package == cache / "aoti" / f"lseg_tiny_vit_random_fp32__b1x3x64x64__torch{torch.__version__}_cpu.pt2"
    record = json.loads(sidecar_of(package).read_text())
    request = record["request"]
    assert request["variant"] == "tiny_vit" and request["shape"] == list(SHAPE) and request["precision"] == "fp32"
    assert request["weights_sha256"].startswith("random-")
    assert request["target"] == {"gpu": None, "compute_capability": None}  # the name says "cpu"
    assert request["torch_version"] == torch.__version__ and record["package_size"] == package.stat().st_size


def test_fresh_runner_loads_and_matches_torch_fp32(
    compiled: tuple[Path, Path], tiny_vit: LSeg, photo: torch.Tensor
) -> None:
    cache, package = compiled
    mtime = package.stat().st_mtime_ns
    runner = _runner(tiny_vit, cache)
    started = time.perf_counter()
    features = runner.infer_host(photo)
    assert runner.built == [] and package.stat().st_mtime_ns == mtime
    assert time.perf_counter() - started < 10  # a load, not a ~25 s compile
    with strict_fp32(), torch.inference_mode():
        reference = tiny_vit.image_encoder(photo)
    metrics = compare_features(features, reference)
    assert TOLERANCES["fp32"].passes(metrics), metrics


def test_sidecar_mismatch_rebuilds(compiled: tuple[Path, Path], tiny_vit: LSeg) -> None:
    cache, package = compiled
    sidecar = sidecar_of(package)
    record = json.loads(sidecar.read_text())
    record["request"]["weights_sha256"] = "random-0"  # as if compiled from other weights
    sidecar.write_text(json.dumps(record))
    runner = _runner(tiny_vit, cache)
    runner.prepare(SHAPE)
    assert runner.built == [package]
    assert reusable(package, runner.request(SHAPE))


def test_changed_package_is_not_reused(compiled: tuple[Path, Path], tiny_vit: LSeg, tmp_path: Path) -> None:
    cache, package = compiled
    request = _runner(tiny_vit, cache).request(SHAPE)
    copy = tmp_path / package.name
    copy.write_bytes(package.read_bytes())
    sidecar_of(copy).write_text(sidecar_of(package).read_text())
    assert reusable(copy, request)
    with copy.open("r+b") as f:  # same size, one byte flipped
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    assert not reusable(copy, request)
    sidecar_of(copy).unlink()
    assert not reusable(copy, request)


def test_graphs_need_cuda(tiny_vit: LSeg, tmp_path: Path) -> None:
    with pytest.raises(LsegTrtError, match="CUDA graphs"):
        make_runner(parse_backend("torch-aoti+graph"), tiny_vit, "cpu", tmp_path)
