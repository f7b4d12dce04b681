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


Command = tuple[str, Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]


def _info_args(p: argparse.ArgumentParser) -> None:
    add_weights_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _hwinfo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="JSON instead of a Markdown table")


COMMANDS: dict[str, Command] = {
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
