"""Video input on CPU with the tiny network: synthetic videos written with PyAV become one item per frame,
stream and `lseg-trt extract` give every frame's features, bad videos fail alone, worker processes agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_files
from lseg_trt.backends import parse_backend
from lseg_trt.backends.torch import TorchRunner
from lseg_trt.extraction import FeatureExtractor, open_features
from lseg_trt.extraction.pipeline import Timings
from lseg_trt.extraction.sources import list_items
from lseg_trt.models import LSeg

av = pytest.importorskip("av")

FRAMES = 12
RUN = Path("torch/tiny_vit/tiny_vit/64x96-shards.run")


def _pattern(i: int, height: int = 96, width: int = 128) -> np.ndarray:
    """A gradient that moves with `i`, so every frame differs."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 2 + i * 16) % 256, (y * 3 + i * 8) % 256, (x + y + i * 24) % 256], -1).astype(np.uint8)


def write_video(path: Path, frames: int = FRAMES, codec: str = "mpeg4", options: dict | None = None) -> Path:
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")))
        container.mux(stream.encode())
    return path


def decoded_by_pyav(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _image(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`a.png`, `clip.mp4` (mpeg4: the container states its frame count), `clip2.mkv` (H.264 in Matroska:
    no stated count, frames are counted by decoding) and `z.png`."""
    root = tmp_path_factory.mktemp("media")
    _image(root / "a.png", 0)
    write_video(root / "clip.mp4")
    write_video(root / "clip2.mkv", frames=7, codec="libx264")
    _image(root / "z.png", 1)
    return root


@pytest.fixture(scope="module")
def extractor(tiny_vit: LSeg) -> FeatureExtractor:
    runner = TorchRunner(tiny_vit.image_encoder, parse_backend("torch"), "cpu")
    meta = {"variant": tiny_vit.variant, "weights": tiny_vit.weights_name, "weights_sha256": tiny_vit.sha256}
    with FeatureExtractor(runner, (64, 96), tiny_vit.mean, tiny_vit.std, batch_size=4, workers=2, metadata=meta) as e:
        yield e


@pytest.fixture
def args(tiny_vit_ckpt: Path) -> Callable[..., list[str]]:
    def make(images: Path, out: Path, *extra: str) -> list[str]:
        common = ["--weights", tiny_vit_ckpt, "--images", images, "--sizes", "64x96", "--batch", "4", "--workers", "1"]
        return ["extract", *common, "--shard-size", "5", "--out", out, *extra]

    return make


def test_a_video_lists_one_item_per_frame_beside_images(media: Path) -> None:
    items = list_items(media)
    clip = [f"clip/{i:06d}" for i in range(FRAMES)]
    assert [i.name for i in items] == ["a", *clip, *[f"clip2/{i:06d}" for i in range(7)], "z"]
    frames = [i for i in items if i.path.name == "clip.mp4"]
    assert [i.frame for i in frames] == list(range(FRAMES)) and items[0].frame is None
    for video, count in (("clip.mp4", FRAMES), ("clip2.mkv", 7)):  # stated (mp4) or counted (mkv)
        with av.open(str(media / video)) as container:
            stated = container.streams.video[0].frames
        assert stated == (count if video.endswith(".mp4") else 0)
        assert len(decoded_by_pyav(media / video)) == count == len(list_items(media / video))


def test_frame_names_stay_apart_from_image_names(media: Path, tmp_path: Path) -> None:
    # frames of clip.mp4 saved as clip/000003.png beside it: both would be `clip/000003`; all names keep suffixes
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip.mp4").write_bytes((media / "clip.mp4").read_bytes())
    _image(tmp_path / "clip" / "000003.png", 2)
    names = [i.name for i in list_items(tmp_path)]
    assert names == [f"clip.mp4/{i:06d}" for i in range(FRAMES)] + ["clip/000003.png"]


def test_stream_gives_each_frame_what_the_extractor_gives_it(extractor: FeatureExtractor, media: Path) -> None:
    timings = Timings()
    streamed = list(extractor.stream(media / "clip.mp4", timings))
    assert timings.seconds["decode"] > 0  # a video's decoding is timed as images' is
    assert [name for name, _ in streamed] == [f"clip/{i:06d}" for i in range(FRAMES)]
    frames = decoded_by_pyav(media / "clip.mp4")
    assert frames[0].shape == (96, 128, 3) and not np.array_equal(frames[0], frames[1])
    # the same batches of 4 as the stream cuts: the same computation, so the same bits
    direct = torch.cat([extractor(frames[s : s + 4]) for s in range(0, FRAMES, 4)])
    assert torch.equal(torch.stack([f for _, f in streamed]), direct)
    assert not torch.equal(direct[0], direct[1])


def test_extract_cli_writes_every_frame_and_resumes(
    cli: Callable[..., Any], args: Callable[..., list[str]], extractor: FeatureExtractor, media: Path, tmp_path: Path
) -> None:
    first = cli(*args(media, tmp_path, "--device", "cpu", "--dtype", "fp32"))
    assert first.returncode == 0, first.stderr
    features = open_features(tmp_path)
    names = [i.name for i in list_items(media)]
    assert {r["name"]: r["status"] for r in features.records} == dict.fromkeys(names, "done")
    assert sorted(features) == names and {r["frame"] for r in features.records if r["name"] == "clip/000005"} == {5}
    streamed = dict(extractor.stream(media / "clip2.mkv"))  # other batches than the run's shards of 5: fp32 tolerance
    for name, expected in streamed.items():
        np.testing.assert_allclose(features[name][0], expected.numpy(), atol=1e-5, rtol=0)
    before = run_files(tmp_path / RUN)
    again = cli(*args(media, tmp_path, "--device", "cpu", "--dtype", "fp32", "--resume"))
    assert again.returncode == 0 and f"0 done, {len(names)} already done" in again.stdout
    assert run_files(tmp_path / RUN) == before


def test_a_corrupt_video_fails_alone(
    cli: Callable[..., Any], args: Callable[..., list[str]], media: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png", 0)
    good = (media / "clip.mp4").read_bytes()
    (folder / "clip.mp4").write_bytes(good)
    (folder / "noise.mp4").write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "cut.mp4").write_bytes(good[: len(good) // 2])  # index at the end: cannot be opened
    # index first (faststart), data cut: the container states 12 frames, fewer decode
    short = write_video(tmp_path / "short.mp4", options={"movflags": "faststart"}).read_bytes()
    (folder / "short.mp4").write_bytes(short[: len(short) * 6 // 10])
    result = cli(*args(folder, tmp_path / "out", "--device", "cpu"))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert "failed: noise: cannot read video" in result.stdout and "failed: cut: cannot read video" in result.stdout
    records = {r["name"]: r for r in open_features(tmp_path / "out").records}
    assert records["noise"]["status"] == records["cut"]["status"] == "failed"
    assert all(records[f"clip/{i:06d}"]["status"] == "done" for i in range(FRAMES)) and records["a"]["status"] == "done"
    short_frames = [records[f"short/{i:06d}"] for i in range(FRAMES)]
    done = [r["status"] for r in short_frames].count("done")
    assert 0 < done < FRAMES and all("video ended after" in r["reason"] for r in short_frames[done:])


def test_worker_processes_split_a_video_and_write_the_same_bytes(
    cli: Callable[..., Any], args: Callable[..., list[str]], media: Path, tmp_path: Path
) -> None:
    # 21 items in shards of 5: both workers decode clip.mp4, each its own shards of it
    one = cli(*args(media, tmp_path / "one", "--device", "cpu"))
    two = cli(*args(media, tmp_path / "two", "--devices", "cpu,cpu"))
    assert one.returncode == two.returncode == 0, two.stderr
    assert "worker0 cpu 3" in two.stdout and "worker1 cpu 2" in two.stdout  # shard j on worker j % 2
    assert run_files(tmp_path / "two" / RUN) == run_files(tmp_path / "one" / RUN)
