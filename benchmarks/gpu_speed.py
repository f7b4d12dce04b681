"""Issue 13 in one run: how close ViT-L/16 and RN101 come to the GPU's limit, cold start, runner overhead.

Usage (repository root, GPU machine):
    PYTHONUNBUFFERED=1 python benchmarks/gpu_speed.py OUT [--quick] [--only SECTIONS] [--budget-s 330]
CPU smoke test: python benchmarks/gpu_speed.py OUT --device cpu --variant tiny_vit --quick

Sections, run in this order (each task is skipped once the budget could not cover its estimated cost,
so a run always ends with its results written; OUT/gpu_speed.{json,md} are rewritten after every row):
- ceiling: the same run's dense bf16 GEMM TFLOP/s (`lseg_trt.bench.matmul_ceiling`), the yardstick.
- attention: SDPA alone at ViT-L's token counts, per backend (flash / efficient / cuDNN), and which one
  PyTorch picks by default: cheap, and it says whether an attention candidate is worth compiling.
- baseline: per case, the --baselines backends: by default torch fp32 eager, torch-compile-fp16+graph
  (the fastest measured) and torch-compile-fused+graph (Inductor on the inference rewrite,
  `lseg_trt.models.fused`, slower on the GPU so far), timed as
  `lseg-trt bench` times (CUDA events per iteration, warm-up excluded, medians), with TFLOP/s and the
  share of the ceiling (FLOPs are lang-seg's for every backend, so the rewrite's figure is an effective
  rate: it does 3.5 % (ViT-L) to 9.5 % (RN101) less work); the fidelity case (batch 1, the first
  non-square size) also gets fidelity.
- aoti: torch-aoti-fp16 and torch-aoti-fp16+graph at the fidelity case (loads the package the
  coldstart section compiled when that ran first).
- overhead: the Python runner (`runner.infer`, torch-compile-fp16+graph) against the bare
  `graph.replay()` of the very graph it replays (and copy + replay), at 256x256 and 480x640 batch 1:
  device time per call (CUDA events), synchronous host latency per call, and back-to-back host time
  per call.
- coldstart: time to first features in a fresh process (`python gpu_speed.py --child ...`) that loads a
  checkpoint file in lang-seg's format: torch-compile-fp16+graph with an empty and then a reused
  TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR; torch-aoti cold (empty cache) and warm (package present).
  A child that dies leaves the tail of its stderr (with faulthandler's stack) in OUT.
- candidates: variants of torch-compile-fp16+graph at the candidate cases, each with its fidelity (freezing,
  bf16, a pinned SDPA backend, fp8 linear layers on Ada/Hopper (`fp8_linears.py`), max-autotune); a
  candidate counts only if it passes `lseg_trt.tolerances.TOLERANCES` (fp8 is judged by the bf16 floor, the
  loosest there is). max-autotune runs on a GPU only, at the first candidate case only (its GEMM searches
  cost minutes per shape).

Fidelity: chelsea at the case's size, candidate vs torch fp32 eager with TF32 off (`strict_fp32`).
Weights are the embedded seeded random ones (real architecture, so real latency). Needs open_clip
(the text tower is built with the network).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lseg_trt import hwinfo

SECTIONS = ("ceiling", "attention", "baseline", "aoti", "overhead", "coldstart", "candidates")
BASELINE_FAST = "torch-compile-fp16+graph"  # the fastest measured on the GPU (the rewrite is slower there)
FUSED_FAST = "torch-compile-fused+graph"  # Inductor on `lseg_trt.models.fused` (fp16)
# torch.compile's mode="max-autotune-no-cudagraphs" as options (a mode and options cannot be combined)
MAX_AUTOTUNE = {"max_autotune": True, "coordinate_descent_tuning": True}
CHILD_MARK = "COLDSTART_JSON "
log = logging.getLogger("gpu_speed")


@dataclass(frozen=True)
class Case:
    variant: str
    batch: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.height, self.width)

    @property
    def name(self) -> str:
        return f"{self.variant} b{self.batch} {self.height}x{self.width}"

    @classmethod
    def parse(cls, text: str) -> Case:
        """`vit_l16:1x480x640` (variant:batch x height x width)."""
        variant, _, dims = text.partition(":")
        b, h, w = (int(d) for d in dims.split("x"))
        return cls(variant, b, h, w)


GPU_CASES = (  # the fidelity case first: every later section builds on it
    Case("vit_l16", 1, 480, 640),
    Case("vit_l16", 1, 480, 480),
    Case("vit_l16", 8, 480, 640),
    Case("vit_l16", 1, 1024, 1024),
    Case("rn101_zs", 1, 480, 480),
)


def default_cases(variant: str | None, quick: bool) -> list[Case]:
    if variant is not None and variant.startswith("tiny"):
        return [Case(variant, 1, 64, 96)] if quick else [Case(variant, 1, 64, 96), Case(variant, 2, 64, 64)]
    cases = [c for c in GPU_CASES if variant is None or c.variant == variant]
    return cases[:2] if quick else cases


def fidelity_cases(cases: list[Case], candidate_cases: list[Case]) -> set[Case]:
    """Where features are compared with the reference: each variant's first batch-1 case, and every
    batch-1 candidate case."""
    firsts = {c.variant: c for c in reversed(cases) if c.batch == 1}
    return set(firsts.values()) | {c for c in candidate_cases if c.batch == 1}


# --- results -------------------------------------------------------------------------------------------


class Results:
    """Rows grouped by section; JSON and Markdown rewritten (atomically) after every row."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.meta = out, meta
        self.rows: list[dict[str, Any]] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, section: str, **row: Any) -> dict[str, Any]:
        row = {"section": section, **row}
        self.rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("section", "fidelity")}
        print(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)
        self.write()
        return row

    def write(self) -> None:
        from lseg_trt.reports import write_result

        record = json.loads(json.dumps({"meta": self.meta, "rows": self.rows}, default=str))  # paths, dtypes: text
        write_result(self.out, "gpu_speed", record, self.markdown())

    def markdown(self) -> str:
        lines = ["# gpu_speed results", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in self.meta.items() if not isinstance(v, dict | list)]
        for section in SECTIONS:
            rows = [r for r in self.rows if r["section"] == section]
            if not rows:
                continue
            columns = list(dict.fromkeys(k for r in rows for k in r if k not in ("section", "fidelity")))
            lines += ["", f"## {section}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


class Budget:
    """Start a task only when its estimated cost still fits; compiles cannot be interrupted midway."""

    def __init__(self, seconds: float) -> None:
        self.started, self.seconds = time.monotonic(), seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def allows(self, cost_s: float) -> bool:
        return self.elapsed() + cost_s <= self.seconds


# --- measuring -----------------------------------------------------------------------------------------


class Bench:
    """Shared state of one run: models, references, the baseline runners, the ceiling."""

    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        self.args, self.results = args, results
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.cache = Path(args.cache_dir)
        self.budget = Budget(args.budget_s)
        self.cases: list[Case] = args.cases
        self.candidate_cases: list[Case] = args.candidate_cases or args.cases[:1]
        self.fidelity_cases = fidelity_cases(self.cases, self.candidate_cases)
        self.lsegs: dict[str, Any] = {}
        self.references: dict[Case, torch.Tensor] = {}
        self.runners: dict[tuple[str, str], Any] = {}
        self.ceiling_tflops: float | None = None
        self.sdpa_best: str | None = None  # a non-default SDPA backend that beat the default

    # models and runners
    def lseg(self, variant: str) -> Any:
        if variant not in self.lsegs:
            from lseg_trt.models import load_lseg

            started = time.perf_counter()
            self.lsegs[variant] = load_lseg("random", variant=variant)
            print(f"built {variant} (random weights) in {time.perf_counter() - started:.1f} s", flush=True)
        return self.lsegs[variant]

    def backend_name(self, name: str) -> str:
        return name if self.cuda else name.removesuffix("+graph")

    def runner(self, variant: str, backend: str) -> Any:
        """A baseline runner, activated once and kept for the run (one graph per shape inside)."""
        from lseg_trt.backends import make_runner, parse_backend

        key = (variant, self.backend_name(backend))
        if key not in self.runners:
            spec = parse_backend(key[1])
            self.runners[key] = make_runner(spec, self.lseg(variant), self.device, self.cache).activate()
        return self.runners[key]

    # measurements
    def prepare(self, runner: Any, case: Case) -> float:
        """Seconds to get `runner` ready for `case` (compile, load, capture) and through its first call."""
        started = time.perf_counter()
        runner.prepare(case.shape)
        runner.infer(torch.randn(case.shape, device=self.device))
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def timing(self, runner: Any, case: Case) -> dict[str, Any]:
        from lseg_trt.bench import BenchSettings, forward_flops, statistics_of, time_runner

        settings = BenchSettings(
            sizes=((case.height, case.width),),
            batch=case.batch,
            iterations=self.args.iterations,
            warmup=self.args.warmup,
            device=str(self.device),
        )
        stats = statistics_of(time_runner(runner, case.shape, settings))
        median = stats["median_ms"]
        flops = forward_flops(case.variant, case.batch, case.height, case.width)
        tflops = flops / (median * 1e-3) / 1e12
        row = {
            "median_ms": median,
            "p90_ms": stats["p90_ms"],
            "ms_per_image": median / case.batch,
            "images_per_s": case.batch * 1000 / median,
            "tflops": tflops,
            "ceiling_share": tflops / self.ceiling_tflops if self.ceiling_tflops else None,
        }
        if self.cuda:
            row["peak_mem_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return row

    def reference(self, case: Case) -> torch.Tensor:
        """torch fp32 eager with TF32 off on chelsea at the case's size (batch 1)."""
        if case not in self.references:
            from lseg_trt.fidelity import strict_fp32

            runner = self.runner(case.variant, "torch")
            with strict_fp32():
                self.references[case] = runner.infer_host(self.photo(case))
        return self.references[case]

    def photo(self, case: Case) -> torch.Tensor:
        from lseg_trt.images import samples

        return self.lseg(case.variant).preprocess(samples()["chelsea"], (case.height, case.width))

    def fidelity(self, runner: Any, case: Case, precision: str) -> dict[str, Any]:
        from lseg_trt.metrics import compare_features
        from lseg_trt.tolerances import TOLERANCES

        reference = self.reference(case)
        metrics = compare_features(runner.infer_host(self.photo(case)), reference)
        tolerance = TOLERANCES[precision]
        return {
            "fidelity": metrics.to_dict(),
            "fid_metric": f"{tolerance.metric}={getattr(metrics, tolerance.metric):.6f}",
            "fid_pass": tolerance.passes(metrics),
        }

    def measure(
        self,
        section: str,
        name: str,
        case: Case,
        make: Callable[[], Any],
        precision: str | None,
        dispose: bool = True,
    ) -> None:
        """Prepare, time and (at a fidelity case, given a precision) check one runner; failures are rows.
        `dispose`: deactivate the runner afterwards (the kept baseline runners are not)."""
        row: dict[str, Any] = {"case": case.name, "backend": name}
        runner = None
        try:
            runner = make()
            row["prepare_s"] = self.prepare(runner, case)
            row.update(self.timing(runner, case))
            if precision is not None and case in self.fidelity_cases:
                row.update(self.fidelity(runner, case, precision))
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - a candidate that fails is a result, not the end of the run
            log.exception("%s %s failed", name, case.name)
            first = str(e).splitlines()[0][:160] if str(e) else ""
            row["status"] = f"error: {type(e).__name__}: {first}"
        finally:
            if dispose and runner is not None:
                runner.deactivate()
            if self.cuda:
                torch.cuda.empty_cache()
        self.results.add(section, **row)


# --- sections ------------------------------------------------------------------------------------------


def ceiling(bench: Bench) -> None:
    from lseg_trt.bench import matmul_ceiling

    result = matmul_ceiling(bench.device)
    bench.ceiling_tflops = result["tflops"]
    bench.results.meta["ceiling_bf16_tflops"] = result["tflops"]
    bench.results.add("ceiling", gemm=f"bf16 {result['n']}^3", ms=result["ms"], tflops=result["tflops"])


def attention(bench: Bench) -> None:
    """SDPA alone, fp16, ViT-L/16 heads (16 x 64), at each case's token count; x24 blocks per forward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lseg_trt.models.config import VARIANTS

    cfg = VARIANTS[next(c.variant for c in bench.cases if VARIANTS[c.variant].backbone == "vit")]
    heads, head_dim = cfg.vit_heads, cfg.vit_width // cfg.vit_heads
    dtype = torch.float16 if bench.cuda else torch.float32
    totals: dict[str, float] = {}
    for case in bench.cases:
        if VARIANTS[case.variant].backbone != "vit":
            continue
        tokens = 1 + (case.height // cfg.patch_size) * (case.width // cfg.patch_size)
        q, k, v = (torch.randn(case.batch, heads, tokens, head_dim, device=bench.device, dtype=dtype) for _ in "qkv")
        default = SDPBackend(int(torch._fused_sdp_choice(q, k, v))).name
        row: dict[str, Any] = {"case": case.name, "tokens": tokens, "default": default}
        for backend in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            label = "default" if backend is None else backend.name
            context = contextlib.nullcontext() if backend is None else sdpa_kernel([backend])
            try:
                with context, torch.inference_mode():
                    ms = _time_call(
                        bench, functools.partial(torch.nn.functional.scaled_dot_product_attention, q, k, v), 30
                    )
                row[f"{label}_ms_x{cfg.vit_depth}"] = ms * cfg.vit_depth
                totals[label] = totals.get(label, 0.0) + ms
            except RuntimeError as e:
                row[f"{label}_ms_x{cfg.vit_depth}"] = f"n/a ({str(e).splitlines()[0][:40]})"
        bench.results.add("attention", **row)
    best = min((k for k in totals if k != "default"), key=lambda k: totals[k], default=None)
    if best is not None and totals[best] < 0.98 * totals.get("default", float("inf")):
        bench.sdpa_best = best


def _time_call(bench: Bench, fn: Callable[[], Any], iterations: int) -> float:
    """Median ms of `fn` (lseg_trt.bench.time_ms: CUDA events on a GPU), after 3 warm-ups."""
    from lseg_trt.bench import time_ms

    return statistics.median(time_ms(lambda _: fn(), bench.device, iterations, warmup=3))


def baseline(bench: Bench, case: Case) -> None:
    from lseg_trt.backends import parse_backend

    for backend in bench.args.baselines:
        precision = None if backend == "torch" else parse_backend(backend).precision  # torch: the yardstick
        name = bench.backend_name(backend)
        bench.measure("baseline", name, case, lambda b=backend: bench.runner(case.variant, b), precision, False)


def aoti(bench: Bench, case: Case) -> None:
    from lseg_trt.backends import make_runner, parse_backend

    lseg = bench.lseg(case.variant)
    for name in dict.fromkeys(bench.backend_name(n) for n in ("torch-aoti-fp16", "torch-aoti-fp16+graph")):

        def make(n: str = name) -> Any:
            return make_runner(parse_backend(n), lseg, bench.device, bench.cache).activate()

        bench.measure("aoti", name, case, make, "fp16")


def overhead(bench: Bench, case: Case) -> None:
    """Python runner vs bare replay of its own graph: where a C++ runner could win at most."""
    runner = bench.runner(case.variant, BASELINE_FAST)
    bench.prepare(runner, case)
    graph, static_in, _ = runner.fn.graphs[case.shape]
    x = torch.randn(case.shape, device=bench.device)
    calls = {
        "runner.infer": lambda: runner.infer(x),
        "copy+replay": lambda: (static_in.copy_(x), graph.replay()),
        "replay": graph.replay,
    }
    n = max(bench.args.iterations, 50)
    with torch.inference_mode():  # as the runner copies into its inference-mode static input
        for label, fn in calls.items():
            device_ms = _time_call(bench, fn, n)
            sync_ms = []
            for _ in range(n):
                started = time.perf_counter()
                fn()
                torch.cuda.synchronize(bench.device)
                sync_ms.append((time.perf_counter() - started) * 1000)
            torch.cuda.synchronize(bench.device)
            started = time.perf_counter()
            for _ in range(n):
                fn()
            torch.cuda.synchronize(bench.device)
            stream_ms = (time.perf_counter() - started) * 1000 / n
            bench.results.add(
                "overhead",
                case=case.name,
                call=label,
                device_ms=device_ms,
                sync_latency_ms=statistics.median(sync_ms),
                back_to_back_ms=stream_ms,
            )


def coldstart(bench: Bench, case: Case) -> None:
    """Fresh processes from a checkpoint file in lang-seg's format, as a user starts (not random init)."""
    from lseg_trt.models.synthetic import save_lightning_checkpoint

    checkpoint = bench.cache / "coldstart" / f"{case.variant}.ckpt"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_lightning_checkpoint(bench.lseg(case.variant), checkpoint)
    for backend in dict.fromkeys(bench.backend_name(b) for b in bench.args.coldstart):
        folder = bench.cache / "coldstart" / backend  # this child's Inductor and Triton caches
        shutil.rmtree(folder, ignore_errors=True)
        if backend == "torch-aoti-fp16":
            shutil.rmtree(bench.cache / "aoti", ignore_errors=True)  # refilled by the cold child, loaded later
        for phase in ("cold", "warm"):
            cost = (150 if backend == "torch-aoti-fp16" else 90) if phase == "cold" else 40
            if not bench.budget.allows(cost * (1 if bench.cuda else 0.3)):
                bench.results.add("coldstart", case=case.name, backend=backend, phase=phase, status="skipped: budget")
                continue
            bench.results.add(
                "coldstart",
                case=case.name,
                backend=backend,
                phase=phase,
                **_child(bench, backend, case, folder, checkpoint),
            )


def _child(bench: Bench, backend: str, case: Case, folder: Path, checkpoint: Path) -> dict[str, Any]:
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",  # a crash in compiled code leaves its Python stack in stderr
        TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"),
        TRITON_CACHE_DIR=str(folder / "triton"),
    )
    command = [sys.executable, __file__, str(bench.results.out), "--device", str(bench.device)]
    command += [
        "--cache-dir",
        str(bench.cache),
        "--child",
        backend,
        "--cases",
        f"{case.variant}:{case.batch}x{case.height}x{case.width}",
        "--checkpoint",
        str(checkpoint),
    ]
    started = time.perf_counter()
    command += ["--launched-at", repr(time.time())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540, check=False)
    wall = time.perf_counter() - started
    report = next(
        (json.loads(line[len(CHILD_MARK) :]) for line in done.stdout.splitlines() if line.startswith(CHILD_MARK)), None
    )
    if report is None:
        tail = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        (bench.results.out / f"coldstart-{backend}.stderr.txt").write_text("\n".join(tail[-60:]) + "\n")
        return {"status": f"error: exit {done.returncode}: {tail[-1][:160]}", "process_wall_s": wall}
    return {"status": "ok", "process_wall_s": wall, **report}


def child_main(args: argparse.Namespace) -> None:
    """One fresh process: weights -> runner -> first features; prints the stage times as one JSON line."""
    entered = time.time()
    from lseg_trt.backends import make_runner, parse_backend
    from lseg_trt.models import load_lseg

    case = args.cases[0]
    stages: dict[str, Any] = {"imports_s": time.time() - args.launched_at}
    mark = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = now - mark
        mark = now

    lseg = load_lseg(args.checkpoint, variant=case.variant)
    stage("weights_s")
    runner = make_runner(parse_backend(args.child), lseg, args.device, args.cache_dir).activate()
    stage("activate_s")
    runner.prepare(case.shape)
    stage("prepare_s")
    with torch.inference_mode():
        runner.infer(torch.randn(case.shape, device=args.device)).float().sum().item()
    stage("first_infer_s")
    stages["first_features_s"] = time.time() - args.launched_at
    stages["before_main_s"] = entered - args.launched_at
    stages["compiled_now"] = bool(runner.built) if hasattr(runner, "built") else None
    print(CHILD_MARK + json.dumps(stages), flush=True)


def candidates(bench: Bench) -> list[tuple[str, str, float, Callable[[Case], Any]]]:
    """(name, precision, estimated seconds per case, factory), the most promising first."""
    import fp8_linears  # beside this script
    from torch.nn.attention import SDPBackend

    def tuned(precision: str, **kwargs: Any) -> Callable[[Case], Any]:
        def make(case: Case) -> Any:
            return _tuned_runner_class().build(bench, case.variant, precision, **kwargs)

        return make

    # On the plain encoder: Inductor compiles the inference rewrite into slower GPU code (H200, 2026-11-25).
    items: list[tuple[str, str, float, Callable[[Case], Any]]] = []
    if bench.cuda and torch.cuda.get_device_capability(bench.device) >= (8, 9):  # e4m3 GEMMs: Ada, Hopper on
        items.append(("fp8 linears (bf16 rest)", "bf16", 80, tuned("bf16", transform=fp8_linears.to_fp8_linears)))
    if bench.cuda:  # minutes of GEMM searches per shape
        items.append(("max-autotune fp16", "fp16", 300, tuned("fp16", options=MAX_AUTOTUNE)))
    if bench.sdpa_best is not None:
        backend = getattr(SDPBackend, bench.sdpa_best)
        items.append((f"sdpa={backend.name} fp16", "fp16", 70, tuned("fp16", sdpa=backend)))
    items.append(("freezing fp16", "fp16", 70, tuned("fp16", options={"freezing": True})))
    items.append(("bf16", "bf16", 70, tuned("bf16")))
    if bench.args.candidates:  # the named ones only (prefixes of their names)
        items = [item for item in items if any(item[0].startswith(prefix) for prefix in bench.args.candidates)]
    return items[-1:] if bench.args.quick else items


@functools.cache
def _tuned_runner_class() -> type:
    """Made on first use: its base class imports the models, which need open_clip."""
    from lseg_trt.backends.torch import TorchCompileRunner

    class Tuned(TorchCompileRunner):
        """torch.compile of the encoder with Inductor options (`options`), an SDPA backend pinned while
        tracing and capturing (`sdpa`), or its modules rewritten in place first (`transform`)."""

        sdpa: Any = None
        transform: Callable[[torch.nn.Module], Any] | None = None

        @classmethod
        def build(cls, bench: Bench, variant: str, precision: str, **kwargs: Any) -> Any:
            from lseg_trt.backends import parse_backend

            spec = parse_backend(bench.backend_name(f"torch-compile-{precision}+graph"))
            runner = cls(bench.lseg(variant).image_encoder, spec, bench.device)
            for key, value in kwargs.items():
                setattr(runner, key, value)
            return runner.activate()

        def _wrap(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            if self.transform is not None:
                self.transform(model)  # the runner's private copy, already placed and cast
            return super()._wrap(model)

        def _context(self) -> contextlib.AbstractContextManager[Any]:
            from torch.nn.attention import sdpa_kernel

            return sdpa_kernel([self.sdpa]) if self.sdpa is not None else contextlib.nullcontext()

        def prepare(self, shape: tuple[int, int, int, int]) -> None:
            with self._context():
                super().prepare(shape)

        def _infer(self, x: torch.Tensor) -> torch.Tensor:
            with self._context():
                return super()._infer(x)

    return Tuned


# --- driver --------------------------------------------------------------------------------------------


def tasks(bench: Bench) -> Iterator[tuple[str, str, float, Callable[[], None]]]:
    """(section, label, estimated seconds, action) in priority order."""
    compile_s = 30 if bench.cuda else 15  # H200 and H100: 9-21 s per backend and shape
    cases = bench.cases
    vit_cases = [c for c in cases if c.variant.startswith(("vit", "tiny_vit"))]
    first = vit_cases[0] if vit_cases else cases[0]
    yield "ceiling", "bf16 GEMM", 10, lambda: ceiling(bench) if bench.cuda else None
    if vit_cases:
        yield "attention", "SDPA backends", 10, lambda: attention(bench)
    yield "baseline", first.name, compile_s + 20, lambda: baseline(bench, first)
    if bench.cuda:
        yield "overhead", first.name, 5, lambda: overhead(bench, Case(first.variant, 1, first.height, first.width))
    yield "coldstart", first.name, 0, lambda: coldstart(bench, first)  # budgets each child itself
    yield "aoti", first.name, (30 if "coldstart" in bench.args.only else 2.5 * compile_s), lambda: aoti(bench, first)
    for case in cases[1:]:
        cost = compile_s * (2 if case.height * case.width > 500_000 or case.batch > 1 else 1) + 10
        yield "baseline", case.name, cost, lambda c=case: baseline(bench, c)
    if bench.cuda:
        small = Case(first.variant, 1, 256, 256)
        yield "overhead", small.name, compile_s, lambda: overhead(bench, small)
    if "candidates" not in bench.args.only:
        return
    for case in bench.candidate_cases:
        if "baseline" not in bench.args.only or case not in cases:  # the same run's baseline beside each candidate
            yield "candidates", f"baseline {case.name}", compile_s + 10, lambda c=case: baseline(bench, c)
    scale = 1 if bench.cuda else 0.25
    for name, precision, cost, make in candidates(bench):
        for case in bench.candidate_cases:

            def action(n: str = name, p: str = precision, m: Callable[[Case], Any] = make, c: Case = case) -> None:
                bench.measure("candidates", n, c, lambda: m(c), p)

            if cost < 300 or case == bench.candidate_cases[0]:
                yield "candidates", f"{name} {case.name}", cost * scale, action


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_speed.json / gpu_speed.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variant", default=None, help="only this variant's cases (tiny_* for a CPU smoke test)")
    parser.add_argument("--cases", default=None, help="comma list of variant:BxHxW, overriding the defaults")
    parser.add_argument("--candidate-cases", default=None, help="comma list of variant:BxHxW (default: first case)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument(
        "--baselines",
        default=f"torch,{BASELINE_FAST},{FUSED_FAST}",
        help="comma list of backends timed per case (torch first: fp32 eager, the yardstick) [%(default)s]",
    )
    parser.add_argument(
        "--coldstart",
        default=f"{BASELINE_FAST},torch-aoti-fp16",
        help="comma list of backends started in fresh processes [%(default)s]",
    )
    parser.add_argument("--quick", action="store_true", help="two cases, fewer iterations, cheap candidates only")
    parser.add_argument("--candidates", default=None, help="comma list of candidate name prefixes (default: all)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="start no task past this (estimated)")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--cache-dir", default="models/gpu_speed", help="ONNX/AOTI caches (an ignored folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    parse = lambda text: [Case.parse(t) for t in text.split(",") if t.strip()]  # noqa: E731
    args.cases = parse(args.cases) if args.cases else default_cases(args.variant, args.quick)
    args.candidate_cases = parse(args.candidate_cases) if args.candidate_cases else None
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    args.coldstart = [b.strip() for b in args.coldstart.split(",") if b.strip()]
    args.candidates = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates else None
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    cuda = args.device.startswith("cuda")
    args.iterations = args.iterations or (30 if cuda and not args.quick else 10 if cuda else 3)
    args.warmup = args.warmup or (10 if cuda else 1)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if importlib.util.find_spec("open_clip") is None:
        print("open_clip is not installed: lseg_trt.models cannot build a network; nothing to measure", flush=True)
        return 2
    if args.child:
        child_main(args)
        return 0
    torch.backends.cudnn.benchmark = args.device.startswith("cuda")
    results = Results(args.out, {"device": args.device, "args": " ".join(sys.argv[1:]), "machine": hwinfo.collect()})
    bench = Bench(args, results)
    for section, label, cost, action in tasks(bench):
        if section not in args.only and section != "ceiling":  # every share needs the same run's ceiling
            continue
        if not bench.budget.allows(cost):
            results.add(
                section,
                task=label,
                status=f"skipped: budget ({bench.budget.elapsed():.0f} s used, ~{cost:.0f} s needed)",
            )
            continue
        print(f"--- {section}: {label} ({bench.budget.elapsed():.0f} s elapsed)", flush=True)
        action()
    results.meta["elapsed_s"] = bench.budget.elapsed()
    results.write()
    print(f"done in {bench.budget.elapsed():.0f} s: {args.out}/gpu_speed.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
