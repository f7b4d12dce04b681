"""Where a run's files go, what it records, and how a resume decides what is done.

A run folder `<out>/<backend>/<variant>/<weights>/<HxW>-<format>.run/` holds `run.json` (the settings:
network size, backend, weights sha256, reductions, format, ...) and `manifest/<shard>.jsonl`, one line
per item of that shard: its source (path, the digest of the bytes decoded and the file's stat fingerprint),
its status, where its features are, their checksum, and the stat fingerprint of the file holding them. A
shard's manifest is written, fsync'ed and renamed into place only after every file of the shard is, so a kill, Ctrl-C
or a full disk leaves complete shards with manifests and nothing else that a resume would trust: a
shard without a manifest is simply done again, and gives the same bytes. Per-shard manifests also let
workers of a multi-GPU or multi-node run write side by side without a lock.

npy features keep the seed's layout beside the run folder: `<out>/<backend>/<variant>/<weights>/
<image>/<HxW>.npy`; shards go to `<run folder>/shards/<shard>.safetensors`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lseg_trt.errors import LsegTrtError
from lseg_trt.feature_tree import DEFAULT_RECIPE, FeatureKey
from lseg_trt.files import durable_write, remove_stale_temps, sync_folder
from lseg_trt.names import inside, safe_component
from lseg_trt.sizes import format_size

log = logging.getLogger(__name__)

FORMATS = ("npy", "shards")
# What a run folder holds; `RunLayout` and the readers of finished runs (partition, reader) use these.
SETTINGS_FILE = "run.json"
PCA_FILE = "pca.safetensors"
MANIFEST_DIR = "manifest"
SHARDS_DIR = "shards"
# run.json fields that may differ between a run and its resume.
INFORMATIONAL = ("lseg_trt_version", "batch_size", "workers")


def settings_changes(old: dict, new: dict, arrow: str) -> str:
    """The first four run.json fields (INFORMATIONAL ones aside) that differ, as `key: old<arrow>new`;
    empty when the two are the same run."""
    changed = sorted(k for k in set(old) | set(new) if k not in INFORMATIONAL and old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r}{arrow}{new.get(k)!r}" for k in changed[:4])


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run: an output root, a model (backend, variant, weights), a network size, a format."""

    out: Path
    backend: str
    variant: str
    weights: str
    size: tuple[int, int]
    format: str
    recipe: str = DEFAULT_RECIPE  # a downstream recipe's runs get their own folder and file names

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise LsegTrtError(f"output format {self.format!r}: choose {', '.join(FORMATS)}")
        for value, what in ((self.backend, "backend"), (self.variant, "variant"), (self.weights, "weights name")):
            safe_component(value, what)

    @cached_property  # resolved once: writers ask for it per item
    def tree(self) -> Path:
        return inside(self.out, self.backend, self.variant, self.weights)

    @property
    def run_dir(self) -> Path:
        return self.tree / f"{self.key_label}-{self.format}.run"

    @property
    def key_label(self) -> str:
        return FeatureKey(self.backend, self.variant, self.weights, "", format_size(self.size), self.recipe).label

    @property
    def settings_path(self) -> Path:
        return self.run_dir / SETTINGS_FILE

    @property
    def pca_path(self) -> Path:
        return self.run_dir / PCA_FILE

    @property
    def manifest_dir(self) -> Path:
        return self.run_dir / MANIFEST_DIR

    def shard_manifest(self, index: int) -> Path:
        return self.manifest_dir / f"{index:05d}.jsonl"

    def shard_file(self, index: int) -> Path:
        return self.run_dir / SHARDS_DIR / f"{index:05d}.safetensors"

    def npy_file(self, component: str) -> Path:
        """The seed's per-image file, where `lseg-trt compare` looks (`feature_tree.FeatureKey`)."""
        key = FeatureKey(self.backend, self.variant, self.weights, component, format_size(self.size), self.recipe)
        return inside(self.out, *key.path(Path()).parts)


def start_run(layout: RunLayout, settings: dict, *, resume: bool, force: bool, shared: bool = False) -> None:
    """Create or reopen the run folder for `settings`.

    A folder with results is reopened only with `resume` (settings must match) or `force` (its
    manifests and shards are removed first); otherwise it is a user error, so a second run never
    mixes its features with the first one's silently. A `shared` run folder (the `--shard K/N` tasks of
    one run, maybe on other hosts) keeps other processes' temporaries: a pid says nothing across hosts, and
    each writer clears the leftovers of the shards it redoes itself.
    """
    if resume and force:
        raise LsegTrtError("--resume and --force exclude each other: resume keeps finished work, force redoes it")
    existing = None
    if layout.settings_path.exists() and not force:  # redoing needs no knowledge of the old settings
        try:
            existing = read_settings(layout)
        except LsegTrtError as e:
            raise LsegTrtError(f"{e}; use --force to redo {layout.run_dir}") from None
    has_results = any(layout.manifest_dir.glob("*.jsonl"))
    if force:  # also without a readable run.json
        for folder in (layout.manifest_dir, layout.run_dir / SHARDS_DIR):
            shutil.rmtree(folder, ignore_errors=True)
        layout.pca_path.unlink(missing_ok=True)
    elif existing is not None and resume:
        shown = settings_changes(existing, settings, " -> ")
        if shown:
            raise LsegTrtError(f"cannot resume {layout.run_dir}: settings differ ({shown}); use --force to redo it")
    elif has_results and resume:
        raise LsegTrtError(
            f"cannot resume {layout.run_dir}: its {SETTINGS_FILE} is gone, so nothing says which settings made its "
            "results; use --force to redo it"
        )
    elif has_results:
        raise LsegTrtError(f"{layout.run_dir} already holds results: pass --resume to continue or --force to redo")
    if (resume or force) and not shared:
        remove_run_temps(layout)
    layout.manifest_dir.mkdir(parents=True, exist_ok=True)
    durable_write(layout.settings_path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())


def remove_run_temps(layout: RunLayout) -> list[Path]:
    """Remove the temporaries a killed run left (`files.remove_stale_temps`: their process is gone), which
    no resume would ever finish and `manifest check` reports as half-written: in the run folder, its
    shards and manifests, and, for npy, the image folders that hold one. Those of live processes stay."""
    folders = {layout.run_dir, layout.run_dir / SHARDS_DIR, layout.manifest_dir}
    if layout.format == "npy":
        folders |= {path.parent for path in layout.tree.glob("*/.*.tmp")}
    return [path for folder in sorted(folders) for path in remove_stale_temps(folder)]


def read_settings(layout_or_dir: RunLayout | Path) -> dict:
    path = layout_or_dir.settings_path if isinstance(layout_or_dir, RunLayout) else Path(layout_or_dir) / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LsegTrtError(f"cannot read run settings {path}: {e}") from None
    if not isinstance(settings, dict):
        raise LsegTrtError(f"malformed run settings {path}: not a JSON object")
    return settings


def write_shard_manifest(layout: RunLayout, index: int, records: list[dict]) -> None:
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    durable_write(layout.shard_manifest(index), lines.encode())


STATUSES = ("done", "failed", "nonfinite")


@dataclass(frozen=True)
class Manifest:
    """The shard manifests of a run: the records of each readable one by shard index, and why each of the
    others cannot be trusted (a resume redoes those shards; a reader serves nothing of them)."""

    shards: dict[int, list[dict]]
    damaged: dict[int, str]


def read_manifest(run_dir: Path) -> Manifest:
    """Every shard manifest of `run_dir`. A manifest is a file anyone can edit or a disk can damage: one
    that cannot be read or has a line that is not a record of its shard makes that shard damaged, never the
    whole run unreadable."""
    shards, damaged = {}, {}
    for path in sorted((Path(run_dir) / MANIFEST_DIR).glob("*.jsonl")):
        if not (path.stem.isascii() and path.stem.isdigit()):
            continue
        index = int(path.stem)
        try:
            shards[index] = _records(path.read_text(), index)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, LsegTrtError) as e:
            damaged[index] = f"corrupt manifest {path}: {e}"
            log.warning("%s; its shard counts as not done", damaged[index])
    return Manifest(shards, damaged)


def _records(text: str, index: int) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for r in records:
        if not (isinstance(r, dict) and isinstance(r.get("name"), str) and r.get("status") in STATUSES):
            raise LsegTrtError("a line is not a record with a name and a status")
        if r.get("shard") != index:
            raise LsegTrtError(f"a record of shard {r.get('shard')!r} in the manifest of shard {index}")
        if r["status"] == "done" and not isinstance(r.get("file"), str):
            raise LsegTrtError(f"record {r['name']!r} is done but names no file")
    if not records or len({r["name"] for r in records}) != len(records):
        raise LsegTrtError("no records, or an item twice")
    return records


def remove_shard(layout: RunLayout, index: int) -> None:
    """Take shard `index` out of the store: its manifest first (durably), so that whatever a kill leaves
    afterwards is a file no manifest vouches for, never a manifest without its file."""
    manifest = layout.shard_manifest(index)
    if manifest.exists():
        manifest.unlink()
        sync_folder(manifest.parent)
    layout.shard_file(index).unlink(missing_ok=True)
