"""Atomic file output (an interrupted export, build or save never leaves a half-written artefact), and
the sha256 of a file, which keys the caches and checks that an artefact is still the one recorded, and the
fast digests and stat fingerprints by which the feature store notices changed inputs and corrupt features.

Temporary files are `.<name>.<pid>.tmp` and export folders `.export-<pid>-<random>`: hidden, never
matched by a glob for the real artefact, and named after the process that owns them, so a later run
can tell leftovers of a killed process (SIGKILL skips every `finally`) from work in progress.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import xxhash

log = logging.getLogger(__name__)

EXPORT_PREFIX = ".export-"
STALE_AFTER_S = 24 * 3600  # a temporary whose owner we cannot identify is removed only after this long
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$|^\.export-(?:(?P<export_pid>\d+)-)?.+$")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary is removed on any failure (KeyboardInterrupt included).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_path(path: Path) -> Path:
    """`.<name>.<pid>.tmp` beside `path`: what `remove_stale_temps` recognises as this process's."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temps_of(path: Path) -> Iterator[Path]:
    """The temporaries `temp_path` names for `path`, of any process."""
    return path.parent.glob(f".{glob.escape(path.name)}.*.tmp")


def write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON, written atomically (sidecars, benchmark records)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def durable_write(path: Path, *chunks: bytes | memoryview) -> None:
    """Write `chunks` to `path` atomically and fsync it and its folder: it exists whole or not at all,
    also after a power cut. Chunks are written as given (no joined copy of large arrays)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename inside it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_dir_prefix() -> str:
    """Prefix for `tempfile.TemporaryDirectory` that records the owning process."""
    return f"{EXPORT_PREFIX}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temps(folder: str | Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove temporaries left in `folder` by killed exports and builds; returns what was removed.

    A temporary is stale when its process is gone, or (pid reused, or a name without a pid) when it
    is older than `max_age_s`. Temporaries of live processes, this one included, are kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for entry in folder.iterdir():
        match = _TEMP.match(entry.name)
        if match is None:
            continue
        pid = match.group("pid") or match.group("export_pid")
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:  # removed by its owner meanwhile
            continue
        if (pid is not None and not _alive(int(pid))) or age > max_age_s:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted export or build", entry)
            removed.append(entry)
    return removed


FileVersion = tuple[str, int, int, int, int, int]


def file_version(path: str | Path) -> FileVersion | None:
    """(real path, device, inode, size, modification and change times) of a file, to remember what was
    read from it while these stay the same (the change time also moves when a copy restores an old
    modification time); None for a file modified in the last two seconds, which must be read again:
    file times are only as fine as the kernel's clock tick, so a same-size rewrite that soon could keep
    them (git's "racy" files)."""
    st = os.stat(path)
    if time.time_ns() - st.st_mtime_ns < 2_000_000_000:
        return None
    return os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# sha256 by `file_version`: a benchmark asks for the same model's hash once per size and backend, and
# the worker processes of a run are handed their coordinator's (`known_sha256s`), as hashing a 1.7 GB
# checkpoint takes about a second in every process
_hashed: dict[FileVersion, str] = {}
# files this large also keep their hash on disk for later processes (`_recall`): every `extract` hashes its
# checkpoint for the manifest, and the read would otherwise be a second one beside the load itself
RECALL_FROM_BYTES = 64 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, streamed (checkpoints are gigabytes); remembered per `file_version`, by this
    process and, for large files, in the user's cache folder."""
    version = file_version(path)
    if version is None:
        return _sha256(path)
    if version not in _hashed:
        large = version[3] >= RECALL_FROM_BYTES
        recalled = _recall(version) if large else None
        _hashed[version] = recalled or _sha256(path)
        if large and recalled is None:
            _keep(version, _hashed[version])
    return _hashed[version]


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/lseg-trt` (by default `~/.cache/lseg-trt`): what this user's processes share."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "lseg-trt"


def _hash_record(version: FileVersion) -> Path:
    return user_cache_dir() / "sha256" / (hashlib.sha1(version[0].encode()).hexdigest() + ".json")


def _recall(version: FileVersion) -> str | None:
    """The sha256 an earlier process recorded for exactly this `file_version` (same real path, device, inode,
    size and times: the trust the feature store puts in a stat), or None."""
    try:
        record = json.loads(_hash_record(version).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != list(version):
        return None
    sha = record.get("sha256")
    return sha if isinstance(sha, str) and _SHA256.match(sha) else None


def _keep(version: FileVersion, sha: str) -> None:
    """Record a hash for `_recall`; a cache folder that cannot be written only costs the next process a read."""
    path = _hash_record(version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"version": list(version), "sha256": sha})
    except OSError as e:
        log.debug("not keeping the sha256 of %s: %s", version[0], e)


def known_sha256s() -> dict[FileVersion, str]:
    """The hashes this process has made, to hand to processes that will read the same files."""
    return dict(_hashed)


def remember_sha256s(known: dict[FileVersion, str]) -> None:
    """Take another process's hashes (`known_sha256s`) as this one's. Each is keyed by a file's real
    path, device, inode, size and times, so it only answers for a file nobody has changed since."""
    _hashed.update(known)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- content digests and stat fingerprints of the feature store ---------------------------------------
#
# xxh3-128 (the xxhash package): a non-cryptographic hash that runs at memory speed (about 20 GB/s a core
# against blake2b's 1 and sha256's 0.5 with SHA extensions), so checking an 80 MB stored tensor or hashing
# every decoded frame costs little next to the read itself (`benchmarks/store_integrity_bench.py`). It
# finds changed or corrupt bytes, not an attacker's collision: the store trusts whoever can write into it.

DIGEST = "xxh3-128"
RACY_NS = 2_000_000_000  # a file changed this recently may change again within the same clock tick


def digest(data: bytes | memoryview) -> str:
    """`xxh3-128:<hex>` of `data`."""
    return f"{DIGEST}:{xxhash.xxh3_128_hexdigest(data)}"


def file_digest(path: str | Path) -> str:
    """`digest` of a whole file, streamed (a video of gigabytes)."""
    state = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            state.update(chunk)
    return f"{DIGEST}:{state.hexdigest()}"


Fingerprint = list[int]


def fingerprint(st: os.stat_result) -> Fingerprint:
    """(device, inode, size, modification and change times) of a stat: what any rewrite of the file moves.
    The change time is set by the kernel on every write, rename or `utime`, so a copy that restores an old
    modification time (`cp -p`, `rsync -t`, `tar x`) still changes it; only a change of the system clock
    or a write below the file system (bit rot) keeps it."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def source_fingerprint(st: os.stat_result) -> Fingerprint | None:
    """`fingerprint` of a file just read, or None when it changed within `RACY_NS` of now: a second write in
    the same clock tick would keep every time (git's "racy" files), so such a file is hashed again."""
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return None
    return fingerprint(st)
