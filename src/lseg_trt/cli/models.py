"""Commands about the model itself: info, hwinfo, export (checkpoint -> ONNX), build (ONNX -> engine)."""

from __future__ import annotations

import argparse
import json

from lseg_trt.cli import Command
from lseg_trt.cli.args import Parser, add_weights_args, lseg_from_args, out_dir_from


def run_info(ns: argparse.Namespace) -> int:
    from lseg_trt.info import describe, to_text

    details = describe(lseg_from_args(ns))
    print(json.dumps(details, indent=2) if ns.json else to_text(details))
    return 0


def run_hwinfo(ns: argparse.Namespace) -> int:
    from lseg_trt import hwinfo

    info = hwinfo.collect()
    print(json.dumps(info, indent=2) if ns.json else hwinfo.to_markdown(info))
    return 0


def run_export(ns: argparse.Namespace) -> int:
    from lseg_trt.export import VerificationError, onnx_from_lseg

    out = out_dir_from(ns.out)
    lseg = lseg_from_args(ns)
    try:
        exported = onnx_from_lseg(lseg, out, ns.precision, ns.opset, verify=not ns.no_verify, io_names=ns.io_names)
    except VerificationError as e:
        print(e.verification.markdown())
        raise
    if exported.verification is not None:
        print(exported.verification.markdown())
    print(exported.path)
    return 0


def run_build(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from lseg_trt.engines import engine_for
    from lseg_trt.tensorrt.options import BuildOptions, Profile, parse_enum_names, parse_shape

    options = BuildOptions(
        fp16=ns.fp16,
        sparse=ns.sparse,
        tf32=ns.tf32,
        workspace=ns.workspace,
        profile=Profile(parse_shape(ns.min_shape), parse_shape(ns.opt_shape), parse_shape(ns.max_shape)),
        timing_cache=Path(ns.timing_cache) if ns.timing_cache else None,
        disable_timing_cache=ns.disable_timing_cache,
        gpu_fallback=ns.gpu_fallback,
        debug=ns.debug,
        flavour=ns.flavour,
        tactic_sources=parse_enum_names("--tactic-sources", ns.tactic_sources)
        if ns.tactic_sources is not None
        else None,
        preview_features=parse_enum_names("--preview-features", ns.preview_features),
    )
    options.validate()
    print(engine_for(Path(ns.onnx), options, out_dir_from(ns.out)))
    return 0


def _info_args(p: Parser) -> None:
    add_weights_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _hwinfo_args(p: Parser) -> None:
    p.add_argument("--json", action="store_true", help="JSON instead of a Markdown table")


def _export_args(p: Parser) -> None:
    from lseg_trt.export import DEFAULT_OPSET, IO_NAMES

    add_weights_args(p)
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="[%(default)s]")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset [%(default)s]")
    p.add_argument(
        "--io-names",
        choices=tuple(IO_NAMES),
        default="lseg-trt",
        help="tensor names: lseg-trt = image/features, seed = input/output (the seed's C++ tester) [%(default)s]",
    )
    p.add_argument("--out", default="models/onnx", help="output folder [%(default)s]")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")


def _build_args(p: Parser) -> None:
    from lseg_trt.tensorrt.options import DEFAULT_WORKSPACE

    p.add_argument("--onnx", required=True, help="ONNX model (ideally from `lseg-trt export`)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="fp16 engine [on]")
    p.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=True, help="SPARSE_WEIGHTS [on]")
    p.add_argument(
        "--tf32", action=argparse.BooleanOptionalAction, default=False, help="allow TF32 in fp32 layers [off]"
    )
    p.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE, help="workspace bytes [%(default)s]")
    p.add_argument("--min-shape", default="1x3x256x256", help="profile minimum BxCxHxW [%(default)s]")
    p.add_argument("--opt-shape", default="1x3x480x480", help="profile optimum [%(default)s]")
    p.add_argument("--max-shape", default="1x3x1024x1024", help="profile maximum [%(default)s]")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--timing-cache", default=None, help="timing cache file, read and updated")
    cache.add_argument("--disable-timing-cache", action="store_true", help="DISABLE_TIMING_CACHE")
    p.add_argument("--gpu-fallback", action="store_true", help="GPU_FALLBACK (a DLA option)")
    p.add_argument("--debug", action="store_true", help="DEBUG: sync after every layer; not for benchmarks")
    p.add_argument("--flavour", choices=("auto", "tensorrt", "tensorrt-rtx"), default="auto", help="[%(default)s]")
    p.add_argument(
        "--tactic-sources",
        help="TacticSource names, comma-separated (e.g. cublas,cudnn,jit_convolutions), or none for TensorRT's "
        "own kernels only; default: the flavour's default set",
    )
    p.add_argument(
        "--preview-features",
        default="none",
        help="PreviewFeature names to turn on, comma-separated (TensorRT 8.5: faster_dynamic_shapes_0805, on by "
        "default from 8.6) [%(default)s]",
    )
    p.add_argument("--out", default="models/engines", help="output folder [%(default)s]")


COMMANDS = {
    "export": Command("checkpoint -> ONNX (dynamic batch/H/W), verified with ONNX Runtime", _export_args, run_export),
    "build": Command("ONNX -> TensorRT engine + JSON sidecar (reused only when it matches)", _build_args, run_build),
    "info": Command("variant, parameter counts and checkpoint key report", _info_args, run_info),
    "hwinfo": Command("the machine: CPU, RAM, GPU, driver, CUDA, library versions", _hwinfo_args, run_hwinfo),
}
