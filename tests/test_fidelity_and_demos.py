"""extract / compare / fidelity / segment / wordfree on the tiny networks: every command makes its files."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lseg_trt import LsegTrtError
from lseg_trt.compare import compare_tree
from lseg_trt.images import samples
from lseg_trt.models import LSeg
from lseg_trt.segment import logits, palette, parse_labels, segment_labels, segment_wordfree


def test_palette_matches_lang_seg() -> None:
    colours = palette(5)
    assert colours.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def test_labels_parsing() -> None:
    assert parse_labels(" dog, grass ,other") == ["dog", "grass", "other"]
    for bad in ("", "dog,,grass", "dog, dog"):
        with pytest.raises(LsegTrtError):
            parse_labels(bad)


def test_label_logits_pick_the_matching_text(tiny_vit: LSeg) -> None:
    """A pixel whose feature equals a label's text feature must get that label."""
    text = tiny_vit.encode_text(["cat", "sofa", "lamp"])
    features = torch.stack([text[1]] * 8 + [text[2]] * 8).t().reshape(1, -1, 4, 4)
    out = logits(features, text, (8, 8))
    assert out.shape == (1, 3, 8, 8)
    seg = segment_labels(features, tiny_vit, ["cat", "sofa", "lamp"], (4, 4))
    assert seg.label_map[:2].tolist() == [[1] * 4] * 2 and seg.label_map[2:].tolist() == [[2] * 4] * 2
    assert dict(seg.shares()) == {"sofa": 0.5, "lamp": 0.5}


def test_wordfree_picks_the_best_token() -> None:
    vocab = torch.eye(4)
    features = torch.tensor([[0.9, 0.1, 0, 0], [0, 0, 0.2, 0.98]]).t().reshape(1, 4, 1, 2)
    seg = segment_wordfree(features, vocab, ["a", "b", "c", "d"], batch=3)
    assert seg.names == ["a", "d"] and seg.label_map.tolist() == [[0, 1]]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lseg_trt.cli import main

    root = tmp_path_factory.mktemp("features")
    images = [str(p) for p in samples().values()]
    for backend in ("torch", "onnxruntime", "torch-bf16"):
        code = main(["extract", "--weights", "random", "--variant", "tiny_rn", "--backend", backend, "--images",
                     *images, "--sizes", "64", "64x96", "--batch", "2", "--out", str(root / "ft"),
                     "--format", "npy", "--dtype", "fp32", "--cache", str(root / "cache")])  # fmt: skip
        assert code == 0
    return root / "ft"


def test_extract_layout(tree: Path) -> None:
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.npy"))
    assert len(files) == 3 * 3 * 2
    assert "torch/tiny_rn/random/chelsea/64x96.npy" in files
    f = np.load(tree / "torch/tiny_rn/random/chelsea/64x96.npy")
    assert f.shape == (1, 32, 32, 48) and f.dtype == np.float32


def test_compare_backends_and_sizes(cli, tree: Path, tmp_path: Path) -> None:
    result = cli("compare", "--tree", str(tree), "--by", "backends", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "| onnxruntime |" in result.stdout and "pass" in result.stdout
    assert {p.suffix for p in tmp_path.iterdir()} == {".md", ".csv", ".json", ".png"}
    assert list(tmp_path.glob("pca_*.png")) and list(tmp_path.glob("cosine_*onnxruntime.png"))
    sizes = compare_tree(tree, "sizes")
    assert all(c.size == "64x96 -> 64x64" for c in sizes) and len(sizes) == 3 * 3


def test_compare_fails_on_nonfinite_and_bad_trees(cli, tree: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    for src in (tree / "torch/tiny_rn/random/coffee").glob("*.npy"):
        dst = broken / "torch/tiny_rn/random/coffee" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        bad = np.load(src)
        bad[0, 0, 0, 0] = np.nan
        nan_dst = broken / "onnxruntime/tiny_rn/random/coffee" / src.name
        nan_dst.parent.mkdir(parents=True, exist_ok=True)
        np.save(nan_dst, bad)
    result = cli("compare", "--tree", str(broken), "--out", str(tmp_path / "r"))
    assert result.returncode == 1 and "NaN/Inf" in result.stderr
    result = cli("compare", "--tree", str(tmp_path / "missing"))
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr
    # a header that promises 1.2 TB over 100 bytes, and a FIFO that would block a plain read
    lying = broken / "onnxruntime/tiny_rn/random/coffee/64x64.npy"
    with open(lying, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (1, 32, 100000, 100000)}
        )
        f.write(b"0" * 100)
    result = cli("compare", "--tree", str(broken), "--out", str(tmp_path / "r2"))
    assert result.returncode == 2 and "greater than file size" in result.stderr
    lying.unlink()
    os.mkfifo(lying)
    result = cli("compare", "--tree", str(broken), "--out", str(tmp_path / "r3"))
    assert result.returncode == 2 and "not a regular file" in result.stderr


def test_fidelity_command(cli, tmp_path: Path) -> None:
    backends = "onnxruntime,torch-bf16,tensorrt"
    result = cli("fidelity", "--variants", "tiny_vit", "--sizes", "64", "64x96", "--backends", backends,
                 "--out", str(tmp_path / "rep"), "--cache", str(tmp_path / "c"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "rep" / "fidelity.json").read_text())
    assert {c["candidate"] for c in report["comparisons"]} == {"onnxruntime", "torch-bf16"}
    assert all(c["passed"] for c in report["comparisons"]) and "tensorrt" in report["not_run"]
    assert list((tmp_path / "rep").glob("pca_*.png")) and list((tmp_path / "rep").glob("cosine_*.png"))


def test_segment_without_open_clip_is_one_line(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip is imported only when text is first encoded; a missing one is then the user's environment:
    one line naming what to install, exit code 2, no traceback, no picture written."""
    from lseg_trt.models.clip_text import tokenizer

    for module in ("open_clip", "open_clip.tokenizer", "open_clip.transformer"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it fails
    tokenizer.cache_clear()  # a tokenizer built by an earlier test would need no import
    result = cli("segment", "--weights", "random", "--variant", "tiny_vit", "--image", str(samples()["coffee"]),
                 "--labels", "cup, other", "--size", "64", "--out", str(tmp_path / "seg.png"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "without open_clip (pip install open_clip_torch)" in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1  # beside the log lines
    assert not list(tmp_path.iterdir())


def test_segment_and_wordfree_commands(cli, tmp_path: Path) -> None:
    image = str(samples()["coffee"])
    result = cli("segment", "--weights", "random", "--variant", "tiny_vit", "--image", image, "--labels",
                 "cup, table, other", "--size", "96x128", "--out", str(tmp_path / "seg.png"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "%" in result.stdout and (tmp_path / "seg.png").is_file()
    label_map = np.load(tmp_path / "seg.labels.npy")
    assert label_map.shape == (400, 600) and label_map.max() <= 2  # the image's own size
    result = cli("segment", "--weights", "random", "--variant", "tiny_vit", "--image", image, "--labels", "cup, cup")
    assert result.returncode == 2 and "duplicate" in result.stderr
    result = cli("segment", "--weights", "random", "--image", str(tmp_path / "seg.labels.npy"))
    assert result.returncode == 2 and "cannot read image" in result.stderr
    args = ["wordfree", "--weights", "random", "--variant", "tiny_rn", "--image", image, "--size", "64",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "wf.png")]  # fmt: skip
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "distinct tokens" in first.stdout and list((tmp_path / "cache" / "vocab").glob("vocab_tiny_rn_*.npy"))
    second = cli(*args)
    assert second.returncode == 0 and "from cache" in second.stderr


def test_segment_with_a_checkpoint(cli, tiny_vit_ckpt: Path, tmp_path: Path) -> None:
    result = cli("segment", "--weights", str(tiny_vit_ckpt), "--image", str(samples()["chelsea"]), "--labels",
                 "cat, other", "--size", "64", "--out", str(tmp_path / "seg.png"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "RANDOM" not in result.stdout and (tmp_path / "seg.png").is_file()


@pytest.mark.real_size
def test_real_size_segmentation_at_small_size() -> None:
    from lseg_trt.backends import make_runner, parse_backend
    from lseg_trt.models import random_lseg

    lseg = random_lseg("rn101_zs")
    x = lseg.preprocess(samples()["coffee"], (64, 96))
    with make_runner(parse_backend("torch"), lseg, "cpu") as runner:
        features = runner.infer(x)
    assert features.shape == (1, 512, 32, 48)
    seg = segment_labels(features, lseg, ["cup", "table", "other"], (400, 600))
    assert seg.label_map.shape == (400, 600) and abs(sum(s for _, s in seg.shares()) - 1) < 1e-9


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_strict_fp32_works_after_the_new_tf32_api_and_restores_it() -> None:
    """Reading the legacy TF32 flags after a caller set the new ones raises in torch; strict_fp32 must not."""
    from lseg_trt.fidelity import strict_fp32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        matmul.fp32_precision = conv.fp32_precision = "tf32"
        with strict_fp32():
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


@pytest.mark.parametrize("taken", ["seg.labels.npy", "seg.labels.txt"])
def test_segment_whose_label_files_would_land_on_a_folder(cli, tmp_path: Path, taken: str) -> None:
    (tmp_path / taken).mkdir()
    result = cli("segment", "--weights", "random", "--variant", "tiny_vit", "--image", str(samples()["coffee"]),
                 "--labels", "cup, other", "--size", "64", "--out", str(tmp_path / "seg.png"))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr and "is a folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken]  # nothing written


def test_compare_sizes_passes_over_files_not_named_by_a_size(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    for stem in ("final", "²x³", "64"):
        shutil.copy(copy / "torch/tiny_rn/random/chelsea/64x96.npy", copy / f"torch/tiny_rn/random/chelsea/{stem}.npy")
    assert len(compare_tree(copy, "sizes")) == len(compare_tree(tree, "sizes"))
