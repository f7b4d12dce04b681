"""`--devices all`: one worker process per GPU of a host, writing the files a one-GPU run writes.

The parent lists the items, plans the shards and opens the run folder (run.json, PCA basis) once,
then puts every shard on a shared queue, followed by one stop marker per worker. Each worker builds
its own `FeatureExtractor` on its device and takes the next shard whenever its pipeline needs more
input, so a faster or less loaded GPU does more shards (video frames keep a fixed split: see
`_task_queues`). Shards are fixed slices of the sorted items
and every shard is written atomically with its manifest last, so the result does not depend on which
worker ran which shard, and a worker that dies leaves only complete shards (it loses the shards it had
taken: its decoder reads 32 items ahead, plus the batches in flight, so with small shards that can be
several): the parent names its device, and `--resume` does the rest.

Workers are forked from multiprocessing's fork server, which imports torch and this package once
(`start_worker_server` starts it early, so that its imports overlap the parent's own preparation):
spawned workers each imported them themselves, about 10 s on the H200 host, two at once slower still.
The server never initialises CUDA, so every worker sets up its own GPU as a spawned one did, and it
takes the parent's environment of the moment (`_worker`), not the server's, older one.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.extractor import FeatureExtractor, default_workers, usable_cores
from lseg_trt.extraction.manifest import read_manifest
from lseg_trt.extraction.run import RunOutput, ShardSpec, Summary, run_shards
from lseg_trt.files import FileVersion, known_sha256s, remember_sha256s

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue

log = logging.getLogger(__name__)

# Fault injection for tests and drills: a path; the first worker (or Ray actor) to reach the end of a
# shard while it does not exist creates it and exits at once, as a crashed or pre-empted worker would.
FAIL_ONCE_ENV = "LSEG_TRT_FAIL_ONCE"


@dataclass(frozen=True)
class ExtractorSpec:
    """How to build the same `FeatureExtractor` in another process (picklable, unlike a loaded model)."""

    weights: str | None = None
    onnx: str | None = None
    engine: str | None = None
    variant: str | None = None
    backend: str | None = None
    size: tuple[int, int] = (480, 640)
    batch_size: int = 8
    cache_dir: str = "models"
    workers: int = default_workers()
    # torch threads of a CPU worker: CPU results depend on the thread count, so the coordinator passes its
    # own to give a one-process run's bytes (Ray would otherwise pin an actor to its `num_cpus`)
    cpu_threads: int | None = None
    # torch threads of a GPU worker: its share of the host's cores. Workers that each take every core
    # oversubscribe them, and OpenMP's spinning threads then crawl: side by side, two H200 workers loaded
    # their model (a finiteness check and casts over 1.3 GB) in 11 s instead of 2.2 s alone. Inductor's
    # compile pool gets the same share: each process that compiles starts one of min(32, cores) processes,
    # even when every kernel comes from its cache (the warm-up also grew side by side, 7.7 s to 9-12 s;
    # the pool's share is not yet measured on the GPU host). A user's OMP_NUM_THREADS or
    # TORCHINDUCTOR_COMPILE_THREADS is kept.
    gpu_threads: int | None = None
    # the coordinator's file hashes (`with_known_hashes`): each worker would otherwise hash the checkpoint
    # again for its manifests, about 1 s for ViT-L/16's 1.7 GB, in every worker's start
    known_sha256: tuple[tuple[FileVersion, str], ...] = ()

    def with_known_hashes(self) -> ExtractorSpec:
        """This spec carrying the hashes this process has made (see `lseg_trt.files.known_sha256s`)."""
        return dataclasses.replace(self, known_sha256=tuple(known_sha256s().items()))

    def place(self, device: str) -> None:
        """Make `device` this process's own (for a GPU, CUDA initialises here)."""
        import torch

        remember_sha256s(dict(self.known_sha256))

        if device == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        elif device.startswith("cuda"):  # this process's GPU is its default: streams, graphs, compiled code
            if self.gpu_threads and "OMP_NUM_THREADS" not in os.environ:
                torch.set_num_threads(self.gpu_threads)
            if self.gpu_threads and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
                import torch._inductor.config

                torch._inductor.config.compile_threads = self.gpu_threads
            torch.cuda.set_device(torch.device(device).index or 0)  # Ray actors name plain "cuda"

    def build(self, device: str) -> FeatureExtractor:
        self.place(device)
        return self.open_on(device)

    def open_on(self, device: str) -> FeatureExtractor:
        """The extractor on `device`, already placed (`place`)."""
        return FeatureExtractor.open(
            weights=self.weights, onnx=self.onnx, engine=self.engine, variant=self.variant, backend=self.backend,
            size=self.size, batch_size=self.batch_size, device=device, cache_dir=self.cache_dir, workers=self.workers,
        )  # fmt: skip


def parse_devices(text: str) -> list[str]:
    """`all`, or a comma list of `cuda:N` / `cpu` (cpu may repeat: several CPU workers, for tests)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text.strip() == "all":
        if count == 0:
            raise LsegTrtError("--devices all: this machine has no CUDA GPU (use --devices cpu)")
        return [f"cuda:{i}" for i in range(count)]
    from lseg_trt.backends.base import checked_device

    checked = [checked_device(part.strip(), "--devices", "all, cpu or cuda:N") for part in text.split(",")]
    devices = ["cuda:0" if d == "cuda" else d for d in checked]  # one name per GPU, for the twice check
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise LsegTrtError(f"--devices {text}: a GPU is named twice")
    return devices


def fail_once_here() -> None:
    """Exit this process without cleanup, once per marker file named by `LSEG_TRT_FAIL_ONCE`."""
    marker = os.environ.get(FAIL_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    except OSError as e:
        log.warning("%s=%s: cannot create it (%s); not failing", FAIL_ONCE_ENV, marker, e.strerror)
        return
    os.close(fd)
    log.warning("%s: exiting on purpose", FAIL_ONCE_ENV)
    os._exit(17)


# The queues are filled before any worker starts, so a get waits only for another worker's read. A
# worker killed inside its own get (SIGKILL, the OOM killer) keeps the queue's lock for ever; the others
# then stop after this long instead of hanging, and the parent reports them for --resume.
CLAIM_TIMEOUT_S = 120.0


def _claimed(tasks: Queue) -> Iterator[ShardSpec]:
    """This worker's shards: taken from the parent's queue one at a time, until its stop marker."""
    while True:
        try:
            shard = tasks.get(timeout=CLAIM_TIMEOUT_S)
        except queue.Empty:
            waited = f"{CLAIM_TIMEOUT_S:.0f} s"
            raise LsegTrtError(f"no shard from the work queue in {waited}: a worker died holding it") from None
        if shard is None:
            return
        yield shard


# imported by the fork server before it forks any worker
# (on Python 3.10 nothing: see `start_worker_server`)
PRELOAD = ["lseg_trt.extraction.multi_gpu"] if sys.version_info >= (3, 11) else []


def worker_context() -> BaseContext:
    """The multiprocessing context of worker processes: the fork server, preloading `PRELOAD`."""
    import torch.multiprocessing as mp

    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_worker_server() -> None:
    """Start the fork server now (it imports in the background), with a safe module path.

    The server runs as `python -c ...`, so its module path begins with the current folder, and Python
    before 3.12.8 does not give it the parent's path: its preload would import any `torch.py`, `yaml.py`
    or `lseg_trt/` found in the folder the user runs from (a dataset folder, say). PYTHONSAFEPATH (3.11+)
    leaves that entry out; on 3.10 nothing is preloaded, and each worker imports after multiprocessing has
    set the parent's path, as a spawned one did.
    """
    from multiprocessing import forkserver

    worker_context()
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = before


def _worker(
    spec: ExtractorSpec,
    name: str,
    tasks: Queue,
    output: RunOutput,
    results: Queue,
    spawned: float,
    environment: dict[str, str],
) -> None:
    """A user-causable failure ends the worker with one line and exit code 2, as the CLI does; the parent
    then names the device and `--resume` picks up its shards. `spawned`: the parent's clock (time.time)
    when it started this process; `environment`: the parent's, which a forked worker would not see."""
    os.environ.clear()
    os.environ.update(environment)
    try:
        _work(spec, name, tasks, output, results, spawned)
    except LsegTrtError as e:
        print(f"lseg-trt extract: error: {name}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal's group: the parent reports it
        sys.exit(130)


def _work(spec: ExtractorSpec, name: str, tasks: Queue, output: RunOutput, results: Queue, spawned: float) -> None:
    import torch

    entered = time.time()  # after the interpreter started and unpickled the arguments (importing this package)
    device = name.split()[-1]
    spec.place(device)
    placed = time.time()
    extractor = spec.open_on(device)
    built = time.time()
    with extractor:  # activation: the warm-up batch compiles or loads kernels and captures graphs
        now = time.time()
        startup = {"imports": entered - spawned, "device": placed - entered, "model": built - placed}
        startup["warmup"] = now - built
        # its parts: the runner's activation (weights onto the device), the warm-up calls (the first
        # compiles or loads kernels) and CUDA graph capture; the rest of the warm-up batch is not split
        startup.update({f"warmup: {step}": s for step, s in extractor.runner.setup_seconds.items()})
        startup["threads"] = torch.get_num_threads()  # not a stage: which share of the cores it ran on
        startup["total"] = now - spawned
        start = time.perf_counter()
        shards = _claimed(tasks)
        summaries: list[Summary] = []
        if os.environ.get(FAIL_ONCE_ENV):
            # the first shard runs alone and the next is taken before the exit, so the exit falls between
            # two shards while this worker holds one, as a worker that dies mid-run does
            summaries.append(run_shards(extractor, itertools.islice(shards, 1), output, progress=False))
            taken = list(itertools.islice(shards, 1))
            fail_once_here()
            shards = itertools.chain(taken, shards)
        summaries.append(run_shards(extractor, shards, output, progress=False))
        written = sorted({record["shard"] for summary in summaries for record in summary.records})
        stages: Counter[str] = Counter()
        for summary in summaries:
            stages.update(summary.timings)  # adds each stage's seconds
        results.put((name, time.perf_counter() - start, written, startup, dict(stages)))


def sharing_cores(spec: ExtractorSpec, workers: int) -> ExtractorSpec:
    """`spec` with GPU workers' torch threads set to their share of the cores this process may use
    (its affinity: a scheduler's limit), unless set."""
    if spec.gpu_threads is not None:
        return spec
    return dataclasses.replace(spec, gpu_threads=max(1, usable_cores() // max(1, workers)))


def run_devices(spec: ExtractorSpec, devices: list[str], shards: list[ShardSpec], output: RunOutput) -> Summary:
    """Run `shards` on one worker process per device, each taking the next shard from a shared queue;
    see the module doc.

    The summary's records come from the manifests the workers wrote; `timings` holds each worker's
    seconds after its model is loaded and warm, `startup_by_worker` its seconds from spawn to then (imports,
    device (CUDA initialisation), model, warmup, total) and its torch threads, and
    `shards_by_worker` the shards it wrote, `stages_by_worker` its seconds per pipeline stage (where its
    time went: waiting for input or for the disk, the shards' fsyncs), all keyed `worker<w> <device>`.
    With fewer shards than devices, the devices left over start no process.
    """
    start_worker_server()  # never started lazily by the first worker, without the safe path
    context = worker_context()
    results = context.Queue()
    used = devices[: len(shards)]
    spec = sharing_cores(spec, len(used)).with_known_hashes()
    queues = _task_queues(context, shards, len(used))
    start = time.perf_counter()
    processes = {}
    for w, device in enumerate(used):
        name = f"worker{w} {device}"
        args = (spec, name, queues[w], output, results, time.time(), dict(os.environ))
        processes[name] = context.Process(target=_worker, args=args)
        try:
            processes[name].start()
        except (EOFError, OSError) as e:  # the fork server died or could not import this package
            raise LsegTrtError(f"could not start a worker process for {device}: {e!r}") from None
    log.info("%d shards on %d worker(s): %s", len(shards), len(processes), ", ".join(processes))
    reports = _reports(processes, results)
    summary = Summary(output.layout.run_dir, seconds=time.perf_counter() - start)
    for name, seconds, written, startup, stages in reports:
        summary.timings[name] = round(seconds, 4)
        summary.startup_by_worker[name] = {stage: round(s, 3) for stage, s in startup.items()}
        summary.stages_by_worker[name] = {stage: round(s, 3) for stage, s in stages.items()}
        summary.shards_by_worker[name] = written
        log.info("%s: ready after %.1f s, %d shards in %.1f s", name, startup["total"], len(written), seconds)
    dead = [(name.split()[-1], p.exitcode) for name, p in processes.items() if p.exitcode != 0]
    if dead:
        named = ", ".join(f"{device} (exit code {code})" for device, code in dead)
        raise LsegTrtError(f"worker on {named} died; finished shards are kept: rerun with --resume to complete")
    return summary_from_manifests(summary, shards, output.layout.run_dir)


def _reports(processes: dict[str, BaseProcess], results: Queue) -> list[tuple[str, float, list[int], dict, dict]]:
    """Each finished worker's (name, seconds, shards written, startup seconds by stage, pipeline seconds by
    stage), read while the workers run: a child cannot exit before its queued report has gone through the
    pipe (64 KiB on Linux; a long shard list is more), so joining first could wait for ever."""
    reports = []
    while any(p.is_alive() for p in processes.values()) or len(reports) < len(processes):
        try:
            reports.append(results.get(timeout=0.5))
        except queue.Empty:
            if not any(p.is_alive() for p in processes.values()):
                break  # the rest died without a report
    for process in processes.values():
        process.join()
    return reports


def _task_queues(context: BaseContext, shards: list[ShardSpec], workers: int) -> list[Queue]:
    """The queue each worker takes its shards from, each followed by that worker's stop marker.

    Images: one queue shared by all, so a faster GPU takes more shards. Each shard goes on it whole: it
    is pickled once, for the worker that takes it, where a shared counter would send every worker the
    whole plan. Videos: shard j on worker j % n's own queue, as a video decodes in one pass from its
    start and a shared queue would hand the first worker to reach it all of its queued shards.
    """
    video = any(item.frame is not None for shard in shards for item in shard.items)
    queues = [context.Queue() for _ in range(workers)] if video else [context.Queue()] * workers
    for tasks in dict.fromkeys(queues):  # shards left on a queue by a dead worker are not waited for: --resume
        tasks.cancel_join_thread()
    for j, shard in enumerate(shards):
        queues[j % workers].put(shard)
    for tasks in queues:
        tasks.put(None)
    return queues


def summary_from_manifests(summary: Summary, shards: list[ShardSpec], run_dir: Path) -> Summary:
    """Fill `summary` from the manifests of `shards`: what other processes did, as recorded on disk."""
    finished = read_manifest(run_dir).shards
    missing = [s.index for s in shards if s.index not in finished]
    if missing:
        raise LsegTrtError(f"shards {missing[:10]} have no manifest after the run; rerun with --resume")
    for shard in shards:
        summary.count(finished[shard.index])
    return summary
