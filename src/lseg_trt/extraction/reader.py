"""`open_features`: a finished (or partly finished) run, read by item name.

Each item is read on access into an array of its own, through a file opened and closed for that read: no
file stays open, so a store of any number of shards reads under any `ulimit -n` (a mapping per shard kept
one descriptor each, and a 40k-shard store ran out). Safetensors headers are parsed here (no extra
package) and the last `HEADERS` of them kept. An item is checked against the checksum its manifest
records when its file's stat fingerprint moved since it was written (bytes changed in place, a file
replaced or copied), and with `verify` always; a mismatch is an error naming the file.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.manifest import PCA_FILE, SETTINGS_FILE, Manifest, read_manifest, read_settings
from lseg_trt.extraction.reduce import PCABasis
from lseg_trt.extraction.writers import SAFETENSORS_DTYPES
from lseg_trt.files import digest, fingerprint
from lseg_trt.names import inside

_NUMPY_DTYPES = {name: dtype.type for dtype, name in SAFETENSORS_DTYPES.items()}  # what the writers store
HEADERS = 256  # safetensors headers kept parsed (a few kB each)
_READ_ERRORS = (KeyError, TypeError, ValueError, OverflowError, OSError, EOFError)


class FeatureSet(Mapping[str, np.ndarray]):
    """Item name -> stored features (1, C, H, W) of the items a run finished (`status` done).

    `settings` is the run's `run.json`, `records` every manifest line (failed items included), `damaged`
    the shards whose manifest could not be read (their items are not served), and `pca` the stored basis
    when the run projected its features. An item that two manifests claim (a store merged twice, tasks of
    a changed `--shard K/N`) is never served: reading it is an error that says so. `manifest`: the run's,
    when the caller has read it already; `verify`: check each item read against its checksum.
    """

    def __init__(self, run_dir: Path, manifest: Manifest | None = None, *, verify: bool = False) -> None:
        self.run_dir, self.verify = run_dir, verify
        self.settings = read_settings(run_dir)
        manifest = read_manifest(run_dir) if manifest is None else manifest
        self.damaged_shards = manifest.damaged
        self.records = [r for shard in manifest.shards.values() for r in shard]
        self.done: dict[str, dict] = {}
        self.twice: dict[str, list[int]] = {}
        for r in self.records:
            if r["status"] != "done":
                continue
            if r["name"] in self.done:
                self.twice.setdefault(r["name"], [self.done[r["name"]]["shard"]]).append(r["shard"])
            self.done.setdefault(r["name"], r)
        self.headers: OrderedDict[Path, tuple[dict, int]] = OrderedDict()
        self.files: dict[str, Path] = {}  # a record's file, checked to lie inside the run once per file

    @cached_property
    def pca(self) -> PCABasis | None:
        path = self.run_dir / PCA_FILE
        return PCABasis.load(path) if path.exists() else None

    def __getitem__(self, name: str) -> np.ndarray:
        record = self.done[name]
        if name in self.twice:
            shards = " and ".join(str(s) for s in self.twice[name])
            raise LsegTrtError(
                f"{name} is stored twice in {self.run_dir} (shards {shards}); `lseg-trt extract --resume` with the "
                "run's input keeps one, `lseg-trt manifest check` lists them all"
            )
        try:
            path = self.path_of(record["file"])
            array, data, read_from = self._read(path, record)
        except _READ_ERRORS as e:
            raise LsegTrtError(f"cannot read the features of {name} in {self.run_dir}: {e!r}") from None
        # without `verify`, the bytes are hashed only where the file is not the one written (its stat
        # fingerprint moved: changed in place, replaced, or copied); a store without checksums is read as is
        moved = record.get("checksum") is not None and fingerprint(read_from) != record.get("stored")
        if (self.verify or moved) and digest(data) != record.get("checksum"):
            raise LsegTrtError(f"{path}: the stored features of {name} do not match their checksum (corrupt file)")
        return array

    def _read(self, path: Path, record: dict) -> tuple[np.ndarray, memoryview, os.stat_result]:
        """The item's array, its raw bytes (what the checksum covers) and the stat of the file they were read
        from, read through one short-lived file."""
        if self.settings["format"] == "npy":
            with path.open("rb") as fh:
                shape, dtype = _npy_header(fh)
                return _read_array(fh, fh.tell(), shape, dtype, path)
        header, offset = self._header(path)
        entry = header[record["key"]]
        begin, end = entry["data_offsets"]
        dtype = np.dtype(_NUMPY_DTYPES[entry["dtype"]])
        if end - begin != int(np.prod(entry["shape"])) * dtype.itemsize:
            raise ValueError(f"{path}: the header's offsets of {record['key']} do not fit its shape")
        with path.open("rb") as fh:
            return _read_array(fh, offset + begin, tuple(entry["shape"]), dtype, path)

    def _header(self, path: Path) -> tuple[dict, int]:
        if path in self.headers:
            self.headers.move_to_end(path)
        else:
            header, offset, _ = _shard_header(path)
            self.headers[path] = (header, offset)
            if len(self.headers) > HEADERS:
                self.headers.popitem(last=False)
        return self.headers[path]

    def damaged(self, records: list[dict], *, verify: bool = False) -> str | None:
        """Why the stored features of these records are not whole, or None: a file gone or cut short, a key
        missing, or (read only where asked, or where a file is not the one written: its stat fingerprint
        moved) bytes that do not match their checksum. Keeps no file open, so `--resume` can check a run of
        any number of shards."""
        by_file: dict[str, list[dict]] = {}
        for record in records:
            by_file.setdefault(record.get("file"), []).append(record)
        for file, members in by_file.items():
            try:
                path = self.path_of(file)
                if self.settings["format"] == "npy":
                    _npy_whole(path)
                else:
                    why = _shard_whole(path, [r.get("key") for r in members])
                    if why is not None:
                        return why
                now = fingerprint(os.stat(path))
                if verify or any(r.get("stored") != now for r in members):
                    why = self._checksums(path, members)
                    if why is not None:
                        return why
            except (*_READ_ERRORS, LsegTrtError) as e:
                return f"{file}: {e}"
        return None

    def _checksums(self, path: Path, records: list[dict]) -> str | None:
        for record in records:
            if record.get("checksum") is None:
                return f"{path}: no checksum recorded for {record['name']} (written before stores had them)"
            _, data, _ = self._read(path, record)
            if digest(data) != record["checksum"]:
                return f"{path}: the stored features of {record['name']} do not match their checksum"
        return None

    def fingerprint_of(self, file: str) -> list[int]:
        """The stat fingerprint of a record's file now (`files.fingerprint`)."""
        return fingerprint(os.stat(self.path_of(file)))

    def path_of(self, file: str) -> Path:
        """A manifest is a file on disk, not trusted to name one outside its run (shards) or model tree
        (npy); checked once per file, as a shard serves many items."""
        if file not in self.files:
            base = self.run_dir.parent if self.settings["format"] == "npy" else self.run_dir
            self.files[file] = inside(base, *Path(file).parts)
        return self.files[file]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.done))

    def __len__(self) -> int:
        return len(self.done)


def _read_array(
    fh: BinaryIO, offset: int, shape: tuple[int, ...], dtype: np.dtype, path: Path
) -> tuple[np.ndarray, memoryview, os.stat_result]:
    """`shape` x `dtype` read at `offset`, its bytes, and the file's stat: the size is checked against the
    file before anything is allocated (a header is untrusted and may promise terabytes)."""
    st = os.fstat(fh.fileno())
    if offset + int(np.prod(shape)) * dtype.itemsize > st.st_size:
        raise EOFError(f"{path} ends inside the features it should hold")
    array = np.empty(shape, dtype)
    data = memoryview(array.reshape(-1).view(np.uint8))
    fh.seek(offset)
    if fh.readinto(data) != len(data):
        raise EOFError(f"{path} ends inside the features it should hold")
    return array, data, st


def _shard_header(path: Path) -> tuple[dict, int, int]:
    """A safetensors file's header, where its data starts, and the file's size; a header length past the
    file's end (a cut or foreign file) is refused before it is read, not allocated."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        if size < 8 or length > size - 8:
            raise LsegTrtError(f"{path} is not a whole safetensors file ({size} bytes, header of {length})")
        header = json.loads(fh.read(length))
    if not isinstance(header, dict):
        raise LsegTrtError(f"{path}: its safetensors header is not a table")
    return header, 8 + length, size


def _shard_whole(path: Path, keys: list) -> str | None:
    """Why a shard file does not hold `keys` whole, or None (its header alone)."""
    header, offset, size = _shard_header(path)
    missing = [str(k) for k in keys if k not in header]
    if missing:
        return f"{path}: holds no {', '.join(missing[:3])}"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if offset + max(ends, default=0) > size:
        return f"{path}: cut short ({size} bytes, its header needs {offset + max(ends)})"
    return None


def _npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise LsegTrtError(f"npy version {version}, not one this package writes")
    shape, fortran, dtype = read_header[version](fh)
    if fortran or dtype.hasobject:
        raise LsegTrtError("an npy file this package did not write (Fortran order or Python objects)")
    return shape, dtype


def _npy_whole(path: Path) -> None:
    """Raise unless the npy file holds as many bytes as its header promises."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        shape, dtype = _npy_header(fh)
        need = fh.tell() + int(np.prod(shape)) * dtype.itemsize
    if size < need:
        raise LsegTrtError(f"{path} holds {size} bytes, its header promises {need}")


def open_features(path: str | Path, *, verify: bool = False) -> FeatureSet:
    """The run at `path`: a run folder (`...<HxW>-<format>.run`) or any folder holding exactly one. With
    `verify`, each item read is checked against its checksum (a corrupt one is an error naming its file)."""
    path = Path(path)
    if (path / SETTINGS_FILE).is_file():
        return FeatureSet(path, verify=verify)
    runs = sorted(p.parent for p in path.glob(f"**/*.run/{SETTINGS_FILE}")) if path.is_dir() else []
    if len(runs) != 1:
        found = ", ".join(str(r) for r in runs[:5]) if runs else "none"
        raise LsegTrtError(f"{path} must be a run folder or hold exactly one (found: {found})")
    return FeatureSet(runs[0], verify=verify)
