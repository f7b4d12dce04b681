"""`open_features`: a finished (or partly finished) run, read lazily by item name.

npy files open memory-mapped; a safetensors shard is mapped once and each item is a zero-copy view
into it (the header is parsed here, so reading needs no extra package).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.manifest import PCA_FILE, SETTINGS_FILE, read_manifest, read_settings
from lseg_trt.extraction.reduce import PCABasis
from lseg_trt.extraction.writers import SAFETENSORS_DTYPES
from lseg_trt.names import inside

_NUMPY_DTYPES = {name: dtype.type for dtype, name in SAFETENSORS_DTYPES.items()}  # what the writers store


class FeatureSet(Mapping[str, np.ndarray]):
    """Item name -> stored features (1, C, H, W) of the items a run finished (`status` done).

    `settings` is the run's `run.json`, `records` every manifest line (failed items included), and
    `pca` the stored basis when the run projected its features. `manifest`: the run's, when the caller
    has read it already.
    """

    def __init__(self, run_dir: Path, manifest: dict[int, list[dict]] | None = None) -> None:
        self.run_dir = run_dir
        self.settings = read_settings(run_dir)
        manifest = read_manifest(run_dir) if manifest is None else manifest
        self.records = [r for shard in manifest.values() for r in shard]
        self.done = {r["name"]: r for r in self.records if r["status"] == "done"}
        self.shards: dict[Path, np.memmap] = {}
        self.files: dict[str, Path] = {}  # a record's file, checked to lie inside the run once per file

    @cached_property
    def pca(self) -> PCABasis | None:
        path = self.run_dir / PCA_FILE
        return PCABasis.load(path) if path.exists() else None

    def __getitem__(self, name: str) -> np.ndarray:
        record = self.done[name]
        try:
            if self.settings["format"] == "npy":
                return np.load(self._file(record["file"]), mmap_mode="r")
            return self._shard_tensor(self._file(record["file"]), record["key"])
        except (KeyError, TypeError, ValueError, OverflowError, OSError, EOFError) as e:
            raise LsegTrtError(f"cannot read the features of {name} in {self.run_dir}: {e!r}") from None

    def damaged(self, records: list[dict]) -> str | None:
        """Why the stored features of these records are not whole (a file gone or cut short, a key
        missing), or None. Reads headers only and keeps no file open, so `--resume` can check a run of
        any number of shards (mapping each, as reading does, ran out of file descriptors)."""
        by_file: dict[str, list[str]] = {}
        for record in records:
            by_file.setdefault(record.get("file"), []).append(record.get("key"))
        for file, keys in by_file.items():
            try:
                path = self._file(file)
                if self.settings["format"] == "npy":
                    _npy_whole(path)
                else:
                    header, offset, size = _shard_header(path)
                    missing = [str(k) for k in keys if k not in header]
                    if missing:
                        return f"{path}: holds no {', '.join(missing[:3])}"
                    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
                    if offset + max(ends, default=0) > size:
                        return f"{path}: cut short ({size} bytes, its header needs {offset + max(ends)})"
            except (KeyError, TypeError, ValueError, OverflowError, OSError, EOFError, LsegTrtError) as e:
                return f"{file}: {e}"
        return None

    def _file(self, file: str) -> Path:
        """A manifest is a file on disk, not trusted to name one outside its run (shards) or model tree
        (npy); checked once per file, as a shard serves many items."""
        if file not in self.files:
            base = self.run_dir.parent if self.settings["format"] == "npy" else self.run_dir
            self.files[file] = inside(base, *Path(file).parts)
        return self.files[file]

    def _shard_tensor(self, path: Path, key: str) -> np.ndarray:
        header, data = self._shard(path)
        entry = header[key]
        begin, end = entry["data_offsets"]
        return data[begin:end].view(_NUMPY_DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def _shard(self, path: Path) -> tuple[dict, np.memmap]:
        if path not in self.shards:
            try:
                header, offset, _ = _shard_header(path)
                data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
            except (OSError, ValueError) as e:
                raise LsegTrtError(f"cannot read feature shard {path}: {e}") from None
            self.shards[path] = (header, data)  # type: ignore[assignment]
        return self.shards[path]  # type: ignore[return-value]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.done))

    def __len__(self) -> int:
        return len(self.done)


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


def _npy_whole(path: Path) -> None:
    """Raise unless the npy file holds as many bytes as its header promises."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise LsegTrtError(f"{path}: npy version {version}, not one this package writes")
        shape, _, dtype = read_header[version](fh)
        need = fh.tell() + int(np.prod(shape)) * dtype.itemsize
    if size < need:
        raise LsegTrtError(f"{path} holds {size} bytes, its header promises {need}")


def open_features(path: str | Path) -> FeatureSet:
    """The run at `path`: a run folder (`...<HxW>-<format>.run`) or any folder holding exactly one."""
    path = Path(path)
    if (path / SETTINGS_FILE).is_file():
        return FeatureSet(path)
    runs = sorted(p.parent for p in path.glob(f"**/*.run/{SETTINGS_FILE}")) if path.is_dir() else []
    if len(runs) != 1:
        found = ", ".join(str(r) for r in runs[:5]) if runs else "none"
        raise LsegTrtError(f"{path} must be a run folder or hold exactly one (found: {found})")
    return FeatureSet(runs[0])
