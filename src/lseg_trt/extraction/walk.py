"""The folder walk of `extract`'s inputs: every wanted file under a folder, links to folders followed once.

A dataset is often assembled from links (`frames/seq02 -> /elsewhere/seq02`), so a link to a folder is
entered like the folder itself, and its files are named through the link. Each real folder (device and
inode) is walked once across all inputs of a run: a link back to an ancestor (a loop), a second link to
the same folder, or the same folder given twice (`I` and `I/../I`) is counted and named, not walked again.
Real folders are walked before links, so a folder reachable both ways is named by its real path, and the
result does not depend on the order the file system lists entries in.

One `scandir` per folder, whose entries know their type without a `stat` for files: a dataset holds
millions of frames, and the listing with pathlib's walk took 42 us a frame on the developer machine, this
one 19 (`benchmarks/listing_bench.py`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FolderId = tuple[int, int]  # (device, inode)


@dataclass
class Walk:
    """What a walk found: the wanted files (sorted), how many entries it passed over (hidden, special,
    unreadable), the files of other suffixes by suffix, and the folder links it did not enter again."""

    files: list[str] = field(default_factory=list)
    passed_over: int = 0
    other: Counter[str] = field(default_factory=Counter)
    repeated: list[str] = field(default_factory=list)


def walk(folders: list[str], wanted: Callable[[str], bool], seen: set[FolderId]) -> Walk:
    """The files under `folders` (one named folder, or the folders a glob matched) for which `wanted(name)`
    holds; `seen` holds the folders already walked by this listing and gains this walk's."""
    found = Walk()
    pending: list[str] = []
    links = [folder for folder in folders if os.path.islink(folder)]
    for folder in folders:
        if folder not in links and not _enter(folder, seen, found):
            pending.append(folder)
    while pending or links:
        if pending:
            _scan_folder(pending.pop(), wanted, seen, found, pending, links)
            continue
        # the shallowest link first, then by name: a folder is named by its shortest path through links,
        # and the same tree gives the same walk
        links.sort(key=lambda path: (path.count(os.sep), path), reverse=True)
        link = links.pop()
        if _enter(link, seen, found):
            log.warning("not entering %s: it leads to a folder already listed (a loop, or one folder twice)", link)
        else:
            pending.append(link)
    found.files.sort()
    return found


def _enter(folder: str, seen: set[FolderId], found: Walk) -> bool:
    """Mark `folder` walked; True (and counted in `found.repeated`) if it was already."""
    try:
        st = os.stat(folder)
    except OSError:
        found.passed_over += 1
        return True
    if (st.st_dev, st.st_ino) in seen:
        found.repeated.append(folder)
        return True
    seen.add((st.st_dev, st.st_ino))
    return False


def _scan_folder(
    path: str, wanted: Callable[[str], bool], seen: set[FolderId], found: Walk, pending: list, links: list
) -> None:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                _take(entry, wanted, seen, found, pending, links)
    except OSError as e:  # a folder that cannot be listed
        log.warning("cannot list %s: %s", e.filename, e.strerror)
        found.passed_over += 1


def _take(
    entry: os.DirEntry, wanted: Callable[[str], bool], seen: set[FolderId], found: Walk, pending: list, links: list
) -> None:
    """Sort one entry: a folder to walk, a link to a folder to walk after the real ones, a wanted file, a
    file of another suffix, or one passed over (hidden, special, a broken link, a type that cannot be read)."""
    if entry.name.startswith("."):
        found.passed_over += 1
        return
    try:
        if entry.is_dir():
            if entry.is_symlink():
                links.append(entry.path)
                return
            identity = (entry.stat().st_dev, entry.inode())
            if identity not in seen:  # a bind mount of a folder already walked is not walked twice
                seen.add(identity)
                pending.append(entry.path)
            return
        if entry.is_file():
            if wanted(entry.name):
                found.files.append(entry.path)
            else:
                found.other[os.path.splitext(entry.name)[1].lower() or "(no suffix)"] += 1
            return
    except OSError:
        pass
    found.passed_over += 1
