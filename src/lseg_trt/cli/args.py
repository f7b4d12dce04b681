"""Argument groups shared by the sub-commands: each `add_*` puts options on a parser, and its
`*_from_args` twin turns the parsed namespace into checked values, so no command re-reads raw options.

Checks that need no heavy import happen here, before any measurement starts: a bad `--batch` or an
`--out` that cannot be written must fail in a second, not after an hour of benchmarking.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from lseg_trt.errors import LsegTrtError


class UsageError(LsegTrtError):
    """A malformed command line (argparse's own complaints), reported like every other user error."""


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so `main` reports one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


MAX_BATCH = 4096  # far past any GPU's memory at the smallest size; beyond it a typo, not a batch


def batch_size(text: str) -> int:
    value = _int_at_least(text, 1)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{value} is more than {MAX_BATCH} images per batch")
    return value


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def port_number(text: str) -> int:
    value = _int_at_least(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1 to 65535)")
    return value


# ---- model: weights | ONNX | engine ------------------------------------------------------------------


def add_weights_args(parser: argparse.ArgumentParser, *, files: bool = False) -> None:
    """`--weights`/`--variant`; with `files`, also `--onnx` and `--engine`, exclusive with `--weights`."""
    group = parser.add_argument_group("model", "which LSeg network to run")
    source = group.add_mutually_exclusive_group() if files else group
    source.add_argument(
        "--weights",
        default=None,
        help="lang-seg .ckpt, plain state-dict file, or 'random' (seeded random weights: real latency, "
        "no semantics) [random]",
    )
    if files:
        source.add_argument("--onnx", help="an ONNX model from `lseg-trt export` (runs with onnxruntime or tensorrt)")
        source.add_argument("--engine", help="a TensorRT engine from `lseg-trt build` (runs with tensorrt)")
    group.add_argument(
        "--variant", default=None, help="vit_l16 or rn101_zs; detected from the checkpoint, vit_l16 for 'random'"
    )


def lseg_from_args(ns: argparse.Namespace, device: str = "cpu"):  # noqa: ANN201 - LSeg (lazy import)
    from lseg_trt.models import load_lseg

    return load_lseg(ns.weights or "random", variant=ns.variant, device=device)


def source_from_args(ns: argparse.Namespace):  # noqa: ANN201 - ModelSource (lazy import)
    from lseg_trt.artifacts import open_model

    if ns.onnx or ns.engine:
        if ns.variant:
            raise LsegTrtError("--variant applies to --weights; ONNX files and engines carry their own")
        return open_model(onnx=ns.onnx, engine=ns.engine)
    return open_model(weights=ns.weights or "random", variant=ns.variant)


# ---- several weights (bench, fidelity) ---------------------------------------------------------------


def add_weight_sources_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("weights", "default: random weights for each of --variants")
    group.add_argument("--weights", action="append", help="checkpoint (repeatable) or 'random'")
    group.add_argument("--weights-dir", help="folder laid out like the seed: ViT/*.ckpt, Resnet/*.ckpt")
    group.add_argument("--variant", default=None, help="force the variant of --weights")
    group.add_argument("--variants", default="vit_l16,rn101_zs", help="for random weights [%(default)s]")


def add_engine_args(parser: argparse.ArgumentParser, role: str) -> None:
    parser.add_argument(
        "--engine", action="append", default=[], help=f"a TensorRT engine from `lseg-trt build` (repeatable): {role}"
    )


def engines_from_args(ns: argparse.Namespace, cuda_graph: bool) -> list:  # noqa: ANN201 - [(ModelSource, BackendSpec)]
    """Each --engine opened (sidecar checked) with the backend that runs it: `tensorrt` in the engine's own
    precision, replaying CUDA graphs where asked (on a GPU, the fastest way to run it)."""
    from lseg_trt.artifacts import open_model
    from lseg_trt.backends import backend_for

    engines = []
    for path in ns.engine:
        source = open_model(engine=path)
        spec = backend_for(source)
        engines.append((source, replace(spec, cuda_graph=cuda_graph)))
    return engines


SEED_FOLDERS = {"ViT": "vit_l16", "Resnet": "rn101_zs"}


def weight_sources_from_args(ns: argparse.Namespace, default: bool = True) -> list[tuple[str, str | None]]:
    """(weights, variant) pairs: a seed-style folder, explicit --weights, or (when `default`) random for each
    of --variants."""
    if ns.weights_dir:
        root = Path(ns.weights_dir)
        if not root.is_dir():
            raise LsegTrtError(f"--weights-dir {root} is not a folder")
        found = [(str(p), v) for sub, v in SEED_FOLDERS.items() for p in sorted((root / sub).glob("*.ckpt"))]
        if not found:
            raise LsegTrtError(f"no checkpoints under {root}/ViT/*.ckpt or {root}/Resnet/*.ckpt")
        return found
    if ns.weights:
        return [(w, ns.variant) for w in ns.weights]
    if not default:
        return []
    from lseg_trt.models import get_config

    variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    if not variants:
        raise LsegTrtError(f"--variants {ns.variants!r} names no variant")
    return [("random", get_config(v).name) for v in variants]


# ---- device, sizes, backends -------------------------------------------------------------------------


def add_device_args(parser: argparse.ArgumentParser, cache_help: str = "ONNX / engine cache folder") -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [%(default)s]")
    parser.add_argument("--cache", default="models", type=_cache_dir, help=f"{cache_help} [%(default)s]")


def _cache_dir(text: str) -> Path:
    """The cache folder, checked before any work; made only when something is cached."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a folder")
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {existing}")
    return path


def device_from_args(ns: argparse.Namespace) -> str:
    """`auto` -> cuda if present, else cpu; anything else must name a device this machine has."""
    from lseg_trt.backends.base import checked_device, default_device

    name = ns.device.strip()
    return default_device() if name == "auto" else checked_device(name, "--device", "auto, cpu, cuda or cuda:N")


def sizes_from(texts: list[str] | tuple[str, ...]) -> list[tuple[int, int]]:
    from lseg_trt.sizes import parse_size

    return list(dict.fromkeys(parse_size(t) for t in texts))


def add_backends_args(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--backends", action="append", help=f"{help_text}; comma list, repeatable")


def backends_from_args(ns: argparse.Namespace, default: str) -> list:  # noqa: ANN201 - list[BackendSpec]
    from lseg_trt.backends import parse_backends

    if ns.backends is None and not default:
        return []
    return parse_backends(",".join(ns.backends) if ns.backends is not None else default)


# ---- downstream recipes ------------------------------------------------------------------------------

RECIPE_FIELDS = ("base_size", "crop", "stride", "scales", "flip", "input_size", "output_size")


def image_size(text: str) -> tuple[int, int]:
    """`HxW` (or `N`) of positive numbers; no multiple-of-32 rule: images and outputs take any size."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts] * (2 if len(parts) == 1 else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or HxW") from None
    if len(numbers) != 2 or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or HxW of positive numbers")
    return numbers[0], numbers[1]


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """`--recipe NAME` and its overrides; the checks (crop a multiple of 32, 0 < stride <= crop, scales > 0)
    are the recipe's own, in `recipe_from_args`."""
    group = parser.add_argument_group(
        "recipe", "extract as a downstream project does (shared/docs/recipes.md); each option overrides the row"
    )
    group.add_argument(
        "--recipe",
        help="default (one pass) | langseg-eval | vlmaps | openscene | lseg-minimal | conceptfusion | dff | "
        "feature-3dgs; --sizes is then the images' size [the first image's]",
    )
    group.add_argument("--base-size", type=int, help="long side at scale 1")
    group.add_argument("--crop", type=int, help="square crop side, a multiple of 32")
    group.add_argument("--stride", type=int, help="tile step, 1..crop [crop * 2/3]")
    group.add_argument("--scales", type=float, nargs="+", help="scales of the base size")
    group.add_argument("--flip", choices=("none", "sum", "mean"), help="horizontal flip: off, summed or averaged")
    group.add_argument("--input-size", type=image_size, help="HxW of the recipe's input resize")
    group.add_argument("--output-size", type=image_size, help="HxW of the final resize")


def recipe_from_args(ns: argparse.Namespace):  # noqa: ANN201 - Recipe | None (lazy import)
    """The checked recipe, None for the single pass (no recipe option, or `default` as it is)."""
    overrides = {name: getattr(ns, name) for name in RECIPE_FIELDS}
    if ns.recipe is None and all(v is None for v in overrides.values()):
        return None
    from lseg_trt.extraction.recipes import RECIPES, get_recipe

    recipe = get_recipe(ns.recipe or "default", **overrides)
    return None if recipe == RECIPES["default"] else recipe


def recipe_sizes_from(ns: argparse.Namespace, recipe) -> list[tuple[int, int]]:  # noqa: ANN001 - Recipe
    """The image sizes of an `extract --recipe` run, one run each: `--sizes` (any HxW), else the first
    image's. Options that assume the single pass's unit features at H/2, or workers that run only it,
    are refused here, before anything is loaded."""
    if ns.devices is not None or ns.ray is not None:
        raise LsegTrtError(f"--recipe {recipe.name} with --devices or --ray: workers run the single pass; use --shard")
    if ns.pool != 1 or ns.pca:
        raise LsegTrtError(f"--pool and --pca renormalise unit features: not with --recipe {recipe.name}")
    if not ns.sizes:
        from lseg_trt.extraction.recipes import first_image_size

        return [first_image_size(ns.images)]
    try:
        return list(dict.fromkeys(image_size(t) for t in ns.sizes))
    except argparse.ArgumentTypeError as e:
        raise LsegTrtError(f"--sizes: {e}") from None


# ---- outputs -----------------------------------------------------------------------------------------


def out_dir_from(text: str, option: str = "--out") -> Path:
    """A folder we can write into, made if missing; checked before any work, so results are not lost."""
    if not text.strip():
        raise LsegTrtError(f"{option} is empty; name a folder")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise LsegTrtError(f"{option} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise LsegTrtError(f"cannot write into {option} {path}: {e.strerror or e}") from None
    return path


def out_file_from(text: str) -> Path:
    """A file path whose folder we can write into; an existing folder at that path is refused."""
    if not text.strip():
        raise LsegTrtError("--out is empty; name a file")
    path = Path(text)
    if path.is_dir():
        raise LsegTrtError(f"--out {path} is a folder; give a file name such as {path / 'out.png'}")
    out_dir_from(str(path.parent) if str(path.parent) else os.curdir)
    return path
