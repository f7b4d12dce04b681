"""Streaming extraction on the tiny network on CPU: inputs, pre-processing, reductions, writers, resume."""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from conftest import run_files
from lseg_trt.backends import parse_backend
from lseg_trt.backends.torch import TorchRunner
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction import FeatureExtractor, Reduction, extract, fit_pca, open_features, reduction_fidelity
from lseg_trt.extraction import run as run_module
from lseg_trt.extraction.manifest import read_manifest
from lseg_trt.extraction.preprocess import gpu_vs_pil, network_input
from lseg_trt.extraction.sources import list_items, scan
from lseg_trt.extraction.writers import Background
from lseg_trt.images import preprocess, samples
from lseg_trt.models import LSeg

SIZE = (64, 96)


def _extractor(lseg: LSeg, batch_size: int = 2) -> FeatureExtractor:
    runner = TorchRunner(lseg.image_encoder, parse_backend("torch"), "cpu")
    meta = {"variant": lseg.variant, "weights": lseg.weights_name, "weights_sha256": lseg.sha256}
    return FeatureExtractor(runner, SIZE, lseg.mean, lseg.std, batch_size=batch_size, workers=2, metadata=meta)


@pytest.mark.parametrize("size", [(64, 96), (96, 32)])
def test_the_declared_feature_shape_is_what_the_network_gives(tiny: LSeg, size: tuple[int, int]) -> None:
    runner = TorchRunner(tiny.image_encoder, parse_backend("torch"), "cpu")
    extractor = FeatureExtractor(runner, size, tiny.mean, tiny.std, metadata={"variant": tiny.variant})
    declared = extractor.output_shape()
    assert not runner.active  # known without running the model
    with extractor:
        assert extractor.feature_shape == declared == (tiny.config.out_c, size[0] // 2, size[1] // 2)
    lying = FeatureExtractor(runner, size, tiny.mean, tiny.std, metadata={"variant": "vit_l16"})
    with pytest.raises(LsegTrtError, match="a vit_l16 network gives"):
        lying.activate()
    assert not runner.active


@pytest.fixture(scope="module")
def extractor(tiny_vit: LSeg) -> FeatureExtractor:
    with _extractor(tiny_vit) as ex:
        yield ex


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 photos-ish images in two folders (one stem twice), plus a corrupt and a truncated file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for sub, count in (("cam0", 4), ("cam1", 3)):
        (root / sub).mkdir()
        for i in range(count):
            gradient = np.linspace(0, 255, 90, dtype=np.uint8)[None, :, None]
            pixels = np.clip(gradient + rng.integers(0, 60, (70, 90, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / sub / f"{i:03d}.jpg", quality=90)
    (root / "cam1" / "broken.jpg").write_bytes(b"not an image at all")
    good = (root / "cam0" / "000.jpg").read_bytes()
    (root / "cam1" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    return root


def test_stream_skips_bad_files_and_keeps_equal_stems_apart(extractor: FeatureExtractor, folder: Path) -> None:
    streamed = dict(extractor.stream(folder))
    assert sorted(streamed) == [f"cam0/{i:03d}" for i in range(4)] + [f"cam1/{i:03d}" for i in range(3)]
    assert all(f.shape == (32, 32, 48) and f.device.type == "cpu" for f in streamed.values())
    direct = extractor([folder / "cam1" / "000.jpg", folder / "cam0" / "000.jpg"])
    torch.testing.assert_close(direct[0], streamed["cam1/000"], atol=1e-5, rtol=0)
    torch.testing.assert_close(direct[1], streamed["cam0/000"], atol=1e-5, rtol=0)
    assert not torch.allclose(streamed["cam0/000"], streamed["cam1/000"])


def test_inputs_of_every_kind_agree(extractor: FeatureExtractor, folder: Path) -> None:
    path = folder / "cam0" / "001.jpg"
    array = np.array(Image.open(path).convert("RGB"))
    reference = extractor([path])
    for batch in (
        [array],
        [Image.open(path)],
        torch.from_numpy(array)[None],
        torch.from_numpy(array).permute(2, 0, 1)[None],
    ):
        torch.testing.assert_close(extractor(batch), reference)
    torch.testing.assert_close(extractor.frame(array), reference)


def test_device_preprocessing_matches_pil(extractor: FeatureExtractor) -> None:
    image = np.array(Image.open(samples()["chelsea"]).convert("RGB"))
    mean, std = extractor.mean, extractor.std
    pil = preprocess(image, SIZE, mean, std)
    torch_path = network_input(torch.from_numpy(image)[None], SIZE, mean, std)
    assert (pil - torch_path).abs().max() < 0.02  # PIL rounds the resized image to uint8, that is all
    report = gpu_vs_pil(extractor.runner, {"chelsea": samples()["chelsea"]}, SIZE, mean, std)
    assert report["chelsea"]["pixel_cosine_mean"] > 0.999


def test_reductions_shapes_pca_and_fidelity(extractor: FeatureExtractor, folder: Path) -> None:
    features = torch.stack([f for _, f in extractor.stream(folder)])
    assert Reduction("fp32", pool=2).apply(features).shape == (7, 32, 16, 24)
    pooled = Reduction("fp32", pool=2).apply(features)
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(7, 16, 24))
    full_basis = fit_pca([features], k=32)
    exact = Reduction("fp32", pca=full_basis)
    restored = exact.restore(exact.apply(features))
    assert (restored * features).sum(1).min() > 0.9999  # all components: reconstruction is exact
    basis = fit_pca([features], k=4)
    assert Reduction(pca=basis).apply(features).shape == (7, 4, 32, 24 * 2)
    torch.testing.assert_close(basis.components @ basis.components.T, torch.eye(4), atol=1e-5, rtol=0)
    text = torch.nn.functional.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    options = {"fp32": Reduction("fp32"), "fp16": Reduction(), "pca32": exact, "pca4": Reduction(pca=basis)}
    rows = reduction_fidelity(features, options, text)
    assert rows["fp32"]["segmentation_agreement"] == 1.0 and rows["fp32"]["pixel_cosine_min"] > 0.99999
    assert rows["fp16"]["pixel_cosine_min"] > 0.9999
    assert rows["pca4"]["pixel_cosine_mean"] < rows["pca32"]["pixel_cosine_mean"]
    assert rows["pca4"]["bytes_per_item"] == 4 * 32 * 48 * 2
    with pytest.raises(LsegTrtError, match="divisible"):
        Reduction(pool=5).check((32, 32, 48))


@pytest.mark.parametrize("fmt", ["shards", "npy"])
def test_extract_writes_manifest_and_reads_back(
    extractor: FeatureExtractor, folder: Path, tmp_path: Path, fmt: str
) -> None:
    summary = extract(extractor, folder, tmp_path, format=fmt, dtype="fp32", shard_size=3, progress=False)
    assert summary.done == 7 and not summary.ok
    assert sorted(name for name, _ in summary.failed) == ["cam1/broken", "cam1/truncated"]
    features = open_features(tmp_path)
    streamed = dict(extractor.stream(folder))
    assert sorted(features) == sorted(streamed)
    for name, expected in streamed.items():
        np.testing.assert_allclose(features[name][0], expected.numpy(), atol=1e-5)
    statuses = {r["name"]: r["status"] for r in features.records}
    assert statuses["cam1/broken"] == "failed" and len(statuses) == 9
    assert features.settings["format"] == fmt and features.settings["reduction"]["dtype"] == "fp32"
    run_dir = tmp_path / "torch" / "tiny_vit" / "random" / f"64x96-{fmt}.run"
    assert features.run_dir == run_dir and not list(tmp_path.rglob("*.tmp"))
    if fmt == "npy":  # the seed layout: <out>/<backend>/<variant>/<weights>/<image>/<HxW>.npy
        matches = list(run_dir.parent.glob("cam0_000__*/64x96.npy"))  # `/` made safe, hashed
        assert len(matches) == 1 and np.load(matches[0]).shape == (1, 32, 32, 48)
    else:
        shard = load_file(run_dir / "shards" / "00000.safetensors")  # readable by the reference library
        assert sorted(shard) == ["cam0/000", "cam0/001", "cam0/002"]
        np.testing.assert_array_equal(shard["cam0/001"], features["cam0/001"])


def test_reduced_output_and_settings_guard(extractor: FeatureExtractor, folder: Path, tmp_path: Path) -> None:
    summary = extract(extractor, folder, tmp_path, pool=2, pca=8, shard_size=4, progress=False)
    features = open_features(summary.run_dir)
    stored = features["cam0/002"]
    assert stored.shape == (1, 8, 16, 24) and stored.dtype == np.float16 and features.pca.k == 8
    restored = Reduction(pool=2, pca=features.pca).restore(torch.from_numpy(np.array(stored)))
    assert restored.shape == (1, 32, 16, 24)
    with pytest.raises(LsegTrtError, match="already holds results"):
        extract(extractor, folder, tmp_path, pool=2, pca=8, shard_size=4, progress=False)
    with pytest.raises(LsegTrtError, match="settings differ"):
        extract(extractor, folder, tmp_path, pool=1, pca=8, shard_size=4, progress=False, resume=True)
    again = extract(extractor, folder, tmp_path, pool=2, pca=8, shard_size=4, progress=False, resume=True)
    # shard 0 (cam0/*) is done; the shards holding the broken and the truncated file are tried again
    assert again.done == 3 and again.skipped == 4 and not again.ok
    assert sorted(name for name, _ in again.failed) == ["cam1/broken", "cam1/truncated"]


def _shard_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "shards").glob("*.safetensors"))}


def test_interrupted_run_resumes_to_the_same_bytes(
    extractor: FeatureExtractor, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = extract(extractor, folder, tmp_path / "whole", shard_size=2, progress=False)
    real_write = run_module.write_shard_manifest
    calls = []

    def disk_full_after_first_shard(layout, index, records):  # noqa: ANN001, ANN202
        calls.append(index)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        real_write(layout, index, records)

    monkeypatch.setattr(run_module, "write_shard_manifest", disk_full_after_first_shard)
    with pytest.raises(LsegTrtError, match="No space left"):
        extract(extractor, folder, tmp_path / "cut", shard_size=2, progress=False)
    monkeypatch.setattr(run_module, "write_shard_manifest", real_write)
    cut = tmp_path / "cut" / "torch" / "tiny_vit" / "random" / "64x96-shards.run"
    # shards commit on two writer threads: whichever finished first is the one that survives, whole
    assert len([p.name for p in (cut / "manifest").glob("*.jsonl")]) == 1
    assert not list(cut.rglob("*.tmp"))
    assert len(open_features(cut)) == 2  # what the manifest vouches for, readable
    resumed = extract(extractor, folder, tmp_path / "cut", shard_size=2, progress=False, resume=True)
    assert resumed.skipped == 2 and resumed.done == 5
    assert _shard_bytes(cut) == _shard_bytes(whole.run_dir)
    assert run_files(cut) == run_files(whole.run_dir)
    before = (cut / "shards" / "00000.safetensors").stat().st_mtime_ns
    forced = extract(extractor, folder, tmp_path / "cut", shard_size=2, progress=False, force=True)
    assert forced.done == 7 and (cut / "shards" / "00000.safetensors").stat().st_mtime_ns >= before
    assert _shard_bytes(cut) == _shard_bytes(whole.run_dir)


@pytest.mark.parametrize("format", ["shards", "npy"])
def test_resume_redoes_shards_whose_stored_features_are_gone_or_damaged(
    extractor: FeatureExtractor, folder: Path, tmp_path: Path, format: str
) -> None:
    """A manifest says a shard was written, not that its file is still whole: a truncated shard file and a
    deleted feature file are extracted again, and the run ends with the bytes of an undamaged one."""
    images = folder / "cam0"  # four readable images, one shard each
    whole = extract(extractor, images, tmp_path / "whole", shard_size=1, format=format, progress=False)
    run = extract(extractor, images, tmp_path / "hurt", shard_size=1, format=format, progress=False).run_dir
    stored = sorted(p for p in run.parent.rglob("*") if p.suffix in (".safetensors", ".npy"))
    if format == "shards":
        stored = [p for p in stored if p.is_relative_to(run)]
    assert len(stored) == 4
    features = open_features(run)
    open_before = len(os.listdir("/proc/self/fd"))
    assert all(features.damaged(records, verify=True) is None for records in read_manifest(run).shards.values())
    assert len(os.listdir("/proc/self/fd")) == open_before  # a check keeps none open
    stored[0].write_bytes(stored[0].read_bytes()[:-64])  # cut short, as a full disk or a killed copy leaves it
    # a header length far past the file's end (reading would allocate it), or an empty npy file
    stored[1].write_bytes((2**40).to_bytes(8, "little") + b"{}" if format == "shards" else b"")
    stored[-1].unlink()
    with pytest.raises(LsegTrtError):  # one line, not a MemoryError or EOFError traceback
        open_features(run)[sorted(open_features(run).done)[1]]
    resumed = extract(extractor, images, tmp_path / "hurt", shard_size=1, format=format, progress=False, resume=True)
    assert resumed.ok and resumed.done == 3 and resumed.skipped == 1

    def features(run_dir: Path) -> dict[str, bytes]:
        return {name: np.asarray(array).tobytes() for name, array in open_features(run_dir).items()}

    assert features(run) == features(whole.run_dir) and len(features(run)) == 4


def test_nan_weights_are_recorded_not_written(tiny_vit: LSeg, folder: Path, tmp_path: Path) -> None:
    broken = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        next(broken.image_encoder.parameters()).fill_(float("nan"))
    with _extractor(broken) as ex:
        summary = extract(ex, folder / "cam0", tmp_path, progress=False)
    assert summary.done == 0 and sorted(summary.nonfinite) == [f"{i:03d}" for i in range(4)]
    records = [
        json.loads(line) for p in summary.run_dir.glob("manifest/*.jsonl") for line in p.read_text().splitlines()
    ]
    assert {r["status"] for r in records} == {"nonfinite"}
    assert len(open_features(summary.run_dir)) == 0
    with _extractor(broken) as ex:  # a resume must not pass on the NaN results as finished
        again = extract(ex, folder / "cam0", tmp_path, progress=False, resume=True)
    assert again.skipped == 0 and len(again.nonfinite) == 4 and not again.ok


def test_records_and_settings_on_disk_are_not_trusted(
    extractor: FeatureExtractor, folder: Path, tmp_path: Path
) -> None:
    """Manifests and run.json are files anyone can edit: a record naming a file outside the run, or lines
    that are not records, give one error, never a read elsewhere or a traceback."""
    from lseg_trt.extraction.manifest import read_manifest, read_settings

    run = extract(extractor, folder / "cam0", tmp_path / "out", shard_size=2, progress=False).run_dir
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(next((run / "shards").glob("*.safetensors")), outside)
    manifest = run / "manifest" / "00000.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for bad in (str(outside), "../../../elsewhere.safetensors"):
        manifest.write_text("".join(json.dumps({**r, "file": bad}) + "\n" for r in records))
        with pytest.raises(LsegTrtError, match="outside"):
            open_features(run)[records[0]["name"]]
    manifest.write_text("1\n")
    assert "corrupt manifest" in read_manifest(run).damaged[0] and 0 not in read_manifest(run).shards
    (run / "run.json").write_text("[]")
    with pytest.raises(LsegTrtError, match="malformed run settings"):
        read_settings(run)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("reduction", [{}, {"pool": 2}, {"pool": 2, "pca": 4}, {"dtype": "fp32"}])
def test_one_non_finite_value_marks_its_image_whatever_the_reduction(
    extractor: FeatureExtractor, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: float,
    reduction: dict,
) -> None:  # fmt: skip
    """The check runs on the stored (reduced) features: one bad value of the full map must still reach it."""
    forward, run_shards, running = FeatureExtractor.forward, run_module.run_shards, []

    def first_image_broken(self: FeatureExtractor, *args: Any, **kwargs: Any) -> torch.Tensor:
        features = forward(self, *args, **kwargs).clone()
        if running:  # the run's batches, not the frames the PCA basis is fitted on
            features[0, 3, 5, 7] = value
        return features

    def run(*args: Any, **kwargs: Any) -> Any:
        running.append(True)
        return run_shards(*args, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "forward", first_image_broken)
    monkeypatch.setattr(run_module, "run_shards", run)
    summary = extract(extractor, folder / "cam0", tmp_path, shard_size=4, progress=False, **reduction)
    assert sorted(summary.nonfinite) == ["000", "002"] and summary.done == 2  # batches of 2: first of each


@pytest.mark.parametrize("fmt", ["shards", "npy"])
def test_resume_and_force_remove_temporaries_of_dead_runs(
    extractor: FeatureExtractor, folder: Path, tmp_path: Path, fmt: str
) -> None:
    summary = extract(extractor, folder / "cam0", tmp_path, format=fmt, shard_size=2, progress=False)
    dead, alive = _dead_pid(), 1  # init: alive, and not this process (whose own temporaries collide)
    if fmt == "shards":
        where = summary.run_dir / "shards"
        name = "00006.safetensors"  # a shard of a killed run over more images
    else:
        where = summary.run_dir.parent / "000"  # the npy layout: <weights folder>/<image>/<HxW>.npy
        name = "64x96.npy"
    for flag in ("resume", "force"):
        stale, live = where / f".{name}.{dead}.tmp", where / f".{name}.{alive}.tmp"
        for path in (stale, live):
            path.write_bytes(b"half a file")
        extract(extractor, folder / "cam0", tmp_path, format=fmt, shard_size=2, progress=False, **{flag: True})
        assert not stale.exists(), flag
        # force redoes every item: a writer clears any leftover of the file it now writes (it owns it), while
        # a resume with nothing to redo leaves a live process's temporary alone
        wiped = flag == "force"
        assert live.exists() != wiped, flag
        live.unlink(missing_ok=True)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_inputs_that_are_not_images_are_named(folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(LsegTrtError, match="empty input path"):
        list_items("")
    with pytest.raises(LsegTrtError, match="empty input path"):
        list_items([folder, " "])
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    for special in (tmp_path / "fifo.jpg", Path("/dev/zero"), tmp_path / "zero.jpg"):
        with pytest.raises(LsegTrtError, match="not a regular file"):
            list_items(special)
    with pytest.raises(LsegTrtError, match="input not found"):
        list_items(tmp_path / "missing.jpg")
    tree = tmp_path / "tree"
    (tree / ".cache" / "deep").mkdir(parents=True)
    for path in (tree / "a.jpg", tree / ".b.jpg", tree / ".cache" / "c.jpg", tree / ".cache" / "deep" / "d.jpg"):
        path.write_bytes((folder / "cam0" / "000.jpg").read_bytes())
    os.mkfifo(tree / "pipe.jpg")
    with caplog.at_level("WARNING", logger="lseg_trt.extraction.sources"):
        listing = scan(tree)
    assert [i.name for i in listing.items] == ["a"] and listing.ignored == 3  # .b.jpg, .cache, pipe.jpg
    assert f"skipped 3 hidden or special entries in {tree}" in caplog.text
    assert scan(folder).ignored == 0


def test_listing_names_items_the_same_way_from_every_kind_of_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The names are the unit of resume and of `--shard` (a stable partition), so the listing's rules are
    pinned here: relative to each root without the suffix, suffixes kept on a collision, absolute paths
    when roots collide, one item per file however many paths reach it (named by the first: a real folder
    before a link); links to files followed, links to folders entered once, broken links counted as passed
    over, other suffixes counted by suffix."""
    data = tmp_path / "data"
    (data / "cam0").mkdir(parents=True)
    (data / "cam1").mkdir()
    for name in ("cam0/000.jpg", "cam0/001.JPG", "cam1/x.tar.jpg", "cam1/notes.txt", "cam1/a.png", "cam1/a.jpg"):
        (data / name).write_bytes(b"pixels")
    (data / "cam1" / "linked.jpg").symlink_to(data / "cam0" / "000.jpg")  # the same file again: once
    (data / "cam1" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (data / "cam1" / "loop.jpg").symlink_to(data / "cam1" / "loop.jpg")  # its type cannot be read (ELOOP)
    (data / "cam2").symlink_to(data / "cam0")  # a link to a folder already walked: not entered again, counted
    listing = scan(data)
    assert [i.name for i in listing.items] == [
        "cam0/000.jpg", "cam0/001.JPG", "cam1/a.jpg", "cam1/a.png", "cam1/x.tar.jpg",
    ]  # fmt: skip
    assert listing.ignored == 2  # the broken link and the loop
    assert (listing.duplicates, listing.repeated, listing.other) == (1, 1, {".txt": 1})
    (data / "cam1" / "a.png").unlink()
    assert [i.name for i in list_items(data)] == ["cam0/000", "cam0/001", "cam1/a", "cam1/x.tar"]

    monkeypatch.chdir(data)  # a glob without a fixed part is relative to the working folder, and enters links
    assert [i.name for i in list_items("cam*/0*.jpg")] == ["cam0/000"]  # cam2/000.jpg is the same file
    assert [i.name for i in list_items(["cam0", "cam0/000.jpg"])] == ["000", "001"]  # one item per file
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "frames.txt").write_text("# comment\n../data/cam0/000.jpg\n\n../data/cam1/x.tar.jpg\n")
    assert [i.name for i in list_items(lists / "frames.txt")] == ["cam0/000", "cam1/x.tar"]
    other = tmp_path / "other" / "cam0"
    other.mkdir(parents=True)
    (other / "000.jpg").write_bytes(b"pixels")
    names = [i.name for i in list_items([data / "cam0", other])]  # `000` twice: both named in full
    assert names == sorted(str(p).lstrip("/") for p in (data / "cam0" / "000.jpg", data / "cam0" / "001.JPG",
                                                        other / "000.jpg"))  # fmt: skip


def test_shared_run_keeps_other_processes_temporaries(
    extractor: FeatureExtractor, folder: Path, tmp_path: Path
) -> None:
    """Tasks of `--shard K/N` join one folder, maybe from other hosts, where a pid means nothing: joining
    must not delete a temporary of a shard this task does not write."""
    from lseg_trt.extraction.run import RunOptions, prepare_run

    summary = extract(extractor, folder / "cam0", tmp_path, shard_size=2, progress=False)
    other = summary.run_dir / "shards" / f".00099.safetensors.{_dead_pid()}.tmp"  # another host's shard
    other.write_bytes(b"being written elsewhere")
    items = list_items(folder / "cam0")
    options = RunOptions(shard_size=2, resume=True)
    prepare_run(extractor, items, tmp_path, options, shared=True)
    assert other.exists()
    prepare_run(extractor, items, tmp_path, options)  # a run of its own cleans up
    assert not other.exists()


def _cancel_within(writer: Background, seconds: float, **kwargs: float) -> bool:
    """True if `writer.cancel` returned within `seconds` (run on a helper thread: the old one hung)."""
    cancelling = threading.Thread(target=writer.cancel, kwargs=kwargs, daemon=True)
    cancelling.start()
    cancelling.join(timeout=seconds)
    return not cancelling.is_alive()


def test_a_cancelled_writer_finishes_its_running_task_and_drops_the_rest() -> None:
    writer = Background(depth=4)
    ran: list[str] = []
    started, go = threading.Event(), threading.Event()
    writer.submit(lambda: (started.set(), go.wait(10), ran.append("running")))
    writer.submit(lambda: ran.append("queued"))
    assert started.wait(10)
    cancelling = threading.Thread(target=writer.cancel, daemon=True)
    cancelling.start()
    while not writer.cancelled:
        time.sleep(0.01)
    go.set()
    cancelling.join(timeout=10)
    assert not cancelling.is_alive() and not writer.thread.is_alive() and ran == ["running"]


def test_a_writer_cancelled_after_a_ctrl_c_inside_the_queue_stops() -> None:
    """A Ctrl-C raised in the producer just after `Condition.notify` released a waiter and before it
    removed it leaves a stale waiter, which a later stop marker wakes instead of the writer: a whole
    `--devices` run once hung so. Replayed here with a trace hook at that line; then the queue's lock
    held for good (a Ctrl-C just inside its `with`): cancel must return from both."""
    lines, first = inspect.getsourcelines(threading.Condition.notify)
    after_release = [first + i for i, line in enumerate(lines) if line.strip() == "n -= 1"]
    if not after_release:
        pytest.skip("this Python's Condition.notify has another shape")
    writer = Background(depth=4)
    deadline = time.monotonic() + 10
    while not writer.tasks.not_empty._waiters and time.monotonic() < deadline:  # the writer waits in get
        time.sleep(0.01)

    def interrupt_after_release(frame, event, arg):  # noqa: ANN001, ANN202
        if frame.f_code is not threading.Condition.notify.__code__:
            return None

        def at_line(frame, event, arg):  # noqa: ANN001, ANN202
            if event == "line" and frame.f_lineno == after_release[0]:
                sys.settrace(None)
                raise KeyboardInterrupt
            return at_line

        return at_line

    sys.settrace(interrupt_after_release)
    try:
        with pytest.raises(KeyboardInterrupt):
            writer.submit(lambda: None)
    finally:
        sys.settrace(None)
    time.sleep(0.3)  # the writer ran the task and waits again, behind the stale waiter
    assert _cancel_within(writer, 5) and not writer.thread.is_alive()

    stuck = Background(depth=2)
    stuck.tasks.mutex.acquire()
    try:
        assert _cancel_within(stuck, 5, deadline_s=0.3)  # returns, leaving the blocked thread behind
    finally:
        stuck.tasks.mutex.release()
    stuck.thread.join(timeout=5)
    assert not stuck.thread.is_alive()
