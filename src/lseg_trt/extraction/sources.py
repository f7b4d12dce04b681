"""What to extract: folders, globs, list files and videos become one sorted list of named items.

An item's name is its path relative to the input root, without the suffix, `/`-separated (`cam0/000123`),
so two `000123.jpg` in different folders stay apart, and the order and names are the same on every
machine that sees the same tree (the unit of work of a sharded run is a fixed slice of this list).
Names become file-name components only through `item_component`, never directly.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.files import Fingerprint, digest, file_digest, fingerprint, source_fingerprint
from lseg_trt.images import IMAGE_SUFFIXES, read_image_file, rgb_from_bytes
from lseg_trt.names import component_from_stem, short_digest

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
LIST_SUFFIXES = (".txt", ".lst")
RESERVED_SUFFIX = ".run"  # run folders sit beside the per-image folders of the npy layout

Source = str | Path | Sequence[str | Path]


@dataclass(frozen=True)
class Item:
    """One image (or one video frame) to extract. `stat` is the listing's `files.fingerprint` of its file;
    `content` the digest of the bytes its features were computed from, set by `decode` (the manifest
    records both: a resume trusts an unchanged fingerprint and hashes the file again otherwise)."""

    name: str
    path: Path
    bytes: int
    mtime_ns: int
    frame: int | None = None  # index in a video file
    error: str | None = None  # why a video could not be listed: this item then fails with it
    stat: Fingerprint | None = None
    content: str | None = None

    @property
    def component(self) -> str:
        return item_component(self.name)


def item_component(name: str) -> str:
    """A safe folder name for an item: `component_from_stem`, hashed further if it could be mistaken
    for a run folder (`<HxW>-<format>.run`)."""
    component = component_from_stem(name)
    if component.lower().endswith(RESERVED_SUFFIX):
        component += "__" + short_digest(name)
    return component


@dataclass(frozen=True)
class Listing:
    """The items of a source, and how many entries of its folders and globs were passed over as hidden
    (a name starting with `.`, counted once however much it holds) or special (FIFO, socket, device,
    broken link): a walk that drops files must say so."""

    items: list[Item]
    ignored: int = 0


def list_items(source: Source) -> list[Item]:
    """Every item of `source` (a folder, searched recursively; a glob; a `.txt`/`.lst` list file with
    one path per line; a video; an image; or a list of these), sorted by name, names unique."""
    return scan(source).items


def scan(source: Source) -> Listing:
    """`list_items`, with the count of hidden and special entries skipped (each folder or glob that
    skips some logs one warning)."""
    sources = [source] if isinstance(source, str | Path) else list(source)
    expanded = [_expand(str(s)) for s in sources]
    found = [entry for entries, _ in expanded for entry in entries]
    items = _named_items(found)
    if not items:
        raise LsegTrtError(f"no images found in {', '.join(map(str, sources))}")
    return Listing(sorted(items, key=lambda i: i.name), sum(ignored for _, ignored in expanded))


def _expand(text: str) -> tuple[list[tuple[Path, Path]], int]:
    """The (file, root) pairs of one source, and how many hidden or special entries it skipped."""
    if not text.strip():
        raise LsegTrtError("empty input path: name a folder, glob, list file, video or image")
    path = Path(text)
    if any(c in text for c in "*?["):
        fixed = _first_magic(text)  # the path parts before the first wildcard
        root = Path(*Path(text).parts[:fixed]) if fixed else Path(".")
        matches = [Path(p) for p in glob.glob(text, recursive=True)]
        special = [p for p in matches if not p.is_file() and not p.is_dir()]
        _warn_skipped(len(special), text)
        return [(f, root) for f in sorted(p for p in matches if p.is_file() and _wanted(p.name))], len(special)
    if path.is_dir():
        files, ignored = _walk(path)
        _warn_skipped(ignored, text)
        return [(f, path) for f in files], ignored
    if path.exists() and not path.is_file():  # links followed: a link to /dev/zero is a device
        raise LsegTrtError(f"input {path} is not a regular file (a device, FIFO or socket)")
    if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        return _list_file(path), 0
    if path.is_file():
        return [(path, path.parent)], 0
    raise LsegTrtError(f"input not found: {path}")


def _warn_skipped(count: int, where: str) -> None:
    if count:
        log.warning("skipped %d hidden or special entries in %s", count, where)


def _first_magic(text: str) -> int:
    return next(i for i, part in enumerate(Path(text).parts) if any(c in part for c in "*?["))


def _wanted(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def _walk(folder: Path) -> tuple[list[Path], int]:
    """The wanted files under `folder`, sorted, and how many entries were passed over: hidden (counted
    once, not entered), special (FIFO, socket, device, broken link) or an unreadable folder. One
    `scandir` per folder, whose entries know their type without a `stat`: a dataset holds millions of
    frames, and the listing with pathlib's walk took 42 us a frame on the developer machine, this one 19
    (`benchmarks/listing_bench.py`). Links to files are followed; links to folders are not entered, as
    `Path.rglob` does not."""
    files: list[str] = []
    ignored = 0
    pending = [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    kind = _kind(entry)
                    if kind == "folder":
                        pending.append(entry.path)
                    elif kind == "file":
                        files.append(entry.path)
                    elif kind == "passed over":
                        ignored += 1
        except OSError as e:  # a folder that cannot be listed
            log.warning("cannot list %s: %s", e.filename, e.strerror)
            ignored += 1
    return [Path(f) for f in sorted(files)], ignored


def _kind(entry: os.DirEntry) -> str:
    """What the walk does with an entry: enters a `folder`, keeps a `file`, counts one `passed over`
    (hidden, special, or whose type cannot be read, such as a link into a folder this user may not
    read) or drops it silently (a link to a folder, a file of another kind)."""
    if entry.name.startswith("."):
        return "passed over"
    try:
        if entry.is_dir():
            return "dropped" if entry.is_symlink() else "folder"
        if entry.is_file():
            return "file" if _wanted(entry.name) else "dropped"
    except OSError:
        pass
    return "passed over"


def _list_file(path: Path) -> list[tuple[Path, Path]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LsegTrtError(f"cannot read list file {path}: {e}") from None
    entries = [path.parent / line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        return []
    root = Path(os.path.commonpath([str(e.parent.absolute()) for e in entries]))
    return [(e, root) for e in entries]  # missing entries fail at decode, recorded per item


def _named_items(found: list[tuple[Path, Path]]) -> list[Item]:
    """Items named relative to each root without the suffix (a video's frames `<name>/000000`, ...); if two
    names collide (`a.png` and `a.jpg`, or frames of `clip.mp4` and `clip/000000.png`) every name keeps its
    suffix; if names still collide (inputs with different roots) the absolute path is the name. Paths are
    handled as strings: pathlib's objects cost more than the rest of a listing of a million frames."""
    absolute = _absolute_in(os.getcwd())
    entries: dict[str, tuple[Path, str]] = {}
    for path, root in found:
        full = absolute(str(path))
        entries.setdefault(full, (path, _relative(full, absolute(str(root)), path.name)))
    parts = [_frames(_file_item("", path)) for path, _ in entries.values()]  # each video opened once: "/<frame>"
    for naming in (
        lambda full, rel: _without_suffix(rel),
        lambda full, rel: rel,
        lambda full, rel: full.lstrip("/"),
    ):
        names = [naming(full, rel) for full, (_, rel) in entries.items()]
        items = [
            replace(part, name=name + part.name) for name, group in zip(names, parts, strict=True) for part in group
        ]
        if len({item.name for item in items}) == len(items):
            break
    return items


def _absolute_in(cwd: str) -> Callable[[str], str]:
    """`str(Path(p).absolute())` for the pathlib-made strings of this module (no `..` resolved, as
    pathlib does not), without making a Path."""
    base = cwd.rstrip("/") + "/"
    return lambda p: p if p.startswith("/") else cwd if p == "." else base + p


def _relative(path: str, root: str, name: str) -> str:
    """`path` below `root` (both absolute), or the bare file name if it is not below it."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else name


def _without_suffix(name: str) -> str:
    """`Path.with_suffix("")`: the last dot of the last component starts the suffix, unless it is that
    component's first or last character."""
    dot, slash = name.rfind("."), name.rfind("/")
    return name[:dot] if dot > slash + 1 and dot < len(name) - 1 else name


def _file_item(name: str, path: Path) -> Item:
    try:
        info = path.stat()
        return Item(name, path, info.st_size, info.st_mtime_ns, stat=fingerprint(info))
    except OSError:
        return Item(name, path, -1, -1)  # fails at decode and is recorded as failed


def _frames(item: Item) -> list[Item]:
    """A video's frames as items, numbered with at least 6 digits, more past a million frames, so names
    sort in frame order. A video that cannot be read stays one item that fails, as an unreadable image
    does, instead of ending the listing of the rest."""
    if item.path.suffix.lower() not in VIDEO_SUFFIXES:
        return [item]
    try:
        count = _frame_count(item.path)
    except MissingDependencyError:
        raise
    except LsegTrtError as e:
        return [replace(item, error=str(e))]
    width = max(6, len(str(count - 1)))
    return [replace(item, name=f"{item.name}/{i:0{width}d}", frame=i) for i in range(count)]


def _frame_count(path: Path) -> int:
    """The container's frame count where it states one, else a decode pass to count them."""
    try:
        import av

        with av.open(str(path)) as container:
            stated = container.streams.video[0].frames
    except ImportError:
        raise MissingDependencyError(f"reading video {path} needs PyAV: pip install av") from None
    except (av.FFmpegError, IndexError) as e:
        raise LsegTrtError(f"cannot read video {path}: {e}") from None
    count = stated or sum(1 for _ in _video_frames(path))
    if not count:
        raise LsegTrtError(f"cannot read video {path}: no frames")
    return count


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames in decode order, through PyAV (optional: `pip install av`)."""
    try:
        import av
    except ImportError:
        raise MissingDependencyError(f"reading video {path} needs PyAV: pip install av") from None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, IndexError) as e:
        raise LsegTrtError(f"cannot read video {path}: {e}") from None


def decode(item: Item) -> tuple[Item, np.ndarray | LsegTrtError]:
    """An image item's RGB uint8 array, or the user error that explains why it cannot be read (also the
    error of a video that could not be listed, which stays one item). The item comes back with the digest
    of the bytes decoded and the fingerprint of the file they came from (`files.source_fingerprint`): the
    decoder reads every byte anyway, and hashing them costs a fraction of decoding them."""
    if item.error is not None:
        return item, LsegTrtError(item.error)
    try:
        data, info = read_image_file(item.path)
        return replace(item, content=digest(data), stat=source_fingerprint(info)), rgb_from_bytes(data, item.path)
    except LsegTrtError as e:
        return item, e


def decode_video(items: Sequence[Item]) -> Iterator[tuple[Item, np.ndarray | LsegTrtError]]:
    """Frames of one video in order, decoded once from the start (frames not in `items` are skipped). The
    frames carry the digest of the whole file, read once before decoding (PyAV reads it itself)."""
    try:
        info = os.stat(items[0].path)
        content = file_digest(items[0].path)
    except OSError as e:
        for item in items:
            yield item, LsegTrtError(f"cannot read video {item.path}: {e.strerror or e}")
        return
    wanted = {item.frame: replace(item, content=content, stat=source_fingerprint(info)) for item in items}
    done = decoded = 0
    try:
        for frame in _video_frames(items[0].path):
            item = wanted.get(decoded)
            decoded += 1
            if item is not None:
                yield item, np.ascontiguousarray(frame)
                done += 1
                if done == len(wanted):
                    return
    except LsegTrtError as e:
        error = e
    else:
        error = LsegTrtError(f"{items[0].path}: video ended after {decoded} frames")
    for item in items[done:]:  # items come in frame order, so the first `done` were yielded
        yield item, error
