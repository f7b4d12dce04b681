"""Inductor's compile workers: started only for a graph this cache has not compiled, stopped once warm.

On its first compile a process starts a pool of one worker per core (up to 32), each of which imports
torch, and at exit it waits for them to stop. That pool only pays when Triton or C++ kernels are compiled;
when Inductor's cache already holds the graph, the kernels load in this process and the pool is pure cost:
sixteen extra torch imports competing with the run's own start-up for the cores (seconds each where the
image keeps no bytecode), and a slower exit (issue 24 measured 12 s from the last write to the exit of
`extract` on an H100). Inductor cannot say before compiling whether its cache will answer, so this module
keeps its own record, beside Inductor's cache and gone with it: one small file per graph this process
family has compiled there. A graph on record compiles with `compile_threads = 1` (no pool); any other
compiles with Inductor's own choice. A wrong guess (Inductor's entry evicted, the record kept) costs
time, never correctness: the graph compiles serially. `stop()` shuts a pool down as soon as a run is warm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lseg_trt.files import write_json

log = logging.getLogger(__name__)

RECORD_FOLDER = "lseg-trt-compiled"  # inside Inductor's cache folder


def _record_path(key: dict[str, Any]) -> Path | None:
    """Where the record of `key` lives, or None where Inductor keeps no local graph cache (every run
    compiles, so the pool is worth starting)."""
    from torch._inductor import config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    if not config.fx_graph_cache:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return Path(cache_dir()) / RECORD_FOLDER / f"{digest}.json"


def plan(key: dict[str, Any]) -> bool:
    """Size the pool for compiling the graph `key` describes (everything its compiled code depends on);
    True where it is on record, so it compiles without workers."""
    from torch._inductor import config

    path = _record_path(key)
    cached = path is not None and path.is_file()
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:  # the user's own choice stands
        config.compile_threads = 1 if cached else config.decide_compile_threads()
    log.debug("compile workers for %s: %s", key.get("shape"), "none (compiled before)" if cached else "Inductor's")
    return cached


def remember(key: dict[str, Any]) -> None:
    """Record that `key`'s graph compiled into this cache (after its first successful call)."""
    path = _record_path(key)
    if path is not None and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, key)


def stop() -> None:
    """Shut down any compile-worker pool this process started (Inductor starts a new one if it must
    compile again); a no-op where Inductor was never imported."""
    async_compile = sys.modules.get("torch._inductor.async_compile")
    pools = getattr(async_compile, "_pool_set", None)
    if pools:
        log.debug("stopping %d compile-worker pool(s)", len(pools))
        async_compile.shutdown_compile_workers()  # type: ignore[union-attr]
