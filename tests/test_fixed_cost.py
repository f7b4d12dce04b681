"""A run's fixed cost (issue 24): the checkpoint hashed once across processes, Inductor's compile workers
started only for graphs not compiled before, and the command's exit without the interpreter's teardown,
each without losing anything."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lseg_trt import compile_workers, files

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _aged(path: Path) -> None:
    """Move a file's modification time out of `file_version`'s two-second "racy" window."""
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 10**10))


@pytest.fixture
def small_recall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Files from 1000 bytes on are recorded, in a cache folder of this test's own (returned)."""
    monkeypatch.setattr(files, "RECALL_FROM_BYTES", 1000)
    monkeypatch.setattr(files, "_hashed", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "lseg-trt" / "sha256"


def _hash_in_new_process(path: Path) -> str:
    """`file_sha256` as a later process sees it: nothing remembered in memory."""
    files._hashed.clear()
    return files.file_sha256(path)


def test_a_large_file_is_hashed_once_across_processes(
    tmp_path: Path, small_recall: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"a" * 5000)
    _aged(weights)
    first = files.file_sha256(weights)
    assert first == files._sha256(weights)
    real_sha256 = files._sha256
    monkeypatch.setattr(files, "_sha256", lambda path: pytest.fail("hashed again although recorded"))
    assert _hash_in_new_process(weights) == first

    weights.write_bytes(b"b" * 5000)  # same size; the old modification time put back, the change time moves
    os.utime(weights, ns=(weights.stat().st_atime_ns, os.stat(weights).st_mtime_ns - 10**10))
    monkeypatch.setattr(files, "_sha256", real_sha256)
    assert _hash_in_new_process(weights) == real_sha256(weights) != first


def test_small_files_and_damaged_records_are_hashed(tmp_path: Path, small_recall: Path) -> None:
    small = tmp_path / "small.onnx"
    small.write_bytes(b"x" * 10)
    _aged(small)
    files.file_sha256(small)
    assert not small_recall.exists()

    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"c" * 5000)
    _aged(weights)
    files.file_sha256(weights)
    (record,) = small_recall.iterdir()
    for damage in ("{", '{"version": 1, "sha256": "0"}', record.read_text().replace('"sha256": "', '"sha256": "z')):
        record.write_text(damage)
        assert _hash_in_new_process(weights) == files._sha256(weights)


@pytest.fixture
def inductor_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty Inductor cache with its graph cache on; Inductor's settings as they were afterwards."""
    from torch._inductor import config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    with config.patch(compile_threads=config.compile_threads, fx_graph_cache=True):
        yield tmp_path / "inductor"


def test_compile_workers_only_for_graphs_not_compiled_before(
    inductor_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor import config

    key = {"shape": [1, 3, 32, 32], "precision": "fp32"}
    assert compile_workers.plan(key) is False
    assert config.compile_threads == config.decide_compile_threads()
    compile_workers.remember(key)
    assert compile_workers.plan(key) is True
    assert config.compile_threads == 1
    assert compile_workers.plan({**key, "precision": "fp16"}) is False  # another graph

    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "3")  # the user's own choice stands
    config.compile_threads = 3
    assert compile_workers.plan(key) is True
    assert config.compile_threads == 3


def test_no_record_where_inductor_keeps_no_graph_cache(inductor_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import config

    config.fx_graph_cache = False
    compile_workers.remember({"shape": [1]})
    assert compile_workers.plan({"shape": [1]}) is False
    assert not (inductor_cache / compile_workers.RECORD_FOLDER).exists()


@pytest.mark.slow  # two Inductor compiles of the tiny network on the CPU
def test_a_graph_compiled_before_compiles_without_workers(tiny_vit, inductor_cache: Path) -> None:  # noqa: ANN001
    """Inductor's worker pool serves Triton kernels (GPUs); what the CPU can check is the setting each
    compile ran with, and that the second compile, answered by Inductor's cache, gives the same features."""
    from torch._inductor import config

    from lseg_trt.backends import parse_backend
    from lseg_trt.backends.torch import TorchCompileRunner

    x = torch.rand(1, 3, 64, 64)
    outputs, threads = [], []
    for _ in range(2):
        with TorchCompileRunner(tiny_vit.image_encoder, parse_backend("torch-compile"), "cpu") as runner:
            outputs.append(runner.infer(x).clone())
            threads.append(config.compile_threads)
        assert len(list((inductor_cache / compile_workers.RECORD_FOLDER).iterdir())) == 1
    assert threads == [config.decide_compile_threads(), 1]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_leave_flushes_what_was_printed() -> None:
    done = _run_python(
        "import sys, logging; from lseg_trt.cli import leave\n"
        "logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"
        "print('summary', end=''); sys.stderr.write('note'); logging.getLogger('x').info('logged')\n"
        "leave(3)"
    )
    assert (done.returncode, done.stdout) == (3, "summary")
    assert done.stderr.startswith("note") and "logged" in done.stderr


def test_leave_waits_for_a_thread_still_working(tmp_path: Path) -> None:
    marker = tmp_path / "written"
    done = _run_python(
        "import threading, time; from pathlib import Path; from lseg_trt.cli import leave\n"
        f"work = threading.Thread(target=lambda: (time.sleep(0.5), Path({str(marker)!r}).write_text('x')))\n"
        "work.start(); leave(0)"
    )
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "x"


def test_extract_command_exits_with_its_results_complete(tiny_vit_ckpt: Path, tmp_path: Path) -> None:
    """The console script's path end to end: the summary reaches a pipe and the run folder is whole."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 40, 90, 200)).save(images / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-m", "lseg_trt.cli", "extract", "--weights", str(tiny_vit_ckpt), "--images", str(images),
         "--sizes", "64", "--backend", "torch", "--device", "cpu", "--out", str(tmp_path / "out"),
         "--cache", str(tmp_path / "models")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("backend: torch (given)")
    assert "3 done" in done.stdout
    from lseg_trt.extraction import open_features

    (run,) = (tmp_path / "out").rglob("*.run")
    assert len(open_features(run)) == 3
