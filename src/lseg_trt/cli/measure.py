"""Commands that measure: bench (latency of every backend over sizes) and fidelity (every backend
against torch fp32). Both check their options and their output folder before the first measurement."""

from __future__ import annotations

import argparse
import shlex
import sys

from lseg_trt.cli import Command
from lseg_trt.cli.args import (
    Parser,
    add_backends_args,
    add_device_args,
    add_engine_args,
    add_weight_sources_args,
    backends_from_args,
    batch_size,
    device_from_args,
    engines_from_args,
    non_negative_int,
    out_dir_from,
    positive_int,
    sizes_from,
    weight_sources_from_args,
)


def run_bench(ns: argparse.Namespace) -> int:
    import dataclasses

    from tqdm import tqdm

    from lseg_trt import hwinfo
    from lseg_trt.bench import BenchSettings, bench, defaults_for, matmul_ceiling
    from lseg_trt.bench_report import write_results
    from lseg_trt.models import load_lseg

    device = device_from_args(ns)
    defaults = defaults_for(device)
    sizes = tuple(sizes_from(ns.sizes)) if ns.sizes else defaults["sizes"]
    engines = engines_from_args(ns, cuda_graph=device.startswith("cuda"))
    specs = backends_from_args(ns, defaults["backends"])
    sources = weight_sources_from_args(ns, default=not engines)
    out = out_dir_from(ns.out)
    settings = BenchSettings(
        sizes=sizes,
        batch=ns.batch,
        iterations=ns.iterations or defaults["iterations"],
        warmup=ns.warmup if ns.warmup is not None else defaults["warmup"],
        include_copies=ns.include_copies,
        device=device,
        cache_dir=str(ns.cache),
    )
    ceiling = matmul_ceiling(device) if device.startswith("cuda") and not ns.no_ceiling else None
    rows = []
    with tqdm(total=(len(sources) * len(specs) + len(engines)) * len(sizes), desc="bench", unit="run") as bar:

        def step(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update()

        for weights, variant in sources:
            rows += bench([load_lseg(weights, variant=variant)], specs, settings, on_step=step)
        for source, spec in engines:
            rows += bench([source], [spec], settings, on_step=step)
    command = "lseg-trt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_results(rows, out, hwinfo.collect(), command, dataclasses.asdict(settings), ceiling)
    print(paths.report.markdown.read_text())
    for path in paths:
        print(f"wrote {path}")
    nonfinite = sorted({f"{r.variant}/{r.weights} {r.backend}" for r in rows if r.status == "nonfinite"})
    if nonfinite:
        print(f"features hold NaN or Inf: {', '.join(nonfinite)}", file=sys.stderr)
    return 1 if nonfinite else 0


def run_fidelity(ns: argparse.Namespace) -> int:
    from lseg_trt import hwinfo
    from lseg_trt.compare import markdown
    from lseg_trt.errors import LsegTrtError
    from lseg_trt.fidelity import defaults_for, engine_of, report_record, run_fidelity
    from lseg_trt.images import samples
    from lseg_trt.models import load_lseg
    from lseg_trt.reports import write_report

    device = device_from_args(ns)
    defaults = defaults_for(device)
    sizes = sizes_from(ns.sizes) if ns.sizes else list(defaults["sizes"])
    engines = engines_from_args(ns, cuda_graph=False)  # one-off inputs of many sizes: no graph to replay
    backends = [s.name for s in backends_from_args(ns, "" if engines else defaults["backends"])]
    sources = weight_sources_from_args(ns)
    networks = [load_lseg(weights, variant=variant) for weights, variant in sources]
    unmatched = [str(source.path) for source, _ in engines if not any(engine_of(source, n) for n in networks)]
    if unmatched:
        raise LsegTrtError(f"--engine {', '.join(unmatched)}: built from none of the weights given (--weights)")
    out = out_dir_from(ns.out)
    comparisons, skipped = [], {}
    for lseg in networks:
        own = [(source, spec) for source, spec in engines if engine_of(source, lseg)]
        found, missing = run_fidelity(lseg, backends, samples(), sizes, device, ns.cache, out, own)
        for source, spec in own:  # one engine per backend name and network (run_fidelity checks)
            _keep_verdict(source, [c for c in found if c.candidate == spec.name])
        comparisons += found
        skipped.update(missing)
    if not comparisons:
        raise LsegTrtError(
            "no backend besides torch fp32 could run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    rows = [c.row() for c in comparisons]
    paths = write_report(out, "fidelity", markdown(comparisons, "lseg-trt fidelity"), rows,
                         report_record(hwinfo.collect(), skipped), "comparisons")  # fmt: skip
    print(paths.markdown.read_text())
    for backend, reason in skipped.items():
        print(f"not run: {backend}: {reason}")
    for path in paths:
        print(f"wrote {path}")
    failed = [c for c in comparisons if c.failed]
    if failed:
        print(f"{len(failed)} comparison(s) below tolerance or not finite", file=sys.stderr)
    return 1 if failed else 0


def _keep_verdict(source, comparisons: list) -> None:  # noqa: ANN001 - ModelSource, [Comparison]
    """Beside the engine, whether it passed at every size and photo: `--backend auto` runs only engines that did."""
    from lseg_trt.engines import record_fidelity

    if not comparisons:  # it could not run here: nothing was checked
        return
    worst = min(comparisons, key=lambda c: c.metrics.pixel_cosine_min)
    record_fidelity(
        source.path,
        source.record,
        passed=not any(c.failed for c in comparisons),
        sizes=sorted({c.size for c in comparisons}),
        worst={"image": worst.image, "size": worst.size, "tolerance": worst.tolerance, **worst.metrics.to_dict()},
    )


def _bench_args(p: Parser) -> None:
    add_weight_sources_args(p)
    p.add_argument("--sizes", nargs="+", help="N or HxW; default 256 320 on CPU, 256..1024 on GPU")
    add_backends_args(p, "e.g. torch,torch-fp16+graph (default depends on the device; none with --engine)")
    add_engine_args(p, "timed as tensorrt in its own precision, with CUDA graphs on a GPU")
    p.add_argument("--batch", type=batch_size, default=1, help="[%(default)s]")
    p.add_argument("--iterations", type=positive_int, help="timed iterations (default 5 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=non_negative_int, help="discarded iterations (default 1 on CPU, 10 on GPU)")
    p.add_argument("--include-copies", action="store_true", help="time host->device->host copies too")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bf16 GEMM ceiling on GPU")
    add_device_args(p)
    p.add_argument("--out", default="outputs/bench", help="result folder [%(default)s]")


def _fidelity_args(p: Parser) -> None:
    add_weight_sources_args(p)
    add_backends_args(p, "compared with torch fp32 (default depends on the device; none with --engine)")
    add_engine_args(p, "compared with torch fp32 of the --weights it was built from")
    p.add_argument("--sizes", nargs="+", help="default 256 256x352 on CPU, 480 480x640 1024 on GPU")
    add_device_args(p)
    p.add_argument("--out", default="outputs/fidelity", help="report folder [%(default)s]")


COMMANDS = {
    "bench": Command("latency of every backend over sizes: Markdown, CSV, JSON, PNG", _bench_args, run_bench),
    "fidelity": Command(
        "every backend vs torch fp32 on sample photos; non-zero exit on failure", _fidelity_args, run_fidelity
    ),
}
