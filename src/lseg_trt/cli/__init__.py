"""The `lseg-trt` command: each sub-command is a few calls into the package's modules.

User errors (LsegTrtError, malformed options included) end with one line on stderr and exit code 2;
anything else is a bug and keeps its traceback. Command modules import nothing heavy at the top, so
`--help` is fast and works without the optional packages; a command module that fails to import
takes down only its own commands.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lseg_trt.cli.args import Parser
from lseg_trt.errors import LsegTrtError

EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[Parser], None]
    run: Callable[..., int]


# command family modules, each with a COMMANDS dict; the order here is the order in --help
FAMILIES = (
    "lseg_trt.cli.extract",
    "lseg_trt.cli.compare",
    "lseg_trt.cli.measure",
    "lseg_trt.cli.demos",
    "lseg_trt.cli.models",
)


def commands() -> dict[str, Command]:
    found: dict[str, Command] = {}
    for family in FAMILIES:
        found.update(importlib.import_module(family).COMMANDS)
    return found


def build_parser() -> Parser:
    from lseg_trt._version import __version__

    parser = Parser(
        prog="lseg-trt",
        description="LSeg image encoders to ONNX and TensorRT: export, build, benchmark, fidelity, extraction, demos.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands().items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in argv if not a.startswith("-")), "")
    try:
        ns = build_parser().parse_args(argv)
    except LsegTrtError as e:
        print(f"lseg-trt{' ' + name if name else ''}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(name)-22s | %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    try:
        return ns.run(ns)
    except LsegTrtError as e:
        print(f"lseg-trt {ns.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"lseg-trt {ns.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script (and `python -m lseg_trt.cli`): `main`, then `leave`."""
    leave(main())


def leave(code: int) -> None:
    """Exit with `code`, skipping the interpreter's teardown where nothing can still be lost.

    Everything a command writes is durable before it returns (renamed into place, fsynced), and stdout,
    stderr and logging are flushed here. What is left is freeing torch's thousands of modules, the CUDA
    context and Inductor's compile workers: 1.3-1.7 s for a bare `import torch._inductor.compile_fx` on
    the 2-core machine, and part of the 12 s from last write to exit that issue 24 measured on an H100.
    The normal exit stays where its teardown does work: a thread other than this one still running (Python
    waits for non-daemon threads), child processes, or Ray (its exit handler stops a local cluster).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if busy or "ray" in sys.modules or _has_children():
        sys.exit(code)
    from lseg_trt import compile_workers

    compile_workers.stop()
    logging.shutdown()
    os._exit(code)


def _has_children() -> bool:
    if "multiprocessing" not in sys.modules:
        return False
    import multiprocessing

    return bool(multiprocessing.active_children())
