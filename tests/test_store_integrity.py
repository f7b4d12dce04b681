"""Issue 23: the feature store never serves stale, duplicated or corrupt features, and the inputs, the
API and the messages around it hold against a hostile or unlucky user (tiny network, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import lseg_trt
from lseg_trt.backends import parse_backend
from lseg_trt.backends.torch import TorchRunner
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction import FeatureExtractor, extract, open_features
from lseg_trt.extraction.partition import parse_task
from lseg_trt.extraction.sources import list_items, scan
from lseg_trt.images import image_suffixes
from lseg_trt.models import LSeg

SIZE = (64, 96)
ARGS = ("--weights", "random", "--variant", "tiny_vit", "--sizes", "64x96", "--device", "cpu", "--shard-size", "4")


@pytest.fixture(scope="module")
def fx(tiny_vit: LSeg) -> FeatureExtractor:
    runner = TorchRunner(tiny_vit.image_encoder, parse_backend("torch"), "cpu")
    meta = {"variant": tiny_vit.variant, "weights": tiny_vit.weights_name, "weights_sha256": tiny_vit.sha256}
    with FeatureExtractor(runner, SIZE, tiny_vit.mean, tiny_vit.std, batch_size=4, workers=2, metadata=meta) as ex:
        yield ex


def _image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _images(folder: Path, count: int, seed: int = 0) -> Path:
    for i in range(count):
        _image(folder / f"img{i:03d}.png", seed + i)
    return folder


def _one_line(result, *words: str) -> None:  # noqa: ANN001 - conftest's CliResult
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]  # log lines aside
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], result.stderr


# ---- class 12: --shard digits -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["²/³", "1/٣", "１/２", "0/⁴"])
def test_shard_rejects_digits_that_are_not_ascii(text: str, tmp_path: Path, cli: Callable) -> None:
    with pytest.raises(LsegTrtError, match="expected K/N"):
        parse_task(text)
    _one_line(cli("extract", *ARGS, "--images", tmp_path, "--out", tmp_path / "o", "--shard", text), "--shard")


# ---- class 8 and 13: the API --------------------------------------------------------------------------


def test_one_ndarray_frame_is_one_image_and_views_work(fx: FeatureExtractor) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    one = fx(rgb)
    assert one.shape == (1, *fx.output_shape())
    np.testing.assert_array_equal(one, fx.frame(rgb))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(fx.frame(bgr[..., ::-1]), one)  # the usual BGR->RGB view
    np.testing.assert_array_equal(fx([bgr[..., ::-1]]), one)
    padded = np.zeros((48, 100, 3), np.uint8)
    padded[:, ::-1][:, 20:][:, ::-1] = rgb  # a non-contiguous crop
    np.testing.assert_array_equal(fx.frame(padded[:, :80]), one)
    np.testing.assert_allclose(fx(np.stack([rgb, rgb]))[1:], one, atol=1e-5)  # a 4-d array is a batch
    read_only = np.frombuffer(rgb.tobytes(), np.uint8).reshape(rgb.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it is handed memory it may not write
        np.testing.assert_array_equal(fx.frame(read_only), one)


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((4, 0, 3), np.uint8), np.zeros((0, 4, 4, 3), np.uint8)]
)
def test_empty_arrays_are_user_errors(fx: FeatureExtractor, bad: np.ndarray) -> None:
    with pytest.raises(LsegTrtError):
        fx(bad)
    if bad.ndim == 3:
        with pytest.raises(LsegTrtError):
            fx.frame(bad)
    import torch

    with pytest.raises(LsegTrtError):
        fx(torch.from_numpy(bad if bad.ndim == 4 else bad[None]))


# ---- class 11: messages never ask for the flag that was given ---------------------------------------


def test_a_run_without_its_settings_file(tmp_path: Path, cli: Callable) -> None:
    images = _images(tmp_path / "I", 5)
    out = tmp_path / "O"
    assert cli("extract", *ARGS, "--images", images, "--out", out).returncode == 0
    run = next(out.rglob("*.run"))
    (run / "run.json").unlink()
    resumed = cli("extract", *ARGS, "--images", images, "--out", out, "--resume")
    _one_line(resumed, "--force")
    assert "--resume" not in resumed.stderr
    plain = cli("extract", *ARGS, "--images", images, "--out", out)
    _one_line(plain, "--resume", "--force")
    forced = cli("extract", *ARGS, "--images", images, "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (run / "run.json").is_file() and len(open_features(run)) == 5
    (run / "run.json").write_text("{not json")  # damaged rather than gone: the same answers
    _one_line(cli("extract", *ARGS, "--images", images, "--out", out, "--resume"), "--force")
    assert cli("extract", *ARGS, "--images", images, "--out", out, "--force").returncode == 0


# ---- classes 1-4 and 10: resume follows the input as it is now; corrupt bytes are never served ----------


def _bmp(path: Path, seed: int) -> Path:
    """A BMP: its size depends on its dimensions only, so a rewrite can keep the size (and, restored, the
    modification time), as `cp -p`, `rsync -t` and `tar x` do."""
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")
    return path


@dataclass
class Store:
    """`R --images I --out O` over 12 BMPs in `I` (3 shards of 4), run in this process (`extract`, what the
    command calls) with the module's extractor: `run("--resume")` gives the summary the command prints."""

    fx: FeatureExtractor
    images: Path
    out: Path

    def __call__(self, *flags: str, out: Path | None = None) -> SimpleNamespace:
        fmt = flags[flags.index("--format") + 1] if "--format" in flags else "shards"
        summary = extract(
            self.fx, self.images, out or self.out, format=fmt, shard_size=4, resume="--resume" in flags, progress=False
        )
        return SimpleNamespace(stdout=summary.describe())

    def fresh(self) -> dict[str, bytes]:
        """The features of a one-pass run of the input as it is now."""
        self(out=self.out.with_name("F"))
        return _served(self.out.with_name("F"))


@pytest.fixture
def store(tmp_path: Path, fx: FeatureExtractor) -> Store:
    images = tmp_path / "I"
    images.mkdir()
    for i in range(12):
        _bmp(images / f"img{i:03d}.bmp", i)
    return Store(fx, images, tmp_path / "O")


def _served(out: Path, verify: bool = False) -> dict[str, bytes]:
    return {name: array.tobytes() for name, array in open_features(out, verify=verify).items()}


def test_resume_after_inputs_were_removed_and_rewritten_serves_the_new_features(store: Store) -> None:
    store()
    before = _served(store.out)
    for i in range(4):
        (store.images / f"img{i:03d}.bmp").unlink()
    _bmp(store.images / "img010.bmp", 1000)  # every shard now holds other items
    resumed = store("--resume")
    assert "removed 4 items no longer in the input" in resumed.stdout
    served = _served(store.out)
    assert served == store.fresh() and len(served) == 8
    assert served["img010"] != before["img010"]
    run = next(store.out.rglob("*.run"))
    assert len(list((run / "manifest").glob("*.jsonl"))) == 2 and len(list((run / "shards").iterdir())) == 2


@pytest.mark.parametrize("fmt", ["shards", "npy"])
def test_resume_after_the_last_inputs_were_deleted_serves_only_the_rest(store: Store, fmt: str) -> None:
    store("--format", fmt)
    for i in range(8, 12):
        (store.images / f"img{i:03d}.bmp").unlink()
    resumed = store("--format", fmt, "--resume")
    assert "8 already done" in resumed.stdout and "removed 4 items" in resumed.stdout
    assert sorted(_served(store.out)) == [f"img{i:03d}" for i in range(8)]
    stored = sorted(p.parent.name for p in store.out.rglob("*.npy"))  # `compare` reads these by path
    assert stored == ([f"img{i:03d}" for i in range(8)] if fmt == "npy" else [])


def test_a_rewrite_that_keeps_size_and_modification_time_is_found_by_content(store: Store) -> None:
    store()
    target = store.images / "img005.bmp"
    old = target.stat()
    _bmp(target, 2000)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))  # `cp -p`
    assert target.stat().st_size == old.st_size and target.stat().st_mtime_ns == old.st_mtime_ns
    resumed = store("--resume")
    assert "4 done, 8 already done" in resumed.stdout
    assert _served(store.out) == store.fresh()


def test_an_unchanged_input_is_not_redone_even_when_its_times_moved(store: Store) -> None:
    store()
    for path in store.images.iterdir():
        path.touch()  # a copy to another disk, a `touch`: other fingerprints, the same bytes
    assert "0 done, 12 already done" in store("--resume").stdout
    run = next(store.out.rglob("*.run"))
    recorded = [json.loads(line) for p in (run / "manifest").glob("*.jsonl") for line in p.open()]
    assert all(r["stat"] is None or r["stat"][3] == (store.images / Path(r["source"]).name).stat().st_mtime_ns
               for r in recorded)  # fingerprints brought up to date (None: too recent to trust)  # fmt: skip


@pytest.mark.parametrize("restore_times", [False, True])
def test_flipped_bytes_in_a_shard_are_refused_on_read_and_redone_on_resume(
    store: Store, cli: Callable, restore_times: bool
) -> None:
    store()
    run = next(store.out.rglob("*.run"))
    shard = run / "shards" / "00002.safetensors"
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x40  # inside the last item's features: same size, still a valid float16
    shard.write_bytes(bytes(data))
    if restore_times:
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    for verify in (False, True):  # the file's change time moved: even a plain read hashes what it reads
        with pytest.raises(LsegTrtError, match="00002.safetensors.*checksum"):
            _served(store.out, verify=verify)
    for quick in ((), ("--quick",)):  # the file's change time moved: even the quick check reads it
        checked = cli("manifest", "check", run, *quick)
        assert checked.returncode == 1 and "00002.safetensors" in checked.stdout, checked.stdout
    assert "4 done, 8 already done" in store("--resume").stdout
    assert _served(store.out, verify=True) == store.fresh()
    assert cli("manifest", "check", run, "--images", store.images).returncode == 0


@pytest.mark.parametrize("damage", ["cut", "garbage", "wrong shard", "twice"])
def test_a_damaged_manifest_line_makes_only_its_shard_pending(store: Store, damage: str) -> None:
    store()
    run = next(store.out.rglob("*.run"))
    manifest = run / "manifest" / "00001.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[1] = {
        "cut": lines[1][: len(lines[1]) // 2] + "\n",
        "garbage": "\x00\xff{]\n",
        "wrong shard": lines[1].replace('"shard": 1', '"shard": 4'),
        "twice": lines[0],
    }[damage]
    manifest.write_text("".join(lines), errors="surrogateescape")
    assert sorted(_served(store.out)) == sorted(f"img{i:03d}" for i in range(12) if i // 4 != 1)  # not served
    resumed = store("--resume")
    assert "4 done, 8 already done" in resumed.stdout
    assert _served(store.out, verify=True) == store.fresh()


def test_an_item_in_two_manifests_is_never_served(store: Store) -> None:
    store()
    run = next(store.out.rglob("*.run"))
    stale = (run / "manifest" / "00001.jsonl").read_text().replace('"shard": 1', '"shard": 9')
    (run / "manifest" / "00009.jsonl").write_text(stale)
    features = open_features(store.out)
    with pytest.raises(LsegTrtError, match="img004 is stored twice"):
        features["img004"]
    assert "0 done, 12 already done" in store("--resume").stdout  # the resume takes the stray one out
    assert len(_served(store.out)) == 12 and not (run / "manifest" / "00009.jsonl").exists()


# ---- class 9: bounded open files --------------------------------------------------------------------------


def test_a_store_of_many_shards_reads_under_a_low_open_file_limit(tmp_path: Path, cli: Callable) -> None:
    images = _images(tmp_path / "I", 2)
    assert cli("extract", *ARGS, "--images", images, "--out", tmp_path / "O").returncode == 0
    run = next((tmp_path / "O").rglob("*.run"))
    records = [json.loads(line) for line in (run / "manifest" / "00000.jsonl").open()]
    for index in range(1, 300):  # 300 shards: copies of the first, their items renamed (the keys stay)
        shutil.copyfile(run / "shards" / "00000.safetensors", run / "shards" / f"{index:05d}.safetensors")
        copies = [{**r, "name": f"{r['name']}-{index}", "shard": index, "file": f"shards/{index:05d}.safetensors"}
                  for r in records]  # fmt: skip
        (run / "manifest" / f"{index:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in copies))
    script = (
        "import resource, sys\n"
        "from lseg_trt.extraction import open_features\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "features = open_features(sys.argv[1])\n"
        "kept = [features[name] for name in features]  # every item kept alive\n"
        "kept += list(open_features(sys.argv[1], verify=True).values())\n"
        "print(len(kept))\n"
    )
    src = str(Path(lseg_trt.__file__).parents[1])  # the package under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, tmp_path / "O"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.split() == ["1200"], done.stderr


# ---- classes 5-7: inputs --------------------------------------------------------------------------------


def test_links_to_folders_are_followed_once(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    _images(frames / "seq01", 2)
    _images(tmp_path / "elsewhere" / "seq02", 3)
    (frames / "seq02").symlink_to(tmp_path / "elsewhere" / "seq02")
    (frames / "seq01" / "back").symlink_to(frames)  # a loop
    (frames / "again").symlink_to(frames / "seq01")  # a second path to a folder already walked
    listing = scan(frames)
    assert [i.name for i in listing.items] == [f"seq01/img{i:03d}" for i in range(2)] + [
        f"seq02/img{i:03d}" for i in range(3)
    ]
    assert listing.repeated == 2 and any("folder links not entered" in line for line in listing.notes())
    # a glob enters the link too, and agrees with the walk
    assert [i.name for i in list_items(str(frames / "*"))] == [i.name for i in listing.items]


def test_inputs_that_contribute_nothing_are_named(tmp_path: Path, cli: Callable) -> None:
    good = _images(tmp_path / "good", 2)
    (tmp_path / "empty").mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pixels = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(mixed / "anim.gif")
    (mixed / "phone.heic").write_bytes(b"ftypheic not decodable here")
    nothing = str(tmp_path / "nomatch" / "*.png")
    listing = scan([good, nothing, tmp_path / "empty", mixed])
    assert "anim" in [i.name for i in listing.items]  # GIF: listed in a folder as when named directly
    notes = "\n".join(listing.notes())
    assert f"input {nothing} gave nothing: the pattern matches nothing" in notes
    assert f"input {tmp_path / 'empty'} gave nothing" in notes
    if ".heic" not in image_suffixes():
        assert "skipped 1 files that are not images or videos (.heic 1)" in notes
        with pytest.raises(LsegTrtError, match="not an image or video suffix"):
            list_items(mixed / "phone.heic")  # the same suffix list as the walk
    with pytest.raises(LsegTrtError, match=r"no images found: .*matches nothing.*empty.* gave nothing"):
        list_items([nothing, tmp_path / "empty"])
    result = cli("extract", *ARGS, "--images", good, nothing, "--out", tmp_path / "O")
    assert result.returncode == 0 and f"input {nothing} gave nothing" in result.stdout


@pytest.mark.skipif(".avif" not in image_suffixes(), reason="this Pillow reads no AVIF")
def test_avif_files_in_a_folder_are_listed(tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "frame.avif")
    assert [i.name for i in list_items(tmp_path)] == ["frame"]


def test_one_file_reached_by_two_paths_is_extracted_once(tmp_path: Path, cli: Callable) -> None:
    images = _images(tmp_path / "I", 3)
    os.link(images / "img000.png", images / "img000z.png")  # a hard link: the same file, a later name
    twice = [images, images / ".." / "I"]
    listing = scan(twice)
    assert [i.name for i in listing.items] == ["img000", "img001", "img002"]  # names stay relative
    assert any("gave nothing: the folder was already listed" in line for line in listing.notes())
    result = cli("extract", *ARGS, "--images", *twice, "--out", tmp_path / "O")
    assert result.returncode == 0 and result.stdout.splitlines()[1].startswith("3 done"), result.stdout
    assert sorted(open_features(tmp_path / "O")) == ["img000", "img001", "img002"]
