"""Extraction runs: items -> fixed shards -> features written by background threads, with a manifest.

The unit of work is a shard: items sorted by name, shard j = items [j*S, (j+1)*S). `run_shards` does
any subset of a plan, even one that arrives while it runs (the shards a worker claims from a shared
queue), and `extract_shard` one shard, writing the same files as a one-process run, so several GPUs
of a host, `--shard K/N` tasks of a scheduler and Ray actors can all share them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lseg_trt._version import __version__
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.extractor import FeatureExtractor
from lseg_trt.extraction.manifest import RunLayout, read_manifest, remove_shard, start_run, write_shard_manifest
from lseg_trt.extraction.pipeline import STAGES, Lane, Timings, background, batches, decode_ahead
from lseg_trt.extraction.reader import FeatureSet
from lseg_trt.extraction.recipes import check_resume, recipe_name
from lseg_trt.extraction.reduce import PCABasis, Reduction, fit_pca
from lseg_trt.extraction.sources import Item, Source, scan
from lseg_trt.extraction.writers import ShardWriter, WriterPool, shard_writer
from lseg_trt.files import file_digest, fingerprint, source_fingerprint

log = logging.getLogger(__name__)

FULL = Reduction()  # fp16, full grid, all channels


@dataclass(frozen=True)
class ShardSpec:
    """A fixed, deterministic group of items: shard `index` of a plan."""

    index: int
    items: tuple[Item, ...]


def plan_shards(items: list[Item], shard_size: int) -> list[ShardSpec]:
    """Items sorted by name, cut into shards of `shard_size` (the last may be shorter)."""
    if shard_size < 1:
        raise LsegTrtError(f"shard size {shard_size}: must be at least 1")
    ordered = sorted(items, key=lambda i: i.name)
    return [ShardSpec(j, tuple(ordered[s : s + shard_size])) for j, s in enumerate(range(0, len(ordered), shard_size))]


@dataclass(frozen=True)
class RunOutput:
    """Where and how a run writes: the layout, the reduction, and the settings its manifest records."""

    layout: RunLayout
    reduction: Reduction
    settings: dict
    item_shape: tuple[int, int, int, int]  # stored per item: (1, C, H, W) after reduction


def layout_for(extractor: FeatureExtractor, out: str | Path, format: str) -> RunLayout:
    """Where this extractor's run of `format` lives under `out`."""
    meta = extractor.metadata
    size, recipe = extractor.size, recipe_name(meta)
    return RunLayout(Path(out), meta["backend"], meta["variant"], meta["weights"], size, format, recipe)


def open_run(
    extractor: FeatureExtractor,
    out: str | Path,
    *,
    format: str = "shards",
    reduction: Reduction = FULL,
    shard_size: int = 64,
    resume: bool = False,
    force: bool = False,
    shared: bool = False,
) -> RunOutput:
    """Create (or reopen, with `resume`) the run folder for this extractor and settings; `shared` when the
    tasks of one run join it (see `manifest.start_run`)."""
    # what the workers of a delegated run would find out only after `--force` removed the old results
    extractor.runner.check_input((extractor.batch_size, 3, *extractor.size))
    feature_shape = extractor.output_shape()
    layout = layout_for(extractor, out, format)
    if resume and not shared:  # tasks joining one run may arrive before its first task writes run.json
        check_resume(layout)
    reduction.check(feature_shape)
    settings = {
        "format": format,
        "size": list(extractor.size),
        "feature_shape": list(feature_shape),
        "shard_size": shard_size,
        "mean": list(extractor.mean),
        "std": list(extractor.std),
        "reduction": reduction.describe(),
        "lseg_trt_version": __version__,
        "batch_size": extractor.batch_size,
        **extractor.metadata,
    }
    start_run(layout, settings, resume=resume, force=force, shared=shared)
    if reduction.pca is not None:
        reduction.pca.save(layout.pca_path)
    shape = (1, *reduction.output_shape(feature_shape))
    return RunOutput(layout, reduction, settings, shape)  # type: ignore[arg-type]


@dataclass
class Summary:
    """What a run did; `ok` is False if any item failed or gave non-finite features."""

    run_dir: Path
    done: int = 0
    skipped: int = 0  # finished in an earlier run (resume)
    notes: list[str] = field(default_factory=list)  # what the listing passed over (`sources.Listing.notes`)
    removed: list[str] = field(default_factory=list)  # items no longer in the input, taken out of the store
    failed: list[tuple[str, str]] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    shards_by_worker: dict[str, list[int]] = field(default_factory=dict)  # worker processes: who wrote what
    startup_by_worker: dict[str, dict[str, float]] = field(default_factory=dict)  # worker processes: spawn to ready
    stages_by_worker: dict[str, dict[str, float]] = field(default_factory=dict)  # worker processes: `timings` each

    @property
    def ok(self) -> bool:
        return not self.failed and not self.nonfinite

    def count(self, records: list[dict]) -> None:
        """Add manifest records to the tallies (done, failed with its reason, non-finite)."""
        for record in records:
            self.records.append(record)
            if record["status"] == "done":
                self.done += 1
            elif record["status"] == "failed":
                self.failed.append((record["name"], record.get("reason", "")))
            else:
                self.nonfinite.append(record["name"])

    def describe(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
        lines = [
            f"{self.done} done, {self.skipped} already done, {len(self.failed)} failed, "
            f"{len(self.nonfinite)} non-finite in {self.seconds:.1f}s ({rate:.1f} images/s) -> {self.run_dir}",
            f"time per stage: {stages}",
        ]
        if self.shards_by_worker:
            lines.append("shards per worker: " + ", ".join(f"{k} {len(v)}" for k, v in self.shards_by_worker.items()))
        if self.removed:
            shown = ", ".join(self.removed[:5]) + (" ..." if len(self.removed) > 5 else "")
            lines.append(f"removed {len(self.removed)} items no longer in the input from the store: {shown}")
        lines += self.notes
        lines += [f"failed: {name}: {reason}" for name, reason in self.failed[:20]]
        lines += [f"non-finite features: {name}" for name in self.nonfinite[:20]]
        return "\n".join(lines)


class _ShardState:
    """Writer-thread side of one shard: its writer and its records in item order."""

    def __init__(self, output: RunOutput, shard: ShardSpec) -> None:
        self.output, self.shard = output, shard
        metadata = {"format": "lseg-trt-features", "shard": str(shard.index)}
        dtype = np.dtype(np.float16 if output.reduction.dtype == "fp16" else np.float32)
        self.writer: ShardWriter = shard_writer(
            output.layout, shard.index, shard.items, output.item_shape, dtype, metadata
        )
        self.records: dict[str, dict] = {}

    def record(self, item: Item, status: str, **fields: object) -> None:
        source = {"source": str(item.path), "bytes": item.bytes, "mtime_ns": item.mtime_ns, "frame": item.frame}
        source |= {"content": item.content, "stat": item.stat}  # what the features were computed from
        self.records[item.name] = {"name": item.name, "shard": self.shard.index, "status": status, **source, **fields}

    def commit(self) -> list[dict]:
        self.writer.commit()
        records = [self.records[item.name] for item in self.shard.items]
        layout = self.output.layout
        base = layout.tree if layout.format == "npy" else layout.run_dir
        stored = {r["file"]: fingerprint(os.stat(base / r["file"])) for r in records if "file" in r}
        for record in records:
            if "file" in record:  # the file as written: a resume reads its checksums only once this moves
                record["stored"] = stored[record["file"]]
        write_shard_manifest(layout, self.shard.index, records)
        return records


def run_shards(
    extractor: FeatureExtractor,
    shards: Iterable[ShardSpec],
    output: RunOutput,
    *,
    progress: bool = True,
    write_depth: int = 8,
    write_threads: int = 2,
) -> Summary:
    """Extract and write `shards` in order, decode, compute and writing overlapping; see `Summary`.
    Each shard is written by one of `write_threads` threads (a shard's items stay in order).

    `shards` is read lazily, as decoding needs more items, so the pipeline stays full across the shards
    of a stream (a queue shared by workers): a shard is taken when the decoder, 32 items ahead of the
    batches in flight, reaches it (with shards of 64 items, about one shard early).
    """
    extractor.activate()
    summary = Summary(output.layout.run_dir)
    timings = Timings()
    lane = Lane(extractor.device, timings)
    writer = WriterPool(write_threads, write_depth)
    reduction = output.reduction.on(extractor.device)
    states: dict[int, _ShardState] = {}
    created: list[_ShardState] = []
    total = sum(len(s.items) for s in shards) if isinstance(shards, Sequence) else None
    bar = tqdm(total=total, desc=f"extract {extractor.runner.name}", unit="img", disable=not progress)
    start = time.perf_counter()

    def write_batch(state: _ShardState, batch_items: list[Item], hosts: list[torch.Tensor], wait, spans: list) -> None:  # noqa: ANN001
        wait()
        lane.account(spans)
        begin = time.perf_counter()
        stored, finite = hosts
        for item, array, good in zip(batch_items, stored.numpy(), finite.tolist(), strict=True):
            if good:
                state.record(item, "done", **state.writer.add(item, array[None]))
            else:
                state.record(item, "nonfinite", reason="NaN or Inf in the features")
        timings.add("write", time.perf_counter() - begin)
        bar.update(len(batch_items))

    def fail(state: _ShardState, failed: list[tuple[Item, str]]) -> None:
        for item, reason in failed:
            state.record(item, "failed", reason=reason)
        bar.update(len(failed))

    committed: list[dict] = []

    def commit(state: _ShardState) -> None:
        begin = time.perf_counter()
        committed.extend(state.commit())
        timings.add("commit", time.perf_counter() - begin)  # the fsyncs: where a shared disk makes workers wait

    try:
        # the decoder and the batcher both read the shards, on the collate thread; `arrived` hands each
        # shard to this thread, which meets it again when the shard's first batch comes through the queue
        arrived: dict[int, ShardSpec] = {}
        for_items, for_groups = itertools.tee(_noting(shards, arrived))
        decoded = decode_ahead((i for s in for_items for i in s.items), extractor.workers, timings)
        staged = batches(((s.index, s.items) for s in for_groups), decoded, extractor.batch_size, pin=lane.cuda)
        waited = time.perf_counter()
        for batch in background(staged, depth=3, name="lseg-trt-collate"):
            timings.add("wait_input", time.perf_counter() - waited)
            if batch.group not in states:
                states[batch.group] = _ShardState(output, arrived.pop(batch.group))
                created.append(states[batch.group])
            state = states[batch.group]
            if batch.failed:
                writer.submit(batch.group, partial(fail, state, batch.failed))
            if batch.pixels is not None:
                pixels, spans = lane.upload(batch.pixels)
                _, finish = lane.span()
                features = extractor.forward(pixels, pad_to=extractor.batch_size)[: len(batch.items)]
                stored = reduction.apply(features)
                # checked on what is stored: a NaN or Inf anywhere in an image's features reaches it (pooling
                # averages it in and renormalising turns Inf into NaN; a projection sums it in), and the
                # stored copy is a fraction of the bytes of the full float32 map
                finite = torch.isfinite(stored).flatten(1).all(1)
                spans.append(finish())
                hosts, wait, more = lane.download([stored, finite])
                blocked = writer.blocked
                writer.submit(batch.group, partial(write_batch, state, batch.items, hosts, wait, spans + more))
                timings.add("wait_write", writer.blocked - blocked)
            if batch.last:
                writer.submit(batch.group, partial(commit, states.pop(batch.group)))
            waited = time.perf_counter()
        writer.close()
    except BaseException:
        writer.cancel()
        for state in created:
            state.writer.abort()
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.timings = {k: round(v, 4) for k, v in timings.seconds.items() if k in STAGES or v > 0}
    summary.count(sorted(committed, key=lambda r: r["shard"]))  # shards commit on several threads: plan order
    return summary


def _noting(shards: Iterable[ShardSpec], arrived: dict[int, ShardSpec]) -> Iterator[ShardSpec]:
    for shard in shards:
        arrived[shard.index] = shard
        yield shard


def extract_shard(extractor: FeatureExtractor, shard: ShardSpec, output: RunOutput) -> list[dict]:
    """Process one shard and write its file(s) and manifest atomically; the records, in item order."""
    return run_shards(extractor, [shard], output, progress=False).records


@dataclass(frozen=True)
class Resume:
    """What a resume does: the shards to extract, and the items it took out of the store because they are
    no longer in the input."""

    todo: list[ShardSpec]
    removed: list[str]


def pending_shards(
    shards: list[ShardSpec], output: RunOutput, *, owns: Callable[[int], bool] = lambda index: True,
    verify: bool = False,
) -> Resume:  # fmt: skip
    """Plan a resume from the input as it is now (`shards`), and make the store agree with it before any
    shard is written.

    A shard is finished when its manifest names exactly its items, all `done`, each from the same bytes
    (the file's stat fingerprint as recorded, else its content hashed again and compared: a rewrite that
    restores the modification time is found), and its stored features are whole (headers always; the
    checksums of every file whose fingerprint moved since it was written, or of all with `verify`).
    Every other manifest of this task (`owns`: the `--shard K/N` residue) is removed with its files, first:
    a shard no longer in the plan (its items left the input or moved to another shard), a damaged
    manifest, a shard to redo. So the store never holds an item twice, even if this resume is killed, and
    serves nothing stale meanwhile. Failed and non-finite items are tried again (a file fixed in place, or
    a fixed network, then gives features). A finished shard whose files were only touched or copied has its
    fingerprints updated, so the next resume hashes nothing again."""
    layout = output.layout
    manifest = read_manifest(layout.run_dir)
    stored = FeatureSet(layout.run_dir, manifest)
    sources: dict[Path, tuple[str | None, list | None]] = {}
    todo, kept = [], set()
    for shard in shards:
        records = _finished(shard, manifest.shards.get(shard.index), stored, sources, verify)
        if records is None:
            todo.append(shard)
            continue
        kept.add(shard.index)
        if records != manifest.shards[shard.index]:
            write_shard_manifest(layout, shard.index, records)
    wanted = {item.name for shard in shards for item in shard.items}
    kept_files = {r.get("file") for index in kept for r in manifest.shards[index]}
    removed = []
    for index in sorted(set(manifest.shards) | set(manifest.damaged)):
        if index in kept or not owns(index):
            continue
        old = manifest.shards.get(index, [])
        removed += [r["name"] for r in old if r["name"] not in wanted and r["status"] == "done"]
        remove_shard(layout, index)
        if layout.format == "npy":  # per-item files, which `compare` finds by path: none may outlive its record
            for file in {r["file"] for r in old if "file" in r} - kept_files:
                if _npy_of_this_run(file, layout):  # a manifest is untrusted: it may name another run's file
                    with contextlib.suppress(LsegTrtError, OSError):
                        stored.path_of(file).unlink(missing_ok=True)
    return Resume(todo, sorted(removed))


def _npy_of_this_run(file: str, layout: RunLayout) -> bool:
    """Whether a record's file has the shape of this run's npy files, `<image>/<HxW>.npy`."""
    parts = Path(file).parts
    return len(parts) == 2 and parts[1] == layout.npy_file("x").name


def _finished(
    shard: ShardSpec, records: list[dict] | None, stored: FeatureSet, sources: dict, verify: bool
) -> list[dict] | None:
    """The shard's records (with fingerprints brought up to date) if it is finished, else None."""
    if records is None or [r.get("name") for r in records] != [i.name for i in shard.items]:
        return None
    if not all(r.get("status") == "done" for r in records):
        return None
    fresh = []
    for item, record in zip(shard.items, records, strict=True):
        stat = _same_source(item, record, sources)
        if stat is False:
            log.info("shard %d is extracted again: %s changed", shard.index, item.path)
            return None
        fresh.append(record if stat is True else {**record, "stat": stat})
    damage = stored.damaged(records, verify=verify)  # this shard's own records: another manifest may name the same
    if damage is not None:
        log.warning("shard %d is extracted again: %s", shard.index, damage)
        return None
    now = {file: stored.fingerprint_of(file) for file in {r["file"] for r in fresh}}  # one stat a file
    return [{**r, "stored": now[r["file"]]} if now[r["file"]] != r.get("stored") else r for r in fresh]


def _same_source(item: Item, record: dict, sources: dict) -> bool | list | None:
    """True if the item's file has the fingerprint recorded; else, hashed again (once per file: a video's
    frames share one), its current fingerprint (None if too recent to trust) when its content is the one
    recorded, and False when it is not."""
    if item.stat is not None and record.get("stat") == item.stat:
        return True
    if item.path not in sources:
        try:
            info = os.stat(item.path)
            sources[item.path] = (file_digest(item.path), source_fingerprint(info))
        except OSError:
            sources[item.path] = (None, None)
    content, stat = sources[item.path]
    return stat if content is not None and content == record.get("content") else False


def fit_run_pca(extractor: FeatureExtractor, items: list[Item], k: int, pool: int, frames: int = 16) -> PCABasis:
    """A PCA basis fitted on `frames` items spread evenly over the run (pooled as the run pools)."""
    step = max(1, len(items) // frames)
    chosen = items[::step][:frames]
    paths = [item.path for item in chosen if item.frame is None]
    pooled = Reduction(pool=pool)
    grids = [pooled.pooled(features[None]) for _, features in extractor.stream(paths)] if paths else []
    if not grids:
        raise LsegTrtError("no readable image to fit the PCA basis on")
    return fit_pca(grids, k)


@dataclass(frozen=True)
class RunOptions:
    """How a run stores features and treats earlier results: what `extract`'s keywords and the CLI set."""

    format: str = "shards"  # shards (safetensors, shard_size items each) | npy (one file per image)
    dtype: str = "fp16"  # storage dtype
    pool: int = 1  # average the feature grid over pool x pool cells
    pca: int | None = None  # project to this many channels (basis fitted on the run, stored beside it)
    shard_size: int = 64
    resume: bool = False  # skip shards the manifest records as done, from unchanged sources
    force: bool = False  # redo an existing run


def prepare_run(
    extractor: FeatureExtractor,
    items: list[Item],
    out: str | Path,
    options: RunOptions = RunOptions(),
    *,
    shared: bool = False,
) -> RunOutput:
    """The reduction (fitting or reloading the PCA basis over all `items`) and the opened run folder:
    done once, by whoever coordinates a run, before any shard is written; `shared` when the tasks of one
    run join its folder (see `manifest.start_run`)."""
    o = options
    basis = None
    if o.pca is not None:
        layout = layout_for(extractor, out, o.format)
        reusable = o.resume and layout.pca_path.exists()
        basis = PCABasis.load(layout.pca_path) if reusable else fit_run_pca(extractor, items, o.pca, o.pool)
    reduction = Reduction(o.dtype, o.pool, basis)
    return open_run(
        extractor, out, format=o.format, reduction=reduction, shard_size=o.shard_size, resume=o.resume,
        force=o.force, shared=shared,
    )  # fmt: skip


def extract(
    extractor: FeatureExtractor,
    source: Source,
    out: str | Path,
    *,
    format: str = "shards",
    dtype: str = "fp16",
    pool: int = 1,
    pca: int | None = None,
    shard_size: int = 64,
    resume: bool = False,
    force: bool = False,
    verify: bool = False,
    progress: bool = True,
) -> Summary:
    """Features of every item of `source` into `out`, resumable; the CLI's `extract` is this call.

    Args:
        extractor: the model, size, batch and device.
        source: folder (recursive), glob, list file, video, or a list of these.
        out: output root; the run folder is `<out>/<backend>/<variant>/<weights>/<HxW>-<format>.run`.
        format: `shards` (safetensors, `shard_size` items each) or `npy` (one file per image, seed layout).
        dtype: storage dtype, fp16 or fp32. pool: average the feature grid over pool x pool cells.
        pca: project to this many channels (basis fitted on 16 frames of the run, stored beside it).
        resume: skip shards whose items the manifest records as done, from unchanged sources, and take items
            no longer in `source` out of the store (`pending_shards`). force: redo all.
        verify: with `resume`, read every stored feature and check its checksum (not only those of files whose
            stat fingerprint moved).
    """
    extractor.activate()
    listing = scan(source)
    items = listing.items
    shards = plan_shards(items, shard_size)
    output = prepare_run(extractor, items, out, RunOptions(format, dtype, pool, pca, shard_size, resume, force))
    plan = pending_shards(shards, output, verify=verify) if resume else Resume(shards, [])
    summary = run_shards(extractor, plan.todo, output, progress=progress)
    summary.skipped = len(items) - sum(len(s.items) for s in plan.todo)
    summary.removed = plan.removed
    summary.notes = listing.notes()
    return summary
