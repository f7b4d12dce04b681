"""Scale-out on CPU with the tiny network: `--shard K/N` tasks, `--devices cpu,cpu` worker processes and
Ray actors must write exactly what a one-process run writes, survive a dead worker, and refuse bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from conftest import run_files
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction import FeatureExtractor, list_items, multi_gpu, plan_shards
from lseg_trt.extraction.multi_gpu import FAIL_ONCE_ENV, ExtractorSpec, parse_devices, run_devices, worker_context
from lseg_trt.extraction.partition import Task, check_runs, parse_task, plan_task, task_of
from lseg_trt.extraction.pipeline import STAGES
from lseg_trt.extraction.run import RunOptions, pending_shards, prepare_run

RUN = Path("torch/tiny_vit/tiny_vit/64x96-shards.run")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(1)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / f"f{i:02d}.png")
    return root


@pytest.fixture
def args(tiny_vit_ckpt: Path, images: Path) -> Callable[..., list[str]]:
    def make(out: Path, *extra: str) -> list[str]:
        common = [
            "--weights",
            tiny_vit_ckpt,
            "--backend",
            "torch",
            "--images",
            images,
            "--sizes",
            "64x96",
            "--batch",
            "2",
        ]
        return ["extract", *common, "--workers", "1", "--shard-size", "2", "--out", out, *extra]

    return make


@pytest.fixture(scope="module")
def plain(tiny_vit_ckpt: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-process run: what every scale-out must reproduce."""
    from lseg_trt.cli import main

    out = tmp_path_factory.mktemp("plain")
    common = ["--weights", tiny_vit_ckpt, "--backend", "torch", "--images", images, "--sizes", "64x96", "--batch", "2"]
    common += ["--workers", "1"]
    assert main([str(a) for a in ["extract", *common, "--shard-size", "2", "--out", out, "--device", "cpu"]]) == 0
    return out / RUN


def _features(run_dir: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for path in sorted((run_dir / "shards").glob("*.safetensors")):
        for name, array in load_file(path).items():
            assert name not in found
            found[name] = array.tobytes()
    return found


# ---- partition ---------------------------------------------------------------------------------------


def test_task_parsing_and_stable_partition(images: Path) -> None:
    assert parse_task(" 2/4 ") == Task(2, 4)
    for bad in ("4/4", "-1/4", "1/0", "x", "1/2/3", "a/b", ""):
        with pytest.raises(LsegTrtError):
            parse_task(bad)
    names = [f"cam{c}/{i:06d}" for c in range(3) for i in range(200)]
    before = {n: task_of(n, 4) for n in names}
    more = names + [f"cam9/{i:06d}" for i in range(50)]
    assert {n: task_of(n, 4) for n in more if n in before} == before  # adding files moves nothing
    assert all(100 < sum(t == k for t in before.values()) < 200 for k in range(4))  # roughly even
    items = list_items(images)
    assert plan_task(items, 2) == plan_shards(items, 2)  # one task is a plain run
    plans = [plan_task(items, 2, Task(k, 3)) for k in range(3)]
    indices = [s.index for plan in plans for s in plan]
    assert len(indices) == len(set(indices))
    assert sorted(i.name for plan in plans for s in plan for i in s.items) == [i.name for i in items]


def test_shard_tasks_check_and_merge(
    cli: Callable[..., Any], args: Callable[..., list[str]], plain: Path, images: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    for k in range(3):
        result = cli(*args(shared, "--shard", f"{k}/3", "--device", "cpu"))
        assert result.returncode == 0, result.stderr
        if k == 0:
            assert not check_runs([shared / RUN], list_items(images)).ok  # tasks 1, 2 still missing
    assert check_runs([shared / RUN], list_items(images)).ok
    assert _features(shared / RUN) == _features(plain)
    assert cli("manifest", "check", shared / RUN, "--images", images).returncode == 0

    # tasks writing to their own roots, merged into one run folder
    parts = [tmp_path / f"task{k}" for k in range(2)]
    for k, part in enumerate(parts):
        assert cli(*args(part, "--shard", f"{k}/2", "--device", "cpu")).returncode == 0
    merged = tmp_path / "merged"
    result = cli("manifest", "merge", *[p / RUN for p in parts], "--out", merged)
    assert result.returncode == 0, result.stderr
    assert _features(merged / RUN) == _features(plain)
    assert cli("manifest", "check", merged / RUN, "--images", images).returncode == 0

    # refused, nothing touched: the same task twice, a different size, a bad --shard
    before = run_files(merged / RUN)
    twice = cli("manifest", "merge", parts[0] / RUN, parts[0] / RUN, "--out", tmp_path / "m2")
    assert twice.returncode == 2 and "twice" in twice.stderr and not (tmp_path / "m2" / "torch").exists()
    other = tmp_path / "other"
    assert cli(*args(other, "--shard", "1/2", "--device", "cpu", "--sizes", "32x64")).returncode == 0
    other_run = other / "torch/tiny_vit/tiny_vit/32x64-shards.run"
    mixed = cli("manifest", "merge", parts[0] / RUN, other_run, "--out", merged)
    assert mixed.returncode == 2 and "different runs" in mixed.stderr and "size" in mixed.stderr
    assert run_files(merged / RUN) == before
    for bad in ("2/2", "1of2"):
        result = cli(*args(tmp_path / "bad", "--shard", bad, "--device", "cpu"))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# ---- several worker processes ------------------------------------------------------------------------


def test_devices_parsing() -> None:
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    for bad in ("cuda:7", "tpu:0", "cpu,bogus"):
        with pytest.raises(LsegTrtError):
            parse_devices(bad)


def test_gpu_workers_take_their_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two GPU workers that each ran every core on its own host's OpenMP threads loaded their models 5x
    slower side by side (H200 pair; benchmarks/results/cpu-2026-11-26 reproduces it here). No GPU here:
    CUDA's `set_device` is the one stand-in, recording the index it is given. A user's OMP_NUM_THREADS
    or TORCHINDUCTOR_COMPILE_THREADS wins."""
    import torch._inductor.config as inductor

    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for variable in ("OMP_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(inductor, "compile_threads", inductor.compile_threads)  # restored afterwards
    threads = torch.get_num_threads()
    try:
        spec = multi_gpu.sharing_cores(ExtractorSpec(cpu_threads=threads), workers=2)
        assert spec.gpu_threads == max(1, len(os.sched_getaffinity(0)) // 2)
        assert multi_gpu.sharing_cores(spec, workers=8) is spec  # a share set by the caller stays
        ExtractorSpec(gpu_threads=1).place("cuda:1")
        assert torch.get_num_threads() == 1 and inductor.compile_threads == 1 and chosen == [1]
        ExtractorSpec(cpu_threads=threads, gpu_threads=1).place("cpu")  # CPU workers: the coordinator's count
        assert torch.get_num_threads() == threads
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
        monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "3")
        inductor.compile_threads = 5
        ExtractorSpec(gpu_threads=1).place("cuda:0")
        assert torch.get_num_threads() == threads and inductor.compile_threads == 5
    finally:
        torch.set_num_threads(threads)


def test_workers_take_the_coordinators_file_hashes(
    tiny_vit_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle
    import shutil

    from lseg_trt import files

    weights = shutil.copy(tiny_vit_ckpt, tmp_path / "weights.ckpt")
    old = time.time_ns() - 10_000_000_000
    os.utime(weights, ns=(old, old))
    monkeypatch.setattr(files, "_hashed", {files.file_version(weights): "0" * 64})  # the coordinator's word
    spec = pickle.loads(pickle.dumps(ExtractorSpec(str(weights)).with_known_hashes()))  # as a worker gets it
    monkeypatch.setattr(files, "_hashed", {})  # a fresh worker process
    spec.place("cpu")
    assert files.file_sha256(weights) == "0" * 64  # taken, not hashed again (the real hash differs)
    Path(weights).write_bytes(b"changed")  # a file changed since is hashed again
    assert files.file_sha256(weights) == files._sha256(weights) != "0" * 64


def test_decode_threads_count_the_cores_a_scheduler_gave(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task given 4 of a host's 64 cores (SLURM's --cpus-per-task, taskset) decodes on 3 threads, not 8.
    The OS is asked through os.sched_getaffinity: on this 2-core machine only a stand-in can give 4."""
    from lseg_trt.extraction.extractor import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    assert default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers() == 8


def test_worker_processes_match_one_process_and_resume_after_a_death(
    cli: Callable[..., Any],
    args: Callable[..., list[str]],
    plain: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one of two workers dies after its first shard, holding the next; the resume redoes it on two workers.
    # The coordinator opens the run from the declared feature shape: only the workers run models.
    def refuse(self: FeatureExtractor) -> FeatureExtractor:
        raise AssertionError("the coordinator ran a model")

    monkeypatch.setattr(FeatureExtractor, "activate", refuse)
    dying = tmp_path / "dying"
    monkeypatch.setenv(FAIL_ONCE_ENV, str(tmp_path / "died-once"))
    died = cli(*args(dying, "--devices", "cpu,cpu"))
    assert died.returncode == 2 and "worker on cpu (exit code 17) died" in died.stderr
    assert 0 < len(list((dying / RUN / "manifest").glob("*.jsonl"))) < 5
    resumed = cli(*args(dying, "--devices", "cpu,cpu", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert run_files(dying / RUN) == run_files(plain)

    missing = cli(*args(tmp_path / "x", "--devices", "cuda:3"))
    assert missing.returncode == 2 and "cuda:3" in missing.stderr and not (tmp_path / "x" / "torch").exists()


def test_workers_take_shards_from_a_shared_queue(
    cli: Callable[..., Any], args: Callable[..., list[str]], tiny_vit_ckpt: Path, images: Path, tmp_path: Path
) -> None:
    # nine one-image shards on two workers: whoever takes a shard writes it, each exactly once, and the
    # files are a one-process run's whatever the split (on 2 cores the first worker up often takes all
    # nine, which a fixed split never gives); a resume of two shards starts two of three workers
    one = tmp_path / "one"
    assert cli(*args(one, "--shard-size", "1", "--device", "cpu")).returncode == 0
    spec = ExtractorSpec(
        str(tiny_vit_ckpt), backend="torch", size=(64, 96), batch_size=2, workers=1, cpu_threads=torch.get_num_threads()
    )
    items = list_items(images)
    shards = plan_shards(items, 1)
    with FeatureExtractor.open(
        weights=spec.weights, backend="torch", size=spec.size, batch_size=2, device="cpu", workers=1
    ) as e:
        output = prepare_run(e, items, tmp_path / "queue", RunOptions(shard_size=1))
        summary = run_devices(spec, ["cpu", "cpu"], shards, output)
        taken = sorted(i for written in summary.shards_by_worker.values() for i in written)
        assert taken == list(range(9)) and summary.done == 9, summary.shards_by_worker
        assert set(summary.timings) == set(summary.shards_by_worker) == {"worker0 cpu", "worker1 cpu"}
        assert set(summary.startup_by_worker) == set(summary.timings)
        for startup in summary.startup_by_worker.values():
            parts = startup["imports"] + startup["device"] + startup["model"] + startup["warmup"]
            assert 0 < startup["total"] < summary.seconds and abs(parts - startup["total"]) < 0.01, startup
            assert startup["threads"] == torch.get_num_threads()  # CPU workers: the coordinator's count
        assert set(summary.stages_by_worker) == set(summary.timings)
        for name, stages in summary.stages_by_worker.items():  # where each worker's time went, reported back
            assert set(STAGES) <= set(stages), stages
            if summary.shards_by_worker[name]:  # it computed and made durable (fsync'ed) at least one shard
                assert min(stages["compute"], stages["commit"]) > 0, stages
        assert run_files(tmp_path / "queue" / RUN) == run_files(one / RUN)

        for index in (3, 7):
            output.layout.shard_manifest(index).unlink()
        resumed = prepare_run(e, items, tmp_path / "queue", RunOptions(shard_size=1, resume=True))
        todo = pending_shards(shards, resumed).todo
        assert [s.index for s in todo] == [3, 7]
        summary = run_devices(spec, ["cpu", "cpu", "cpu"], todo, resumed)
    assert len(summary.shards_by_worker) == 2 and summary.done == 2
    assert run_files(tmp_path / "queue" / RUN) == run_files(one / RUN)


# ---- Ray ---------------------------------------------------------------------------------------------

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray not installed ("lseg-trt[ray]")')


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A local Ray on 2 CPUs. Its workers inherit the fault-injection marker path; the fault is armed by
    deleting the marker (the first actor to finish a shard then dies once)."""
    import ray

    marker = tmp_path_factory.mktemp("ray") / "died-once"
    marker.touch()
    os.environ[FAIL_ONCE_ENV] = str(marker)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        del os.environ[FAIL_ONCE_ENV]
    yield marker
    ray.shutdown()


@needs_ray
@pytest.mark.slow  # starts a local Ray instance (~20 s)
def test_ray_actors_match_one_process_and_survive_a_dead_actor(
    cli: Callable[..., Any], args: Callable[..., list[str]], plain: Path, ray_cluster: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    result = cli(*args(out, "--ray", "--actors", "2"))
    assert result.returncode == 0, result.stderr
    assert run_files(out / RUN) == run_files(plain)

    ray_cluster.unlink()  # arm: one actor exits after writing its first shard, before returning its records
    killed = tmp_path / "killed"
    result = cli(*args(killed, "--ray", "--actors", "2"))
    assert result.returncode == 0, result.stderr
    assert ray_cluster.exists()  # the fault did happen
    assert run_files(killed / RUN) == run_files(plain)
    records = [json.loads(line) for p in sorted((killed / RUN / "manifest").glob("*.jsonl")) for line in p.open()]
    assert sorted(r["name"] for r in records) == sorted(json.loads(r)["name"] for r in _records(plain))


def _records(run_dir: Path) -> list[str]:
    return [line for p in sorted((run_dir / "manifest").glob("*.jsonl")) for line in p.read_text().splitlines()]


@needs_ray
@pytest.mark.slow  # starts a local Ray instance (~20 s)
def test_ray_address_that_does_not_answer(
    cli: Callable[..., Any], args: Callable[..., list[str]], tmp_path: Path
) -> None:
    start = time.perf_counter()
    result = cli(*args(tmp_path, "--ray", "127.0.0.1:9"))
    assert result.returncode == 2 and "no Ray cluster answers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and time.perf_counter() - start < 30
    assert not (tmp_path / "torch").exists()


def test_ray_refuses_a_working_folder_that_holds_python_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray puts the working folder on its workers' module path: a `numpy.py` there would run in them."""
    pytest.importorskip("ray", reason="Ray not installed")
    from lseg_trt.extraction.ray_data import connect

    (tmp_path / "numpy.py").write_text("raise SystemExit('must never run')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LsegTrtError, match=r"holds Python code \(numpy.py\)"):
        connect(None)


def test_a_fail_once_marker_that_cannot_be_made_does_not_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lseg_trt.extraction.multi_gpu import fail_once_here

    monkeypatch.setenv(FAIL_ONCE_ENV, str(tmp_path / "missing" / "marker"))
    fail_once_here()  # returns: the process goes on


def _drain(queue: Any) -> list[int | None]:
    taken = []
    while (shard := queue.get(timeout=5)) is not None:
        taken.append(shard.index)
    return taken + [None]


def test_the_fork_server_imports_nothing_from_the_current_folder(tmp_path: Path) -> None:
    """Workers started from a folder holding a module the server would preload must not run it: users
    run extraction from dataset folders, which are not code. (The driver is a script elsewhere, as the
    console script is, so the parent's own path does not hold that folder.)"""
    data, marker, driver = tmp_path / "data", tmp_path / "ran", tmp_path / "bin" / "driver.py"
    (data / "lseg_trt").mkdir(parents=True)
    (data / "lseg_trt" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    driver.parent.mkdir()
    driver.write_text(
        "import os\n"
        "from lseg_trt.extraction.multi_gpu import start_worker_server, worker_context\n"
        "if __name__ == '__main__':\n"
        "    start_worker_server()\n"
        "    p = worker_context().Process(target=os.getpid)\n"
        "    p.start(); p.join(); print(p.exitcode)\n"
    )
    done = subprocess.run([sys.executable, driver], cwd=data, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("video", [False, True])
def test_task_queues_share_images_and_split_videos(video: bool) -> None:
    """Images: one queue for all workers (the fastest takes most). Video frames: shard j on worker j % n,
    since a video decodes in one pass from its start and one worker would otherwise take all of it."""
    from lseg_trt.extraction.multi_gpu import _task_queues
    from lseg_trt.extraction.run import ShardSpec
    from lseg_trt.extraction.sources import Item

    def item(j: int) -> Item:
        return Item(f"x{j}", Path("clip.mp4" if video else f"x{j}.png"), 1, 1, j if video else None)

    shards = [ShardSpec(j, (item(j),)) for j in range(5)]
    queues = _task_queues(worker_context(), shards, 2)
    if video:
        assert queues[0] is not queues[1]
        assert [_drain(q) for q in queues] == [[0, 2, 4, None], [1, 3, None]]
    else:
        assert queues[0] is queues[1]
        assert _drain(queues[0]) == [0, 1, 2, 3, 4, None]
        assert queues[0].get(timeout=5) is None  # one stop marker per worker


def test_a_worker_stops_when_the_queue_stays_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed inside its get keeps the queue's lock; the others must fail, not hang."""
    from lseg_trt.extraction import multi_gpu

    monkeypatch.setattr(multi_gpu, "CLAIM_TIMEOUT_S", 0.2)
    tasks = worker_context().Queue()
    tasks._rlock.acquire()  # what a worker killed inside `get` leaves behind
    with pytest.raises(LsegTrtError, match="a worker died holding it"):
        next(multi_gpu._claimed(tasks))


def test_reports_larger_than_a_pipe_do_not_hang_the_parent() -> None:
    """A worker's report (its shard list) can exceed the pipe's 64 KiB; it exits only once that is read."""
    from lseg_trt.extraction.multi_gpu import _reports

    context = worker_context()
    results = context.Queue()
    report = ("worker0 cpu", 1.0, list(range(100_000)))  # about 500 KB pickled
    process = context.Process(target=results.put, args=(report,))
    process.start()
    started = time.perf_counter()
    assert _reports({"worker0 cpu": process}, results) == [report]
    assert process.exitcode == 0 and time.perf_counter() - started < 60


def test_a_worker_ends_a_user_error_with_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lseg_trt.extraction.multi_gpu import _worker

    results = worker_context().Queue()
    spec = ExtractorSpec(weights=str(tmp_path / "missing.ckpt"))
    with pytest.raises(SystemExit) as exit_info:
        _worker(spec, "worker0 cpu", results, None, results, 0.0, dict(os.environ))  # type: ignore[arg-type]
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lseg-trt extract: error: worker0 cpu: ") and "\n" not in err and "Traceback" not in err
