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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.extraction.walk import walk
from lseg_trt.files import Fingerprint, digest, file_digest, fingerprint, source_fingerprint
from lseg_trt.images import image_suffixes, read_image_file, rgb_from_bytes
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
    """The items of a source and what its listing passed over, so a run can say so (`notes`): entries
    skipped as hidden (a name starting with `.`, counted once however much it holds) or special (FIFO,
    socket, device, broken link); files of other suffixes, by suffix; folder links not entered again (a
    loop, or a folder reached twice); files reached by a second path, extracted once; and each input
    that contributed no item, with why."""

    items: list[Item]
    ignored: int = 0
    other: dict[str, int] = field(default_factory=dict)
    repeated: int = 0
    duplicates: int = 0
    unused: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per thing passed over, for a run's summary."""
        lines = [f"input {why}" for why in self.unused]
        if self.other:
            counts = ", ".join(f"{suffix} {n}" for suffix, n in sorted(self.other.items()))
            lines.append(f"skipped {sum(self.other.values())} files that are not images or videos ({counts})")
        if self.duplicates:
            lines.append(
                f"{self.duplicates} files reached by a second path (a link, an input named twice) counted once"
            )
        if self.repeated:
            lines.append(f"{self.repeated} folder links not entered: they lead to a folder already listed")
        if self.ignored:
            lines.append(f"skipped {self.ignored} hidden or special entries of the inputs")
        return lines


@dataclass
class _Found:
    """One input expanded: (file, naming root) pairs and what was passed over."""

    text: str
    entries: list[tuple[Path, Path]] = field(default_factory=list)
    ignored: int = 0
    other: Counter = field(default_factory=Counter)
    repeated: list[str] = field(default_factory=list)
    empty: str = "gave no file"  # why it gave nothing, if it did


def list_items(source: Source) -> list[Item]:
    """Every item of `source` (a folder, searched recursively, links to folders followed once; a glob; a
    `.txt`/`.lst` list file with one path per line; a video; an image; or a list of these), sorted by name,
    names unique, each file once however many paths reach it."""
    return scan(source).items


def scan(source: Source) -> Listing:
    """`list_items`, with what the listing passed over (`Listing`); each folder or glob that skips hidden
    or special entries logs one warning. A source that gives no item at all is a user error naming why
    each input gave nothing."""
    sources = [source] if isinstance(source, str | Path) else list(source)
    seen: set = set()
    expanded = [_expand(str(s), seen) for s in sources]
    found = [(f, root, k) for k, x in enumerate(expanded) for f, root in x.entries]
    items, duplicates, contributed = _named_items(found)
    again = "every file in it was already listed by another input"
    unused = [f"{x.text} gave nothing: {x.empty if x.entries == [] else again}" for x in expanded]
    unused = [why for k, why in enumerate(unused) if k not in contributed]
    if not items:
        raise LsegTrtError(f"no images found: {'; '.join(unused)}")
    other: Counter = sum((x.other for x in expanded), Counter())
    return Listing(
        sorted(items, key=lambda i: i.name), sum(x.ignored for x in expanded), dict(other),
        sum(len(x.repeated) for x in expanded), duplicates, unused,
    )  # fmt: skip


def _expand(text: str, seen: set) -> _Found:
    """The (file, root) pairs of one source and what it passed over; `seen`: the folders walked so far."""
    if not text.strip():
        raise LsegTrtError("empty input path: name a folder, glob, list file, video or image")
    path = Path(text)
    found = _Found(text)
    if any(c in text for c in "*?["):
        fixed = _first_magic(text)  # the path parts before the first wildcard
        root = Path(*Path(text).parts[:fixed]) if fixed else Path(".")
        found.empty = "the pattern matches nothing"
        matches = sorted(glob.glob(text, recursive=True))
        _walk_into(found, [m for m in matches if os.path.isdir(m)], root, seen)  # as if each were named
        for match in (Path(m) for m in matches if not os.path.isdir(m)):
            if match.is_file() and wanted(match.name):
                found.entries.append((match, root))
            elif match.is_file():
                found.other[match.suffix.lower() or "(no suffix)"] += 1
                found.empty = "matches no image or video"
            else:
                found.ignored += 1  # special, or a broken link
        _warn_skipped(found.ignored, text)
        return found
    if path.is_dir():
        _walk_into(found, [text], path, seen)
        _warn_skipped(found.ignored, text)
        return found
    if path.exists() and not path.is_file():  # links followed: a link to /dev/zero is a device
        raise LsegTrtError(f"input {path} is not a regular file (a device, FIFO or socket)")
    if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        found.entries, found.empty = _list_file(path), "the list names no file"
        return found
    if path.is_file():
        if not wanted(path.name):
            raise LsegTrtError(
                f"input {path}: {path.suffix or 'no suffix'} is not an image or video suffix this install reads "
                f"({' '.join(image_suffixes() + VIDEO_SUFFIXES)}), nor a list file ({' '.join(LIST_SUFFIXES)})"
            )
        found.entries = [(path, path.parent)]
        return found
    raise LsegTrtError(f"input not found: {path}")


def _walk_into(found: _Found, folders: list[str], root: Path, seen: set) -> None:
    """The files under `folders` (`walk`) into `found`, named below `root`."""
    if not folders:
        return
    walked = walk(folders, wanted, seen)
    found.entries += [(Path(f), root) for f in walked.files]
    found.ignored += walked.passed_over
    found.other += walked.other
    found.repeated += walked.repeated
    if walked.repeated == folders:
        found.empty = "the folder was already listed by another input"
    elif not walked.files:
        found.empty = "no image or video in it"


def _warn_skipped(count: int, where: str) -> None:
    if count:
        log.warning("skipped %d hidden or special entries in %s", count, where)


def _first_magic(text: str) -> int:
    return next(i for i, part in enumerate(Path(text).parts) if any(c in part for c in "*?["))


def wanted(name: str) -> bool:
    """Whether a file of this name is listed: the same suffixes for walks, globs and paths named directly."""
    return os.path.splitext(name)[1].lower() in image_suffixes() + VIDEO_SUFFIXES


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


def _named_items(found: list[tuple[Path, Path, int]]) -> tuple[list[Item], int, set[int]]:
    """Items named relative to each root without the suffix (a video's frames `<name>/000000`, ...); if two
    names collide (`a.png` and `a.jpg`, or frames of `clip.mp4` and `clip/000000.png`) every name keeps its
    suffix; if names still collide (inputs with different roots) the absolute path is the name. A file
    reached by several paths (a link, a hard link, an input named twice, `I` and `I/../I`) is one item,
    named by its first path; also returned: how many such repeats were dropped, and the inputs (indices of
    `found`'s third field) that contributed an item. Paths are handled as strings: pathlib's objects cost
    more than the rest of a listing of a million frames."""
    absolute = _absolute_in(os.getcwd())
    entries: dict[object, tuple[Item, str, str]] = {}
    contributed: set[int] = set()
    for path, root, source in found:
        full = absolute(str(path))
        item = _file_item("", path)
        identity = (item.stat[0], item.stat[1]) if item.stat is not None else os.path.normpath(full)
        if identity not in entries:
            entries[identity] = (item, full, _relative(full, absolute(str(root)), path.name))
            contributed.add(source)
    parts = [_frames(item) for item, _, _ in entries.values()]  # each video opened once: "/<frame>"
    for naming in (
        lambda full, rel: _without_suffix(rel),
        lambda full, rel: rel,
        lambda full, rel: full.lstrip("/"),
    ):
        names = [naming(full, rel) for _, full, rel in entries.values()]
        items = [
            replace(part, name=name + part.name) for name, group in zip(names, parts, strict=True) for part in group
        ]
        if len({item.name for item in items}) == len(items):
            break
    return items, len(found) - len(entries), contributed


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
