"""The demos: segment (argmax over given labels) and wordfree (over the whole CLIP vocabulary)."""

from __future__ import annotations

import argparse
import sys

from lseg_trt.cli import Command
from lseg_trt.cli.args import (
    Parser,
    add_device_args,
    add_weights_args,
    device_from_args,
    lseg_from_args,
    out_file_from,
    port_number,
    positive_int,
)
from lseg_trt.errors import LsegTrtError


def _features(ns: argparse.Namespace, image):  # noqa: ANN001, ANN202 - PIL image -> (LSeg, features, size)
    """The one image's features, checked finite: NaN weights must not pass for a segmentation."""
    from lseg_trt.artifacts import ModelSource
    from lseg_trt.backends import make_runner
    from lseg_trt.images import default_size, preprocess
    from lseg_trt.sizes import parse_size
    from lseg_trt.webdemo import checked_features

    lseg = lseg_from_args(ns)
    size = parse_size(ns.size) if ns.size else default_size(image)
    x = preprocess(image, size, lseg.mean, lseg.std)
    spec, model = _backend(ns, ModelSource.from_lseg(lseg), [tuple(x.shape)])
    with make_runner(spec, model, device_from_args(ns), ns.cache) as runner:
        features = checked_features(runner, x, lseg.source)
    return lseg, features, size


def _backend(ns: argparse.Namespace, model, shapes: list):  # noqa: ANN001, ANN202 - (BackendSpec, ModelSource)
    """`--backend`, with auto resolved for this device and these input shapes; the choice and its reason go to
    stderr (stdout carries the results)."""
    from lseg_trt.backends import parse_backend
    from lseg_trt.backends.auto import AUTO, choose

    if ns.backend != AUTO:
        return parse_backend(ns.backend), model
    choice = choose(model, device_from_args(ns), shapes, ns.cache)
    print(f"backend: {choice.backend} ({choice.reason})", file=sys.stderr)
    return parse_backend(choice.backend), choice.source


def _segmentation_out(text: str):  # noqa: ANN202 - Path
    """The picture's path, checked with the label files written beside it before any work: an existing
    folder at any of the three names is a user error, not a failed rename after the network has run."""
    from lseg_trt.errors import LsegTrtError

    out = out_file_from(text)
    for path in (out.with_suffix(".labels.npy"), out.with_suffix(".labels.txt")):
        if path.is_dir():
            raise LsegTrtError(f"--out {out} would write its labels to {path}, which is a folder; choose another name")
    return out


def _save(out, image, seg, lseg, title: str, legend: int) -> None:  # noqa: ANN001
    """Picture, label map and names, then the pixel shares."""
    from lseg_trt.figures import save_segmentation

    if not lseg.semantic:
        title += " (RANDOM WEIGHTS: no semantics)"
    save_segmentation(image, seg, out, title, legend=legend)
    seg.save(out.with_suffix(".labels.npy"))
    for name, share in seg.shares()[:legend]:
        print(f"{name!r:>22s}  {100 * share:5.1f} %")
    print(f"wrote {out}, {out.with_suffix('.labels.npy')} and {out.with_suffix('.labels.txt')}")


def run_segment(ns: argparse.Namespace) -> int:
    from lseg_trt.images import load_image
    from lseg_trt.segment import parse_labels, segment_labels

    labels = parse_labels(ns.labels)
    out = _segmentation_out(ns.out)
    image = load_image(ns.image)
    lseg, features, size = _features(ns, image)
    seg = segment_labels(features, lseg, labels, (image.height, image.width))
    title = f"{lseg.variant} / {lseg.weights_name}, {ns.backend}, input {size[0]}x{size[1]}"
    _save(out, image, seg, lseg, title, legend=len(labels))
    return 0


def run_wordfree(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from lseg_trt.images import load_image
    from lseg_trt.segment import segment_wordfree, vocabulary, vocabulary_embeddings

    out = _segmentation_out(ns.out)
    image = load_image(ns.image)
    lseg, features, size = _features(ns, image)
    words = vocabulary(lseg)
    with tqdm(total=len(words), desc="vocabulary", unit="word") as bar:
        vocab = vocabulary_embeddings(lseg, Path(ns.cache) / "vocab", progress=bar.update)
    seg = segment_wordfree(features, vocab, words)
    title = f"word-free: {lseg.variant} / {lseg.weights_name}, input {size[0]}x{size[1]}"
    _save(out, image, seg, lseg, title, legend=ns.legend)
    print(f"{len(seg.names)} distinct tokens")
    return 0


def run_demo(ns: argparse.Namespace) -> int:
    from lseg_trt.artifacts import ModelSource
    from lseg_trt.backends import make_runner, parse_backend
    from lseg_trt.backends.auto import AUTO
    from lseg_trt.sizes import parse_size
    from lseg_trt.webdemo import Demo, gradio_module, serve

    host = ns.host.strip()
    if not host:
        raise LsegTrtError("--host is empty; name an address such as 127.0.0.1")
    size, device = parse_size(ns.size) if ns.size else None, device_from_args(ns)
    if ns.backend != AUTO:
        parse_backend(ns.backend)  # a wrong name: say so before loading a network
    gradio_module()  # missing: say so before loading a network
    lseg = lseg_from_args(ns)
    # without --size the page picks each photo's size, up to 640 on the longer side (`webdemo`)
    shapes = [(1, 3, *size)] if size else [(1, 3, 32, 32), (1, 3, 640, 640)]
    spec, model = _backend(ns, ModelSource.from_lseg(lseg), shapes)
    with make_runner(spec, model, device, ns.cache) as runner:
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: serving on {host}: anyone who can reach this machine there can use the page")
        serve(Demo(lseg, runner, spec.name, size, ns.cache), host, ns.port)
    return 0


def _model_args(p: Parser) -> None:
    add_weights_args(p)
    p.add_argument(
        "--backend",
        default="auto",
        help="runner for the image features, or auto: the fastest known to pass fidelity here [%(default)s]",
    )
    add_device_args(p, "ONNX / engine / vocabulary cache folder")


def _demo_args(p: Parser) -> None:
    _model_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--size", help="network input N or HxW (default: the image's size rounded to 32)")


def _segment_args(p: Parser) -> None:
    _demo_args(p)
    p.add_argument("--labels", default="dog, grass, other", help="comma-separated [%(default)s]")
    p.add_argument("--out", default="outputs/segment.png")


def _wordfree_args(p: Parser) -> None:
    _demo_args(p)
    p.add_argument("--legend", type=positive_int, default=20, help="words in the legend [%(default)s]")
    p.add_argument("--out", default="outputs/wordfree.png")


def _page_args(p: Parser) -> None:
    _model_args(p)
    p.add_argument(
        "--size", help="network input N or HxW for every photo (default: the photo's size, longer side at most 640)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address [%(default)s]; 0.0.0.0 opens the page to the network")
    p.add_argument("--port", type=port_number, default=7860, help="[%(default)s]")


COMMANDS = {
    "segment": Command("label segmentation picture", _segment_args, run_segment),
    "wordfree": Command("per-pixel best token of the whole CLIP vocabulary", _wordfree_args, run_wordfree),
    "demo": Command("a web page (Gradio): pick a photo, type labels, see the segmentation", _page_args, run_demo),
}
