"""The JSON sidecar beside a cached artefact (a TensorRT engine, an AOTInductor package): what both
caches do alike to trust one again. A sidecar is read without trusting it, the artefact is reused only
while it still has the size and sha256 its sidecar recorded, and every record is stamped the same way.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from lseg_trt._version import __version__
from lseg_trt.files import file_sha256


def read_json(path: Path) -> Any:
    """The parsed content of `path`; ValueError says why there is none ("missing", "unreadable (...)")."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError("missing") from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"unreadable ({e})") from None


def file_matches(path: Path, size: object, sha256: object, *, hash_it: bool = True) -> bool:
    """Whether `path` is still the file recorded with `size` and `sha256` (values straight from a sidecar,
    so anything else than what we wrote is a mismatch). `hash_it=False` checks the size alone: a quick
    guard against truncation where hashing gigabytes would cost more than it protects."""
    try:
        if path.stat().st_size != size:
            return False
    except FileNotFoundError:
        return False
    return not hash_it or file_sha256(path) == sha256


def stamp() -> dict[str, str]:
    """When and by which release a record was written (not part of any request: never compared)."""
    return {
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lseg_trt_version": __version__,
    }
