"""`--ray [ADDRESS]`: the shards of a run as a Ray Dataset, one row per shard, on a pool of actors.

Each actor (one GPU each on a GPU cluster) builds its `FeatureExtractor` once and calls
`extract_shard` for the rows it is given, so the files and manifests are a local run's; the driver
lists the items, opens the run folder and checks the records that come back. Ray restarts a dead
actor and retries its task; a retried shard is simply written again, atomically and to the same
bytes, and its manifest (written last) is replaced whole, so no shard is half-written or twice.
All nodes must see the output folder at the same path (a shared file system).
Ray is an optional extra (`pip install "lseg-trt[ray]"`), imported only here and only when used.

Several nodes: the same Python environment (lseg-trt[ray], the weights file) on every node and the
output on a shared file system at the same path, then

    head$   ray start --head --port 6379
    node$   ray start --address HEAD:6379            # on each GPU node
    head$   lseg-trt extract --weights W.ckpt --images /shared/frames --out /shared/features --ray HEAD:6379

which runs one actor per GPU of the cluster (`--actors` to choose); `--resume` continues a run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import numpy as np

from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.extraction.multi_gpu import ExtractorSpec, fail_once_here, summary_from_manifests
from lseg_trt.extraction.run import RunOutput, ShardSpec, Summary, extract_shard

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
RETRIES = 3  # actor restarts and task retries: a pre-empted node is survived, a shard that always crashes is not


class ShardTask:
    """A callable class for `Dataset.map_batches`: rows `{"shard": index}` in, `{"record": json}` out."""

    def __init__(self, spec: ExtractorSpec, output: RunOutput, shards: dict[int, ShardSpec], device: str) -> None:
        self.output, self.shards = output, shards
        self.extractor = spec.build(device).activate()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        records = []
        for index in batch["shard"].tolist():
            records += extract_shard(self.extractor, self.shards[int(index)], self.output)
            fail_once_here()  # after the shard is written and before its records return: the retry redoes it
        return {"record": [json.dumps(r, sort_keys=True) for r in records]}


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` (host:port, ray://host:port or auto), or start a local instance
    when None; an address that does not answer is a user error within `CONNECT_TIMEOUT_S`."""
    # Ray's C++ client logs every failed retry to stderr; a user error must stay one line (set the variable
    # yourself to see them)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
    except ImportError:
        raise MissingDependencyError('--ray needs Ray: pip install "lseg-trt[ray]"') from None
    if address not in (None, "auto"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            raise LsegTrtError(f"--ray {address!r}: expected HOST:PORT or ray://HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise LsegTrtError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e})") from None
    _refuse_code_in_working_folder()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except ConnectionError as e:
        raise LsegTrtError(f"--ray {address}: {str(e).splitlines()[0]}") from None


def _refuse_code_in_working_folder() -> None:
    """Ray puts the driver's working folder on every worker's module path, ahead of the installed
    packages, so a `numpy.py` or `torch/` there would run in the workers. Users start extraction from
    dataset folders, which are not code: refuse a folder that holds importable Python instead of running it."""
    importable = (".py", ".pyc", ".so", ".pyd")
    with os.scandir(".") as entries:
        code = sorted(
            e.name for e in entries
            if e.name.endswith(importable) or (e.is_dir() and os.path.isfile(os.path.join(e.path, "__init__.py")))
        )  # fmt: skip
    if code:
        raise LsegTrtError(
            f"--ray: Ray adds the working folder ({os.getcwd()}) to its workers' module path, and it holds "
            f"Python code ({', '.join(code[:5])}); run from another folder"
        )


def run_ray(
    spec: ExtractorSpec,
    shards: list[ShardSpec],
    output: RunOutput,
    *,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
) -> Summary:
    """Run `shards` on a pool of `actors` Ray actors (default: one per GPU of the cluster, else 2) in the
    connected cluster (`connect`); returns what the manifests record after checking the returned records."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_per_actor = (1.0 if gpus else 0.0) if gpus_per_actor is None else gpus_per_actor
    actors = actors or (int(gpus // gpus_per_actor) if gpus_per_actor else 2)
    if actors < 1:
        raise LsegTrtError(f"{actors} Ray actors: the cluster has {gpus:g} GPU(s) for {gpus_per_actor:g} per actor")
    device = "cuda" if gpus_per_actor else "cpu"
    start = time.perf_counter()
    summary = Summary(output.layout.run_dir)
    if shards:
        rows = ray.data.from_items([{"shard": s.index} for s in shards])
        remote: dict[str, Any] = {"max_restarts": RETRIES, "max_task_retries": RETRIES}
        if not gpus_per_actor:
            remote["num_cpus"] = 1
        results = rows.map_batches(
            ShardTask,
            batch_size=1,
            concurrency=min(actors, len(shards)),
            num_gpus=gpus_per_actor or None,
            fn_constructor_kwargs={
                "spec": spec.with_known_hashes(), "output": output, "shards": {s.index: s for s in shards},
                "device": device,
            },
            **remote,
        ).take_all()  # fmt: skip
        names = [json.loads(row["record"])["name"] for row in results]
        expected = sorted(item.name for shard in shards for item in shard.items)
        if sorted(names) != expected:
            unique = len(set(names))
            raise RuntimeError(f"Ray returned {len(names)} records ({unique} unique) for {len(expected)} items")
    summary.seconds = time.perf_counter() - start
    return summary_from_manifests(summary, shards, output.layout.run_dir)
