"""Shard writers (npy files, one safetensors file) and the background thread that runs them.

Safetensors shards are written in one sequential pass without holding the shard in memory: the
header is reserved up front at the size it would have if every item succeeded (names, shapes and
dtype are known before the first item arrives), items are appended as they come, and on commit the
real header (failed items left out) is written into the reserved space, padded with spaces as the
format allows. Equal inputs give equal bytes, so a shard redone after a kill is identical.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.manifest import RunLayout
from lseg_trt.extraction.sources import Item
from lseg_trt.files import digest, durable_write, sync_folder, temp_path, temps_of

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}


class ShardWriter(ABC):
    """Writes the features of one shard; `add` per good item in order, then `commit` once."""

    def __init__(self, layout: RunLayout, index: int, items: tuple[Item, ...]) -> None:
        self.layout, self.index, self.items = layout, index, items

    @abstractmethod
    def add(self, item: Item, array: np.ndarray) -> dict[str, str]:
        """Store `array` (1, C, H, W); return where it went and the digest of the bytes stored (its
        `checksum`), for the manifest."""

    def commit(self) -> None:  # noqa: B027 - npy files are complete as soon as they are added
        """Make the shard's files final."""

    def abort(self) -> None:  # noqa: B027
        """Drop what an unfinished shard wrote that is not final."""


def clear_leftovers(path: Path) -> None:
    """Remove temporaries of `path` that a killed writer of the same shard left (any pid, any host: this
    process now writes that shard, so nobody else does)."""
    for stale in temps_of(path):
        stale.unlink(missing_ok=True)


class NpyShardWriter(ShardWriter):
    """The seed layout: one `<image>/<HxW>.npy` per item, each written atomically and fsync'ed."""

    def add(self, item: Item, array: np.ndarray) -> dict[str, str]:
        path = self.layout.npy_file(item.component)
        clear_leftovers(path)
        array = np.ascontiguousarray(array)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
        data = memoryview(array).cast("B")
        durable_write(path, header.getbuffer(), data)
        return {"file": path.relative_to(self.layout.tree).as_posix(), "checksum": digest(data)}


class SafetensorsShardWriter(ShardWriter):
    """`shards/<index>.safetensors`: one tensor per item, keyed by item name, streamed to disk."""

    def __init__(
        self,
        layout: RunLayout,
        index: int,
        items: tuple[Item, ...],
        shape: tuple[int, ...],
        dtype: np.dtype,
        metadata: dict[str, str],
    ) -> None:
        super().__init__(layout, index, items)
        self.shape, self.dtype, self.metadata = shape, np.dtype(dtype), metadata
        self.item_bytes = int(np.prod(shape)) * self.dtype.itemsize
        self.offsets: dict[str, int] = {}
        every = self._header({item.name: i * self.item_bytes for i, item in enumerate(items)})
        self.reserved = len(every) + (-len(every) % 8)  # the most the real header can need, 8-aligned
        self.path = layout.shard_file(index)
        self.file = self.path.relative_to(layout.run_dir).as_posix()  # what each item's record names
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clear_leftovers(self.path)
        self.tmp = temp_path(self.path)
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit / abort
        self.fh.write(b"\0" * (8 + self.reserved))
        self.offset = 0

    def _header(self, offsets: dict[str, int]) -> bytes:
        header: dict[str, object] = {"__metadata__": self.metadata}
        for name, offset in offsets.items():
            entry = {"dtype": SAFETENSORS_DTYPES[self.dtype], "shape": list(self.shape)}
            header[name] = {**entry, "data_offsets": [offset, offset + self.item_bytes]}
        return json.dumps(header, separators=(",", ":")).encode()

    def add(self, item: Item, array: np.ndarray) -> dict[str, str]:
        data = np.ascontiguousarray(array, dtype=self.dtype)
        if data.shape != self.shape:
            raise RuntimeError(f"shard {self.index}: item {item.name} has shape {data.shape}, expected {self.shape}")
        stored = memoryview(data).cast("B")  # no bytes copy of a 5-80 MB item
        self.fh.write(stored)
        self.offsets[item.name] = self.offset
        self.offset += data.nbytes
        return {"file": self.file, "key": item.name, "checksum": digest(stored)}

    def commit(self) -> None:
        text = self._header(self.offsets)
        self.fh.seek(0)
        self.fh.write(self.reserved.to_bytes(8, "little") + text + b" " * (self.reserved - len(text)))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        sync_folder(self.path.parent)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class Background:
    """One writer thread fed through a bounded queue: `submit` blocks while the queue is full, so a
    slow disk holds the producer (and the GPU) back instead of filling memory. The first error in
    the thread is re-raised in the producer at its next `submit` or at `close`."""

    def __init__(self, depth: int, name: str = "lseg-trt-writer") -> None:
        self.tasks: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self.cancelled = False
        self.blocked = 0.0  # seconds producers waited for room
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.cancelled:
            try:
                task = self.tasks.get(timeout=0.1)  # and look at `cancelled` again: see `cancel`
            except queue.Empty:
                continue
            if task is None:
                return
            if self.error is None and not self.cancelled:
                try:
                    task()
                except BaseException as e:  # noqa: BLE001 - handed to the producer
                    self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            if isinstance(error, OSError):
                raise LsegTrtError(f"cannot write features: {error}") from error
            raise error

    def submit(self, task: Callable[[], None]) -> None:
        self._raise()
        start = time.perf_counter()
        self.tasks.put(task)
        self.blocked += time.perf_counter() - start

    def cancel(self, deadline_s: float = 30.0) -> None:
        """Stop the thread after its running task; queued tasks are dropped, errors are not raised.

        Only a flag, never the queue: a Ctrl-C lands in the producer, possibly inside the queue's own
        code. It can lose a wake-up there (raised between a waiter's release and its removal, it leaves a
        stale waiter that a later stop marker wakes instead of the thread: a whole `--devices` run once
        hung this way), or leave the queue's lock held, which a drain would then wait on for ever. The
        thread sees the flag within 0.1 s; past `deadline_s` it is left behind (a daemon) with a warning."""
        self.cancelled = True
        self.thread.join(timeout=deadline_s)
        if self.thread.is_alive():
            log.warning("%s: a writer thread did not stop within %.0f s; left behind", self.thread.name, deadline_s)

    def close(self) -> None:
        """Wait for every queued task; raise the first error."""
        if self.thread.is_alive():
            self.tasks.put(None)
            self.thread.join()
        self._raise()


def shard_writer(
    layout: RunLayout,
    index: int,
    items: tuple[Item, ...],
    shape: tuple[int, ...],
    dtype: np.dtype,
    metadata: dict[str, str],
) -> ShardWriter:
    if layout.format == "npy":
        return NpyShardWriter(layout, index, items)
    return SafetensorsShardWriter(layout, index, items, shape, dtype, metadata)


class WriterPool:
    """Several `Background` writers; all tasks of one key (a shard) go to the same thread, in order, so a
    shard's file is appended sequentially while the next shard is already written beside it. One thread
    could not keep up with an NVMe disk: the numpy conversions and copies of 5 MB items are CPU work."""

    def __init__(self, threads: int, depth: int) -> None:
        self.writers = [Background(depth, name=f"lseg-trt-writer-{i}") for i in range(max(1, threads))]

    @property
    def blocked(self) -> float:
        return sum(w.blocked for w in self.writers)

    def submit(self, key: int, task: Callable[[], None]) -> None:
        self.writers[key % len(self.writers)].submit(task)

    def cancel(self) -> None:
        for writer in self.writers:
            writer.cancel()

    def close(self) -> None:
        errors = []
        for writer in self.writers:
            try:
                writer.close()
            except BaseException as e:  # noqa: BLE001 - close every thread, then raise the first error
                errors.append(e)
        if errors:
            raise errors[0]
