"""The `lseg-trt` command: each sub-command is a thin call into the package's modules.

User errors (LsegTrtError) end with one line on stderr and exit code 2; anything else is a bug and
keeps its traceback. Heavy imports happen inside the sub-command that needs them, so `--help` is fast
and works without the optional packages.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from lseg_trt.errors import LsegTrtError

EXIT_USER_ERROR = 2
log = logging.getLogger("lseg_trt")


# ---- shared argument groups -------------------------------------------------------------------------


def add_weights_args(parser: argparse.ArgumentParser, default: str = "random") -> None:
    group = parser.add_argument_group("weights", "which LSeg network to use")
    group.add_argument(
        "--weights",
        default=default,
        help="lang-seg .ckpt, plain state-dict file, or 'random' (seeded random weights: real latency, "
        "no semantics) [%(default)s]",
    )
    group.add_argument(
        "--variant",
        default=None,
        help="vit_l16 or rn101_zs; detected from the checkpoint when omitted, vit_l16 for 'random'",
    )


def load_from_args(ns: argparse.Namespace, device: str = "cpu"):  # noqa: ANN201 - returns LSeg (lazy import)
    from lseg_trt.models import load_lseg

    return load_lseg(ns.weights, variant=ns.variant, device=device)


# ---- sub-commands -----------------------------------------------------------------------------------


def cmd_info(ns: argparse.Namespace) -> int:
    from lseg_trt.info import describe, to_text

    details = describe(load_from_args(ns))
    print(json.dumps(details, indent=2) if ns.json else to_text(details))
    return 0


def cmd_hwinfo(ns: argparse.Namespace) -> int:
    from lseg_trt import hwinfo

    info = hwinfo.collect()
    print(json.dumps(info, indent=2) if ns.json else hwinfo.to_markdown(info))
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from lseg_trt.export import onnx_from_lseg, verify_onnx

    lseg = load_from_args(ns)
    path = onnx_from_lseg(lseg, ns.out, ns.precision, ns.opset)
    if ns.no_verify:
        print(path)
        return 0
    results = verify_onnx(path, lseg, ns.precision)
    print("| size | pixel cosine min | pixel cosine mean | max-abs | verdict |\n|---|---|---|---|---|")
    for r in results:
        m, verdict = r.metrics, "ok" if r.passed else "FAIL"
        size = f"{r.size[0]}x{r.size[1]}"
        print(f"| {size} | {m.pixel_cosine_min:.6f} | {m.pixel_cosine_mean:.6f} | {m.max_abs:.2e} | {verdict} |")
    if not all(r.passed for r in results):
        path.unlink()
        raise LsegTrtError(f"{path.name} does not match PyTorch within tolerance; the file was removed")
    print(path)
    return 0


def cmd_build(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from lseg_trt.tensorrt.builder import engine_from_onnx
    from lseg_trt.tensorrt.options import BuildOptions, Profile, parse_shape

    options = BuildOptions(
        fp16=ns.fp16,
        sparse=ns.sparse,
        workspace=ns.workspace,
        profile=Profile(parse_shape(ns.min_shape), parse_shape(ns.opt_shape), parse_shape(ns.max_shape)),
        timing_cache=Path(ns.timing_cache) if ns.timing_cache else None,
        disable_timing_cache=ns.disable_timing_cache,
        gpu_fallback=ns.gpu_fallback,
        debug=ns.debug,
        flavour=ns.flavour,
    )
    print(engine_from_onnx(ns.onnx, options, ns.out))
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    import torch
    from tqdm import tqdm

    from lseg_trt import hwinfo
    from lseg_trt.bench import BenchSettings, bench, matmul_ceiling
    from lseg_trt.bench_report import write_results
    from lseg_trt.models import load_lseg
    from lseg_trt.runners import parse_backend
    from lseg_trt.sizes import parse_size

    device = _device(ns.device)
    on_gpu = device.startswith("cuda")
    defaults = GPU_BENCH_DEFAULTS if on_gpu else CPU_BENCH_DEFAULTS
    sizes = tuple(parse_size(s) for s in (ns.sizes or defaults["sizes"]))
    specs = [parse_backend(b) for b in _split(ns.backends or defaults["backends"])]
    settings = BenchSettings(
        sizes=sizes,
        batch=ns.batch,
        iterations=ns.iterations or defaults["iterations"],
        warmup=ns.warmup if ns.warmup is not None else defaults["warmup"],
        include_copies=ns.include_copies,
        device=device,
        cache_dir=ns.cache,
    )
    sources = _weight_sources(ns)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    ceiling = matmul_ceiling(device) if on_gpu and not ns.no_ceiling else None
    total = len(sources) * len(specs) * len(sizes)
    rows = []
    with tqdm(total=total, desc="bench", unit="run") as bar:
        for weights, variant in sources:
            lseg = load_lseg(weights, variant=variant)
            if not lseg.semantic:
                log.info("%s: random weights, latency only", lseg.variant)
            rows += bench([lseg], specs, settings, on_step=lambda label: (bar.set_postfix_str(label), bar.update()))
    command = "lseg-trt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_results(rows, ns.out, hwinfo.collect(), command, dataclasses.asdict(settings), ceiling)
    print(paths[2].read_text())
    for path in paths:
        print(f"wrote {path}")
    return 0


CPU_BENCH_DEFAULTS = {"sizes": ["256", "320"], "backends": "torch,onnxruntime", "iterations": 5, "warmup": 1}
GPU_BENCH_DEFAULTS = {
    "sizes": ["256", "320", "384", "480", "640", "768", "1024"],
    "backends": "torch,torch-fp16,torch-fp16+graph,torch-compile-fp16,torch-compile-fp16+graph,tensorrt",
    "iterations": 50,
    "warmup": 10,
}


def _split(values: list[str] | str) -> list[str]:
    items = values if isinstance(values, list) else [values]
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _weight_sources(ns: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(weights, variant) pairs: a seed-style folder (bench only), explicit --weights, or random for each
    of --variants."""
    from pathlib import Path

    if getattr(ns, "weights_dir", None):
        root = Path(ns.weights_dir)
        folders = {"ViT": "vit_l16", "Resnet": "rn101_zs"}
        found = [(str(p), variant) for sub, variant in folders.items() for p in sorted((root / sub).glob("*.ckpt"))]
        if not found:
            raise LsegTrtError(f"no checkpoints under {root}/ViT/*.ckpt or {root}/Resnet/*.ckpt")
        return found
    if ns.weights:
        return [(w, ns.variant) for w in ns.weights]
    return [("random", v) for v in _split(ns.variants)]


def _device(name: str) -> str:
    import torch

    return name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_extract(ns: argparse.Namespace) -> int:
    import json as _json
    from pathlib import Path

    from lseg_trt.extract import FeatureKey, extract
    from lseg_trt.images import list_images
    from lseg_trt.runners import OnnxRuntimeRunner, make_runner, parse_backend
    from lseg_trt.sizes import parse_size

    spec = parse_backend(ns.backend)
    device = _device(ns.device)
    sizes = [parse_size(s) for s in ns.sizes]
    images = list_images(ns.images)
    if ns.onnx or ns.engine:
        from lseg_trt.export import read_metadata

        if ns.engine:
            from lseg_trt.tensorrt.runner import TensorRTRunner

            runner = TensorRTRunner(ns.engine, spec, device)
            meta = _json.loads(Path(ns.engine).with_suffix(".json").read_text()).get("onnx_metadata") or {}
        else:
            runner = OnnxRuntimeRunner(ns.onnx, spec, device)
            meta = read_metadata(ns.onnx)
        if "mean" not in meta:
            raise LsegTrtError("the model carries no lseg-trt metadata (variant, mean/std); use --weights instead")
        variant, weights = meta["variant"], Path(meta["weights"]).stem
        mean, std = tuple(_json.loads(meta["mean"])), tuple(_json.loads(meta["std"]))
    else:
        lseg = load_from_args(ns)
        runner = make_runner(spec, lseg, device, ns.cache)
        variant, weights, mean, std = lseg.variant, lseg.weights_name, lseg.mean, lseg.std
    key = FeatureKey(spec.name, variant, weights, "", "")
    with runner:
        written = extract(runner, images, sizes, key, mean, std, Path(ns.out), ns.batch, ns.fp16_storage)
    print(f"wrote {len(written)} feature maps under {ns.out}/{spec.name}/{variant}/{weights}/")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from lseg_trt.fidelity import compare_tree, tree_pictures, write_report

    comparisons = compare_tree(Path(ns.tree), ns.by, ns.reference)
    paths = write_report(comparisons, Path(ns.out), f"compare_{ns.by}")
    if ns.by == "backends":
        tree_pictures(Path(ns.tree), Path(ns.out), ns.reference)
    print(paths[0].read_text())
    for path in paths:
        print(f"wrote {path}")
    nonfinite = sum(c.metrics.nonfinite for c in comparisons)
    failed = [c for c in comparisons if c.passed is False]
    if nonfinite:
        print(f"{nonfinite} NaN/Inf values in the compared features", file=sys.stderr)
    return 1 if failed or nonfinite else 0


def cmd_fidelity(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from lseg_trt import hwinfo
    from lseg_trt.fidelity import TOLERANCES, run_fidelity, write_report
    from lseg_trt.images import samples
    from lseg_trt.models import load_lseg
    from lseg_trt.sizes import parse_size

    device = _device(ns.device)
    on_gpu = device.startswith("cuda")
    sizes = [parse_size(s) for s in (ns.sizes or (["480", "480x640", "1024"] if on_gpu else ["256", "256x352"]))]
    backends = _split(ns.backends or (FIDELITY_GPU_BACKENDS if on_gpu else FIDELITY_CPU_BACKENDS))
    out = Path(ns.out)
    comparisons, skipped = [], {}
    for weights, variant in _weight_sources(ns):
        lseg = load_lseg(weights, variant=variant)
        found, missing = run_fidelity(lseg, backends, samples(), sizes, device, ns.cache, out)
        comparisons += found
        skipped.update(missing)
    if not comparisons:
        raise LsegTrtError(
            "no backend besides torch fp32 could run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    extra = {"machine": hwinfo.collect(), "tolerances": TOLERANCES, "not_run": skipped}
    paths = write_report(comparisons, out, "fidelity", extra)
    print(paths[0].read_text())
    for backend, reason in skipped.items():
        print(f"not run: {backend}: {reason}")
    for path in paths:
        print(f"wrote {path}")
    failed = [c for c in comparisons if not c.passed]
    if failed:
        print(f"{len(failed)} comparison(s) below tolerance", file=sys.stderr)
    return 1 if failed else 0


FIDELITY_CPU_BACKENDS = "torch-bf16,onnxruntime,onnxruntime-fp16"
FIDELITY_GPU_BACKENDS = "torch-fp16,torch-bf16,torch-compile,torch-compile-fp16,onnxruntime,tensorrt,tensorrt-fp32"


def cmd_segment(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from lseg_trt.figures import save_segmentation
    from lseg_trt.images import load_image
    from lseg_trt.segment import parse_labels, segment_labels

    labels = parse_labels(ns.labels)
    image = load_image(ns.image)
    lseg, features, size = _features_for_demo(ns, image)
    seg = segment_labels(features, lseg, labels, (image.height, image.width))
    out = Path(ns.out)
    title = f"{lseg.variant} / {lseg.weights_name}, {ns.backend}, input {size[0]}x{size[1]}"
    if not lseg.semantic:
        title += " (RANDOM WEIGHTS: no semantics)"
    save_segmentation(image, seg, out, title)
    seg.save(out.with_suffix(".labels.npy"))
    for name, share in seg.shares():
        print(f"{name:>20s}  {100 * share:5.1f} %")
    print(f"wrote {out} and {out.with_suffix('.labels.npy')}")
    return 0


def cmd_wordfree(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from lseg_trt.figures import save_segmentation
    from lseg_trt.images import load_image
    from lseg_trt.segment import segment_wordfree, vocabulary, vocabulary_embeddings

    image = load_image(ns.image)
    lseg, features, size = _features_for_demo(ns, image)
    words = vocabulary(lseg)
    with tqdm(total=len(words), desc="vocabulary", unit="word") as bar:
        vocab = vocabulary_embeddings(lseg, Path(ns.cache) / "vocab", progress=bar.update)
    seg = segment_wordfree(features, vocab, words)
    out = Path(ns.out)
    title = f"word-free: {lseg.variant} / {lseg.weights_name}, input {size[0]}x{size[1]}"
    if not lseg.semantic:
        title += " (RANDOM WEIGHTS: no semantics)"
    save_segmentation(image, seg, out, title, legend=ns.legend)
    seg.save(out.with_suffix(".labels.npy"))
    for name, share in seg.shares()[: ns.legend]:
        print(f"{name!r:>20s}  {100 * share:5.1f} %")
    print(f"{len(seg.names)} distinct tokens; wrote {out}")
    return 0


def _features_for_demo(ns: argparse.Namespace, image):  # noqa: ANN001, ANN202
    from lseg_trt.images import default_size, preprocess
    from lseg_trt.runners import make_runner, parse_backend
    from lseg_trt.sizes import parse_size

    lseg = load_from_args(ns)
    size = parse_size(ns.size) if ns.size else default_size(image)
    x = preprocess(image, size, lseg.mean, lseg.std)
    with make_runner(parse_backend(ns.backend), lseg, _device(ns.device), ns.cache) as runner:
        features = runner.infer(x.to(runner.device)).float().cpu().clone()
    return lseg, features, size


Command = tuple[str, Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]


def _info_args(p: argparse.ArgumentParser) -> None:
    add_weights_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _hwinfo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="JSON instead of a Markdown table")


def _export_args(p: argparse.ArgumentParser) -> None:
    add_weights_args(p)
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="[%(default)s]")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset [%(default)s]")
    p.add_argument("--out", default="models/onnx", help="output folder [%(default)s]")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, help="ONNX model (ideally from `lseg-trt export`)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="fp16 engine [on]")
    p.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=True, help="SPARSE_WEIGHTS [on]")
    p.add_argument("--workspace", type=int, default=1 << 29, help="workspace bytes [%(default)s]")
    p.add_argument("--min-shape", default="1x3x256x256", help="profile minimum BxCxHxW [%(default)s]")
    p.add_argument("--opt-shape", default="1x3x480x480", help="profile optimum [%(default)s]")
    p.add_argument("--max-shape", default="1x3x1024x1024", help="profile maximum [%(default)s]")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--timing-cache", default=None, help="timing cache file, read and updated")
    cache.add_argument("--disable-timing-cache", action="store_true", help="DISABLE_TIMING_CACHE")
    p.add_argument("--gpu-fallback", action="store_true", help="GPU_FALLBACK (a DLA option)")
    p.add_argument("--debug", action="store_true", help="DEBUG: sync after every layer; not for benchmarks")
    p.add_argument("--flavour", choices=("auto", "tensorrt", "tensorrt-rtx"), default="auto", help="[%(default)s]")
    p.add_argument("--out", default="models/engines", help="output folder [%(default)s]")


def _bench_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights", "default: random weights for each of --variants")
    g.add_argument("--weights", action="append", help="checkpoint (repeatable) or 'random'")
    g.add_argument("--weights-dir", help="folder laid out like the seed: ViT/*.ckpt, Resnet/*.ckpt")
    g.add_argument("--variant", default=None, help="force the variant of --weights")
    g.add_argument("--variants", default="vit_l16,rn101_zs", help="for random weights [%(default)s]")
    p.add_argument("--sizes", nargs="+", help="N or HxW; default 256 320 on CPU, 256..1024 on GPU")
    p.add_argument("--backends", action="append", help="comma list, e.g. torch,torch-fp16+graph (see runners)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iterations", type=int, help="timed iterations (default 5 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=int, help="discarded iterations (default 1 on CPU, 10 on GPU)")
    p.add_argument("--include-copies", action="store_true", help="time host->device->host copies too")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [%(default)s]")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bf16 GEMM ceiling on GPU")
    p.add_argument("--cache", default="models", help="ONNX / engine cache folder [%(default)s]")
    p.add_argument("--out", default="outputs/bench", help="result folder [%(default)s]")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [%(default)s]")
    p.add_argument("--cache", default="models", help="ONNX / engine / vocabulary cache folder [%(default)s]")


def _extract_args(p: argparse.ArgumentParser) -> None:
    add_weights_args(p)
    p.add_argument("--backend", default="torch", help="runner name, e.g. torch, onnxruntime, tensorrt [%(default)s]")
    p.add_argument("--onnx", help="run this ONNX model (with --backend onnxruntime[-fp16])")
    p.add_argument("--engine", help="run this TensorRT engine (with --backend tensorrt[-fp32])")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--sizes", nargs="+", default=["480"], help="N or HxW [%(default)s]")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--fp16-storage", action="store_true", help="store float16 .npy (default float32)")
    p.add_argument("--out", default="outputs/feature_maps", help="tree root [%(default)s]")
    _device_args(p)


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree", default="outputs/feature_maps", help="root written by extract [%(default)s]")
    p.add_argument("--by", choices=("backends", "checkpoints", "sizes"), default="backends")
    p.add_argument("--reference", default="torch", help="reference backend for --by backends [%(default)s]")
    p.add_argument("--out", default="outputs/compare", help="report folder [%(default)s]")


def _fidelity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights", "default: random weights for each of --variants")
    g.add_argument("--weights", action="append", help="checkpoint (repeatable)")
    g.add_argument("--variant", default=None)
    g.add_argument("--variants", default="vit_l16,rn101_zs")
    p.add_argument("--backends", action="append", help="comma list compared with torch fp32")
    p.add_argument("--sizes", nargs="+", help="default 256 256x352 on CPU, 480 480x640 1024 on GPU")
    p.add_argument("--out", default="outputs/fidelity", help="report folder [%(default)s]")
    _device_args(p)


def _demo_args(p: argparse.ArgumentParser) -> None:
    add_weights_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--backend", default="torch", help="runner for the image features [%(default)s]")
    p.add_argument("--size", help="network input N or HxW (default: the image's size rounded to 32)")
    _device_args(p)


def _segment_args(p: argparse.ArgumentParser) -> None:
    _demo_args(p)
    p.add_argument("--labels", default="dog, grass, other", help="comma-separated [%(default)s]")
    p.add_argument("--out", default="outputs/segment.png")


def _wordfree_args(p: argparse.ArgumentParser) -> None:
    _demo_args(p)
    p.add_argument("--legend", type=int, default=20, help="words in the legend [%(default)s]")
    p.add_argument("--out", default="outputs/wordfree.png")


COMMANDS: dict[str, Command] = {
    "extract": ("features to .npy trees", cmd_extract, _extract_args),
    "compare": ("compare feature trees in float64: Markdown, CSV, PNG", cmd_compare, _compare_args),
    "fidelity": (
        "every backend vs torch fp32 on sample photos; non-zero exit on failure",
        cmd_fidelity,
        _fidelity_args,
    ),
    "segment": ("label segmentation picture", cmd_segment, _segment_args),
    "wordfree": ("per-pixel best token of the whole CLIP vocabulary", cmd_wordfree, _wordfree_args),
    "bench": ("latency of every backend over sizes: Markdown, CSV, JSON, PNG", cmd_bench, _bench_args),
    "export": ("checkpoint -> ONNX (dynamic batch/H/W), verified with ONNX Runtime", cmd_export, _export_args),
    "build": ("ONNX -> TensorRT engine + JSON sidecar (reused only when it matches)", cmd_build, _build_args),
    "info": ("variant, parameter counts and checkpoint key report", cmd_info, _info_args),
    "hwinfo": ("the machine: CPU, RAM, GPU, driver, CUDA, library versions", cmd_hwinfo, _hwinfo_args),
}


def build_parser() -> argparse.ArgumentParser:
    from lseg_trt import __version__

    parser = argparse.ArgumentParser(
        prog="lseg-trt",
        description="LSeg image encoders to ONNX and TensorRT: export, build, benchmark, fidelity, demos.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, func, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(name)-22s | %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return ns.func(ns)
    except LsegTrtError as e:
        print(f"lseg-trt {ns.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"lseg-trt {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
