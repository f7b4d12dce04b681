"""The demos: segment (argmax over given labels) and wordfree (over the whole CLIP vocabulary)."""

from __future__ import annotations

import argparse

from lseg_trt.cli import Command
from lseg_trt.cli.args import (
    Parser,
    add_device_args,
    add_weights_args,
    device_from_args,
    lseg_from_args,
    out_file_from,
    positive_int,
)


def _features(ns: argparse.Namespace, image):  # noqa: ANN001, ANN202 - PIL image -> (LSeg, features, size)
    """The one image's features, checked finite: NaN weights must not pass for a segmentation."""
    from lseg_trt.backends import make_runner, parse_backend
    from lseg_trt.errors import LsegTrtError
    from lseg_trt.images import default_size, preprocess
    from lseg_trt.metrics import count_nonfinite
    from lseg_trt.sizes import parse_size

    lseg = lseg_from_args(ns)
    size = parse_size(ns.size) if ns.size else default_size(image)
    x = preprocess(image, size, lseg.mean, lseg.std)
    with make_runner(parse_backend(ns.backend), lseg, device_from_args(ns), ns.cache) as runner:
        features = runner.infer_host(x)
    bad = count_nonfinite(features)
    if bad:
        raise LsegTrtError(
            f"the features hold {bad} NaN/Inf values (non-finite weights in {lseg.source}?); nothing was written"
        )
    return lseg, features, size


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


def _demo_args(p: Parser) -> None:
    add_weights_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--backend", default="torch", help="runner for the image features [%(default)s]")
    p.add_argument("--size", help="network input N or HxW (default: the image's size rounded to 32)")
    add_device_args(p, "ONNX / engine / vocabulary cache folder")


def _segment_args(p: Parser) -> None:
    _demo_args(p)
    p.add_argument("--labels", default="dog, grass, other", help="comma-separated [%(default)s]")
    p.add_argument("--out", default="outputs/segment.png")


def _wordfree_args(p: Parser) -> None:
    _demo_args(p)
    p.add_argument("--legend", type=positive_int, default=20, help="words in the legend [%(default)s]")
    p.add_argument("--out", default="outputs/wordfree.png")


COMMANDS = {
    "segment": Command("label segmentation picture", _segment_args, run_segment),
    "wordfree": Command("per-pixel best token of the whole CLIP vocabulary", _wordfree_args, run_wordfree),
}
