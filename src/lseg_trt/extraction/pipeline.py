"""Keeping the device busy: decode ahead on threads, collate into pinned memory, copy on side streams.

Stages and where they run:
- decode: a thread pool (PIL releases the GIL while decoding), results taken in input order with a
  bounded look-ahead; a video decodes sequentially on its own thread;
- collate: one thread stacks equal-sized images of a batch into one (pinned, on CUDA) uint8 tensor;
- upload: a non-blocking host-to-device copy on an upload stream; compute waits on its event;
- download: reduced features go device-to-host on a download stream into pinned memory; the writer
  thread waits on that batch's event, never the producer.
On a CPU device the same code runs without streams, pinning or events.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.sources import Item, decode, decode_video

Decoded = tuple[Item, np.ndarray | LsegTrtError]
STAGES = ("decode", "upload", "compute", "download", "write", "commit")  # commit: a finished shard made durable


class Timings:
    """Seconds per stage, summed from any thread (decode is summed over worker threads)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys((*STAGES, "wait_input", "wait_write"), 0.0)
        self.lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.seconds[stage] += seconds


def background(iterator: Iterator, depth: int, name: str) -> Iterator:
    """`iterator` run on its own thread, at most `depth` items ahead; its errors surface here."""
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((True, done))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            items.put((False, e))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()


def decode_ahead(items: Iterable[Item], workers: int, timings: Timings, lookahead: int = 32) -> Iterator[Decoded]:
    """Decoded items in input order; images on `workers` threads, each video on its own thread.

    `items` is read only as far as needed: `lookahead` images ahead of what was taken, but all of a
    video's consecutive frames at once (a video decodes in one pass from its start)."""

    def timed(item: Item) -> Decoded:
        start = time.perf_counter()
        decoded = decode(item)
        timings.add("decode", time.perf_counter() - start)
        return decoded

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="lseg-trt-decode") as pool:
        for video, run in itertools.groupby(items, key=lambda i: i.path if i.frame is not None else None):
            if video is not None:
                yield from background(_timed_frames(decode_video(list(run)), timings), lookahead, "lseg-trt-video")
                continue
            pending: deque = deque()
            for item in run:
                pending.append(pool.submit(timed, item))
                if len(pending) >= lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def _timed_frames(frames: Iterator[Decoded], timings: Timings) -> Iterator[Decoded]:
    """A video's frames, the time spent decoding each added to `decode` as an image's is."""
    while True:
        start = time.perf_counter()
        decoded = next(frames, None)
        if decoded is None:
            return
        timings.add("decode", time.perf_counter() - start)
        yield decoded


@dataclass
class Batch:
    """Up to `batch_size` decoded items of one group (shard), staged on the host."""

    group: int
    items: list[Item] = field(default_factory=list)
    pixels: torch.Tensor | list[torch.Tensor] | None = None  # (B, H, W, 3) when all sizes agree
    failed: list[tuple[Item, str]] = field(default_factory=list)
    last: bool = False  # the group ends with this batch


def batches(
    groups: Iterable[tuple[int, Sequence[Item]]], decoded: Iterator[Decoded], batch_size: int, pin: bool
) -> Iterator[Batch]:
    """Cut each group's decoded items into batches; failures travel with the batch they fell into.

    Batches never span groups, so an item's batch (and so its bits) depends only on its own shard.
    """
    for group, members in groups:
        arrays: list[np.ndarray] = []
        batch = Batch(group)
        for index in range(len(members)):
            item, result = next(decoded)
            if isinstance(result, LsegTrtError):
                batch.failed.append((item, str(result)))
            else:
                batch.items.append(item)
                arrays.append(result)
            if len(arrays) == batch_size or index == len(members) - 1:
                batch.pixels = stage(arrays, pin) if arrays else None
                batch.last = index == len(members) - 1
                yield batch
                arrays, batch = [], Batch(group)


def stage(arrays: list[np.ndarray], pin: bool) -> torch.Tensor | list[torch.Tensor]:
    """Host tensors for a batch: one stacked (pinned) tensor if all images share a size, else a list."""
    if len({a.shape for a in arrays}) > 1:
        return [_host(torch.from_numpy(a), pin) for a in arrays]
    if not pin:
        return torch.from_numpy(np.stack(arrays))
    staged = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=True)
    for slot, array in zip(staged, arrays, strict=True):
        slot.numpy()[...] = array
    return staged


def _host(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    return tensor.pin_memory() if pin else tensor


class Lane:
    """Transfers and timing events for one device; on a CPU every step is immediate."""

    def __init__(self, device: torch.device, timings: Timings) -> None:
        self.device, self.timings = device, timings
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.upload_stream = torch.cuda.Stream(device)
            self.download_stream = torch.cuda.Stream(device)

    def _event(self) -> torch.cuda.Event | float:
        return torch.cuda.Event(enable_timing=True) if self.cuda else time.perf_counter()

    def upload(self, pixels: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor | list[torch.Tensor], list]:
        """Device copies of staged pixels, ordered before later work on the current stream."""
        if not self.cuda:
            return pixels, []
        start, end = self._event(), self._event()
        current = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.upload_stream):
            start.record()
            moved = [p.to(self.device, non_blocking=True) for p in _as_list(pixels)]
            end.record()
        current.wait_event(end)
        for tensor in moved:
            tensor.record_stream(current)
        result = moved if isinstance(pixels, list) else moved[0]
        return result, [("upload", start, end)]

    def download(self, tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], Callable[[], None], list]:
        """Host copies of `tensors` and a function that waits until they have arrived."""
        if not self.cuda:
            return [t.clone() for t in tensors], lambda: None, []  # the runner may reuse its output
        start, end = self._event(), self._event()
        current = torch.cuda.current_stream(self.device)
        self.download_stream.wait_stream(current)
        with torch.cuda.stream(self.download_stream):
            start.record()
            hosts = []
            for tensor in tensors:
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host.copy_(tensor, non_blocking=True)
                tensor.record_stream(self.download_stream)
                hosts.append(host)
            end.record()
        return hosts, end.synchronize, [("download", start, end)]

    def span(self) -> tuple[object, Callable[[], tuple[str, object, object]]]:
        """Mark the start of compute on the current stream; call the result to mark its end."""
        start = self._event()
        if self.cuda:
            start.record()

        def finish() -> tuple[str, object, object]:
            end = self._event()
            if self.cuda:
                end.record()
            return ("compute", start, end)

        return start, finish

    def account(self, spans: list) -> None:
        """Add finished spans to the timings (call after their events completed)."""
        for stage_name, start, end in spans:
            seconds = start.elapsed_time(end) / 1000 if self.cuda else end - start
            self.timings.add(stage_name, seconds)


def _as_list(pixels: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return pixels if isinstance(pixels, list) else [pixels]
