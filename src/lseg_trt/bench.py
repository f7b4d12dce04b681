"""Latency methodology and result files.

Method: the runner is activated and prepared for the shape outside the timed region (model upload,
ONNX/engine loading, CUDA-graph capture, Inductor compilation); warm-up iterations are discarded;
each timed iteration gets one of four random inputs regenerated per size (never a constant tensor);
on a GPU every iteration is bracketed by CUDA events on the runner's stream (device time, no host
clock), on a CPU by `time.perf_counter`. By default the input is already on the device and the output
stays there (compute only); `include_copies` adds the pinned host->device copy of the input and the
device->host copy of the output to every iteration. Autograd is off (inference mode) for torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from lseg_trt.artifacts import ModelSource
from lseg_trt.backends import BackendSpec, Runner, make_runner
from lseg_trt.backends.base import device_kind, is_oom, is_unavailable
from lseg_trt.errors import LsegTrtError
from lseg_trt.models import LSeg
from lseg_trt.models.config import VARIANTS
from lseg_trt.models.encoder import LSegImageEncoder
from lseg_trt.sizes import format_size
from lseg_trt.tensorrt.options import Profile, engine_options

log = logging.getLogger(__name__)

INPUT_POOL = 4
DEFAULTS = {  # per device kind: what a plain `lseg-trt bench` measures
    "cpu": {"sizes": ((256, 256), (320, 320)), "backends": "torch,onnxruntime", "iterations": 5, "warmup": 1},
    "cuda": {
        "sizes": tuple((s, s) for s in (256, 320, 384, 480, 640, 768, 1024)),
        "backends": "torch,torch-fp16,torch-fp16+graph,torch-compile-fp16,torch-compile-fp16+graph,"
        "torch-compile-fused+graph,tensorrt",
        "iterations": 50,
        "warmup": 10,
    },
}


@dataclass(frozen=True)
class BenchSettings:
    sizes: tuple[tuple[int, int], ...]
    batch: int = 1
    iterations: int = 50
    warmup: int = 10
    include_copies: bool = False
    device: str = "cpu"
    cache_dir: str = "models"


@dataclass
class BenchRow:
    """One (weights, backend, size) measurement; `status` is `ok`, `nonfinite` (timed, but the features hold
    NaN or Inf), `oom`, `unavailable: …` or `error: …`."""

    variant: str
    weights: str
    backend: str
    height: int
    width: int
    batch: int
    status: str = "ok"
    iterations: int = 0
    mean_ms: float | None = None
    std_ms: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    throughput_ips: float | None = None  # images per second at the median
    peak_mem_mib: float | None = None  # timed loop, torch allocator only (TensorRT / ORT arenas are not seen)
    gflops: float | None = None  # per forward (torch.utils.flop_counter, multiply-add = 2)
    tflops_achieved: float | None = None  # at the median latency
    includes_copies: bool = False
    device: str = "cpu"
    engine: str = ""  # the file of an engine given to bench ("" where bench built the engine itself)

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"


@cache
def forward_flops(variant: str, batch: int, height: int, width: int) -> int:
    """FLOPs of one forward, counted on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        encoder = LSegImageEncoder(VARIANTS[variant]).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            encoder(torch.empty(batch, 3, height, width))
    return int(counter.get_total_flops())


def statistics_of(times_ms: list[float]) -> dict[str, float]:
    """Mean, sample std, median, p90, p99 and min of per-iteration milliseconds."""
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "mean_ms": float(t.mean()),
        "std_ms": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "min_ms": float(t.min()),
    }


def defaults_for(device: str) -> dict[str, Any]:
    """The sizes, backends, iterations and warm-up a plain `bench` uses on this kind of device."""
    return DEFAULTS[device_kind(device)]


def time_runner(runner: Runner, shape: tuple[int, int, int, int], settings: BenchSettings) -> list[float]:
    """Per-iteration latency in ms (warm-up excluded), as described in the module docstring."""
    device = runner.device
    gen = torch.Generator(device="cpu").manual_seed(hash(shape) & 0xFFFF)
    host_inputs = [torch.randn(shape, generator=gen) for _ in range(INPUT_POOL)]
    if device.type == "cuda" and settings.include_copies:
        host_inputs = [h.pin_memory() for h in host_inputs]
    inputs = [h.to(device) for h in host_inputs]
    runner.prepare(shape)
    sink: torch.Tensor | None = None

    def step(i: int) -> None:
        nonlocal sink
        if settings.include_copies:
            x = host_inputs[i % INPUT_POOL].to(device, non_blocking=True)
            y = runner.infer(x)
            if sink is None or sink.shape != y.shape:
                sink = torch.empty(y.shape, dtype=y.dtype, pin_memory=device.type == "cuda")
            sink.copy_(y, non_blocking=True)
        else:
            runner.infer(inputs[i % INPUT_POOL])

    return time_ms(step, device, settings.iterations, settings.warmup)


def time_ms(step: Callable[[int], object], device: torch.device, iterations: int, warmup: int = 1) -> list[float]:
    """Milliseconds of each of `iterations` calls `step(i)` after `warmup` discarded ones: CUDA events
    around each call on a GPU (device time, no host clock), `time.perf_counter` on a CPU. Peak memory
    statistics are reset after the warm-up, so cuDNN's autotuning workspaces are not counted."""
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iterations)
        ]
        for i, (start, end) in enumerate(events):
            start.record()
            step(i)
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for i in range(iterations):
        started = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def bench(
    models: Iterable[LSeg | ModelSource],
    specs: Iterable[BackendSpec],
    settings: BenchSettings,
    on_step: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Measure every backend on every model at every size; a backend that cannot run here or runs out of
    memory becomes a row and the run goes on; anything else is a bug and propagates.

    On a GPU, cuDNN picks its fastest convolution per shape (`cudnn.benchmark`) for the run, as any
    latency-minded deployment would; the previous setting is restored afterwards.
    """
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = settings.device.startswith("cuda")
    try:
        return _bench(models, specs, settings, on_step)
    finally:
        torch.backends.cudnn.benchmark = saved


def _bench(
    models: Iterable[LSeg | ModelSource],
    specs: Iterable[BackendSpec],
    settings: BenchSettings,
    on_step: Callable[[str], None] | None,
) -> list[BenchRow]:
    rows: list[BenchRow] = []
    profile = _profile_for(settings)
    for model in models:
        info = model.info if isinstance(model, ModelSource) else model
        for spec in specs:
            base = {
                "variant": info.variant,
                "weights": info.weights_name,
                "backend": spec.name,
                "batch": settings.batch,
                "engine": model.path.name if isinstance(model, ModelSource) and model.kind == "engine" else "",
            }
            runner: Runner | None = None
            try:
                runner = make_runner(spec, model, settings.device, settings.cache_dir, profile).activate()
            except LsegTrtError as e:  # MissingDependencyError included
                log.warning("%s unavailable: %s", spec.name, e)
                rows += [BenchRow(**base, height=h, width=w, status=f"unavailable: {e}") for h, w in settings.sizes]
                if on_step:
                    for _ in settings.sizes:
                        on_step(spec.name)
                continue
            try:
                for h, w in settings.sizes:
                    rows.append(_measure(runner, base, (settings.batch, 3, h, w), settings))
                    if on_step:
                        on_step(f"{info.variant} {spec.name} {format_size((h, w))}")
            finally:
                runner.deactivate()
    return rows


def _measure(
    runner: Runner, base: dict[str, Any], shape: tuple[int, int, int, int], settings: BenchSettings
) -> BenchRow:
    row = BenchRow(
        **base, height=shape[2], width=shape[3], includes_copies=settings.include_copies, device=str(runner.device)
    )
    cuda = runner.device.type == "cuda"
    try:
        if cuda:
            torch.cuda.empty_cache()
        times = time_runner(runner, shape, settings)
    except (RuntimeError, MemoryError, LsegTrtError) as e:
        if not is_unavailable(e):
            raise
        if cuda:
            torch.cuda.empty_cache()
        row.status = "oom" if is_oom(e) else f"error: {str(e).splitlines()[0][:200]}"
        log.warning("%s %s: %s", runner.name, row.size, row.status)
        return row
    for key, value in statistics_of(times).items():
        setattr(row, key, value)
    row.iterations = len(times)
    row.throughput_ips = shape[0] * 1000 / row.median_ms
    flops = forward_flops(base["variant"], *shape[:1], *shape[2:])
    row.gflops = flops / 1e9
    row.tflops_achieved = flops / (row.median_ms * 1e-3) / 1e12
    if cuda:
        row.peak_mem_mib = torch.cuda.max_memory_allocated(runner.device) / 2**20
    if not _finite_output(runner, shape):
        row.status = "nonfinite"
        log.warning("%s %s: the features hold NaN or Inf (timings kept; non-finite weights?)", runner.name, row.size)
    return row


def _finite_output(runner: Runner, shape: tuple[int, int, int, int]) -> bool:
    """One more call on a fresh random input: a network that outputs NaN still has a real latency, but its
    row must say that its features are not finite."""
    with torch.inference_mode():
        return bool(torch.isfinite(runner.infer(torch.randn(shape, device=runner.device))).all())


def _profile_for(settings: BenchSettings) -> Profile:
    """An engine profile covering every requested size (opt at the middle one)."""
    heights = sorted(h for h, _ in settings.sizes)
    widths = sorted(w for _, w in settings.sizes)
    b = settings.batch
    middle = settings.sizes[len(settings.sizes) // 2]
    return Profile((b, 3, heights[0], widths[0]), (b, 3, *middle), (b, 3, heights[-1], widths[-1]))


def matmul_ceiling(device: str | torch.device, n: int = 8192, iterations: int = 50) -> dict[str, float]:
    """Dense bf16 GEMM throughput (n x n x n): the yardstick for achieved TFLOP/s."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    ms = start.elapsed_time(end) / iterations
    return {"n": n, "ms": ms, "tflops": 2 * n**3 / (ms * 1e-3) / 1e12}


def rows_to_dicts(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def column_labels(rows: list[BenchRow]) -> list[str]:
    """Each row's name in tables, plots and the summary: its backend, and where rows of one backend name ran
    different engines (fp16 engines of two profiles or other build options, or one given beside the one bench
    built itself), the options the engine's file name spells (the whole name where those agree)."""
    engines: dict[str, set[str]] = {}
    for r in rows:
        engines.setdefault(r.backend, set()).add(r.engine)

    def tag(row: BenchRow) -> str:
        options = engine_options(row.engine)
        twins = [e for e in engines[row.backend] if engine_options(e) == options]
        return options if options and len(twins) == 1 else row.engine

    return [f"{r.backend} [{tag(r)}]" if r.engine and len(engines[r.backend]) > 1 else r.backend for r in rows]


def summarize(rows: list[BenchRow], ceiling_tflops: float | None) -> list[dict[str, Any]]:
    """Per model and size: the fastest backend, its speed-up over torch fp32 eager, its share of the ceiling."""
    out = []
    label = dict(zip(map(id, rows), column_labels(rows), strict=True))
    keys = sorted({(r.variant, r.weights, r.height, r.width) for r in rows}, key=lambda k: (k[0], k[1], k[2] * k[3]))
    for variant, weights, h, w in keys:
        ok = [
            r
            for r in rows
            if (r.variant, r.weights, r.height, r.width) == (variant, weights, h, w) and r.status == "ok"
        ]
        if not ok:
            continue
        fastest = min(ok, key=lambda r: r.median_ms)
        baseline = next((r for r in ok if r.backend == "torch"), None)
        out.append({
            "variant": variant, "weights": weights, "size": f"{h}x{w}", "fastest": label[id(fastest)],
            "median_ms": fastest.median_ms,
            "speedup_vs_torch_fp32": baseline.median_ms / fastest.median_ms if baseline else None,
            "tflops": fastest.tflops_achieved,
            "share_of_bf16_ceiling": fastest.tflops_achieved / ceiling_tflops if ceiling_tflops else None,
        })  # fmt: skip
    return out
