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


COMMANDS: dict[str, Command] = {
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
