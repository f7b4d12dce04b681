"""`--shard K/N`: a stable split of a run over N independent tasks, and checking/merging what they wrote.

An item goes to task `sha1(name) mod N`, so the same file always lands in the same task, whatever
else is added to the input. Each task plans its own items (sorted by name, cut into `shard_size`)
and numbers its j-th shard `j * N + K`: indices of different tasks never collide, no task needs to
know what the others hold, and with N = 1 the plan is exactly a plain run's (shard j is index j).
All tasks write into one run folder (shared storage) or into their own `--out`; `check_runs` then
verifies that every item is there exactly once and every stored feature matches its checksum, and
`merge_runs` copies several run folders into one.
A task joins the run folder (its settings must match) instead of refusing existing results; `--force`
is refused with N > 1, as it would delete the other tasks' work, and so is `--pca` (each task would fit
its own basis). Changing N between attempts leaves the old tasks' shards in place: `check` reports
their items twice; start such a run in a fresh `--out`.

SLURM job array (one task per array index, shared file system), then a check:

    #SBATCH --array=0-15 --gpus=1
    lseg-trt extract --weights W.ckpt --images /data/frames --out /shared/features \
        --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --resume
    # afterwards (or as a dependent job):
    lseg-trt manifest check /shared/features/torch/vit_l16/W/480x640-shards.run --images /data/frames

`--resume` makes a re-queued task skip its finished shards. A Kubernetes indexed job does the same
with `--shard $JOB_COMPLETION_INDEX/<completions>`. Tasks with node-local `--out` folders are combined
with `lseg-trt manifest merge RUN1 RUN2 ... --out ROOT`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.manifest import (
    PCA_FILE,
    SETTINGS_FILE,
    SHARDS_DIR,
    Manifest,
    RunLayout,
    read_manifest,
    read_settings,
    settings_changes,
    write_shard_manifest,
)
from lseg_trt.extraction.reader import FeatureSet
from lseg_trt.extraction.recipes import recipe_name
from lseg_trt.extraction.run import ShardSpec, plan_shards
from lseg_trt.extraction.sources import Item
from lseg_trt.names import inside

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """Task `index` of `count` (`--shard K/N`)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise LsegTrtError(f"--shard {self.index}/{self.count}: need 0 <= K < N")

    def owns(self, name: str) -> bool:
        return task_of(name, self.count) == self.index

    def owns_index(self, shard: int) -> bool:
        """Whether shard `shard` of a run is this task's (`plan_task` numbers them `j * N + K`)."""
        return shard % self.count == self.index


def parse_task(text: str) -> Task:
    """`"K/N"` -> Task(K, N); anything else is a user error."""
    parts = text.strip().split("/")
    # isdigit alone accepts superscripts and other scripts' digits, which int() then refuses
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise LsegTrtError(f"--shard {text!r}: expected K/N with integers, e.g. 0/4")
    return Task(int(parts[0]), int(parts[1]))


def task_of(name: str, count: int) -> int:
    """The task an item belongs to: stable across machines, Python versions and added files."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def plan_task(items: list[Item], shard_size: int, task: Task = Task()) -> list[ShardSpec]:
    """This task's shards, numbered `j * N + K` (a plain run's plan when N = 1)."""
    mine = [item for item in items if task.owns(item.name)]
    return [ShardSpec(s.index * task.count + task.index, s.items) for s in plan_shards(mine, shard_size)]


# ---- check and merge ---------------------------------------------------------------------------------


@dataclass
class Check:
    """What a set of run folders holds: `ok` when nothing is missing, twice, unexpected or left half-written."""

    run_dirs: list[Path]
    items: int = 0
    shards: int = 0
    missing: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    partial: list[Path] = field(default_factory=list)  # temporaries of a writer that died
    damaged: list[str] = field(default_factory=list)  # unreadable manifests, stored files cut short or corrupt
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.twice or self.unexpected or self.partial or self.damaged)

    def describe(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items()))
        lines = [f"{self.items} items in {self.shards} shards ({counts or 'none'}): {'ok' if self.ok else 'NOT ok'}"]
        for what, names in (("missing", self.missing), ("twice", self.twice), ("not in the input", self.unexpected)):
            if names:
                lines.append(f"{len(names)} {what}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
        lines += [f"half-written (a worker died; rerun with --resume): {p}" for p in self.partial[:10]]
        lines += [f"damaged (rerun with --resume to redo it): {why}" for why in self.damaged[:10]]
        return "\n".join(lines)


def same_run_settings(run_dirs: list[Path]) -> dict:
    """The common settings of `run_dirs`; different weights, sizes, backends or options are a user error."""
    if not run_dirs:
        raise LsegTrtError("no run folder given")
    first = read_settings(run_dirs[0])
    for run_dir in run_dirs[1:]:
        other = read_settings(run_dir)
        shown = settings_changes(first, other, " vs ")
        if shown:
            raise LsegTrtError(f"{run_dirs[0]} and {run_dir} are different runs ({shown})")
    return first


def check_runs(run_dirs: list[Path], items: list[Item] | None = None, *, verify: bool = True) -> Check:
    """Every manifest record of `run_dirs` (which must be runs of the same settings), checked: every
    manifest readable, no item twice, no shard index twice, every stored feature whole and matching its
    checksum, and, given the input `items`, none missing and none extra. `verify` False reads the
    checksums only of files whose stat fingerprint moved since they were written (as `--resume` does)."""
    run_dirs = [Path(d) for d in run_dirs]
    same_run_settings(run_dirs)
    manifests = [(run_dir, read_manifest(run_dir)) for run_dir in run_dirs]
    check = _tally(manifests, items)
    for run_dir, manifest in manifests:
        stored = FeatureSet(run_dir, manifest)
        for index, records in sorted(manifest.shards.items()):
            why = stored.damaged([r for r in records if r["status"] == "done"], verify=verify)
            if why is not None:
                check.damaged.append(f"shard {index}: {why}")
    return check


def _tally(manifests: list[tuple[Path, Manifest]], items: list[Item] | None = None) -> Check:
    """`check_runs` on manifests already read (their stored files are not read here), a folder given twice
    counted twice."""
    check = Check([run_dir for run_dir, _ in manifests])
    seen: dict[str, int] = {}
    indices: set[int] = set()
    for run_dir, manifest in manifests:
        check.damaged += [why for _, why in sorted(manifest.damaged.items())]
        for index, records in manifest.shards.items():
            if index in indices:
                check.twice.append(f"shard {index}")
            indices.add(index)
            for record in records:
                seen[record["name"]] = seen.get(record["name"], 0) + 1
                check.statuses[record["status"]] = check.statuses.get(record["status"], 0) + 1
        check.partial += sorted((run_dir / SHARDS_DIR).glob(".*.tmp"))
    check.shards = len(indices)
    check.items = len(seen)
    check.twice += sorted(name for name, n in seen.items() if n > 1)
    if items is not None:
        wanted = {item.name for item in items}
        check.missing = sorted(wanted - seen.keys())
        check.unexpected = sorted(seen.keys() - wanted)
    return check


def merge_runs(run_dirs: list[Path], out: Path) -> Check:
    """Copy the run folders of several tasks into one run folder under `out` (same layout as a plain run).

    Everything is checked before anything is written: the runs must share their settings and no item
    or shard index may appear twice. Files are copied first, each shard's manifest last, so an
    interrupted merge is completed by running it again.
    """
    run_dirs = [Path(d) for d in run_dirs]
    settings = same_run_settings(run_dirs)
    manifests = [(run_dir, read_manifest(run_dir)) for run_dir in run_dirs]  # read once: checked, then copied
    check = _tally(manifests)
    if not check.ok:
        raise LsegTrtError(f"cannot merge: {check.describe().splitlines()[-1]}")
    size = tuple(settings["size"])
    layout = RunLayout(
        out, settings["backend"], settings["variant"], settings["weights"], size, settings["format"],
        recipe_name(settings),
    )  # fmt: skip
    if any(layout.run_dir.resolve() == d.resolve() for d in run_dirs):
        raise LsegTrtError(f"merge target {layout.run_dir} is one of the inputs")
    if layout.settings_path.exists():
        same_run_settings([run_dirs[0], layout.run_dir])
        already = set(read_manifest(layout.run_dir).shards)
        for _, manifest in manifests:
            clash = already & set(manifest.shards)
            if clash:
                raise LsegTrtError(f"{layout.run_dir} already holds shard {min(clash)} (merging twice?)")
    layout.manifest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dirs[0] / SETTINGS_FILE, layout.settings_path)
    if (run_dirs[0] / PCA_FILE).exists():
        shutil.copyfile(run_dirs[0] / PCA_FILE, layout.pca_path)
    for run_dir, manifest in manifests:
        source_tree = run_dir.parent
        for index, records in manifest.shards.items():
            for file in sorted({r["file"] for r in records if "file" in r}):
                # shard files are relative to the run folder, npy files to the model tree
                base, target = (run_dir, layout.run_dir) if layout.format == "shards" else (source_tree, layout.tree)
                dest = inside(target, *Path(file).parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(inside(base, *Path(file).parts), dest)
            write_shard_manifest(layout, index, records)
    return check_runs([layout.run_dir])
