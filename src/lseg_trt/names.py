"""Names and paths that come from untrusted input: metadata, sidecars, file stems, labels, user paths.

A name read from a file (an ONNX metadata value, a sidecar field, an image or checkpoint stem) must
never steer where we write: `variant = "../../tmp/x"` or an image called `...png` (stem `..`) would
otherwise escape the output folder. Metadata that should already be a plain name is refused when it
is not (`safe_component`); names users legitimately choose freely, such as image stems, are mapped
to a safe, deterministic and collision-free form (`component_from_stem`); and every join can be
checked to stay under its root (`inside`). The allowed set is plain ASCII, so a component means the
same bytes on every filesystem and needs no quoting in a shell.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from lseg_trt.errors import LsegTrtError

MAX_COMPONENT = 128
_SAFE = re.compile(r"[A-Za-z0-9_+=][A-Za-z0-9._+=-]*")  # no leading '.' (hidden, '.', '..') or '-' (an option)
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._+=-]")
_HASHED = re.compile(r"__[0-9a-f]{8}$")  # the suffix component_from_stem appends
_READABLE = MAX_COMPONENT - len("__12345678")


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def is_safe_component(text: str) -> bool:
    return len(text) <= MAX_COMPONENT and _SAFE.fullmatch(text) is not None


def safe_component(text: str, what: str) -> str:
    """`text` unchanged if it is a plain file-name component, else a user error naming `what`.

    For values that our own tools write as plain names (variant, weights name, backend): anything
    else means the file was edited or forged, so it is refused rather than silently rewritten.
    """
    if not isinstance(text, str) or not is_safe_component(text):
        rule = f"1-{MAX_COMPONENT} characters from A-Z a-z 0-9 . _ + = -, not starting with '.' or '-'"
        raise LsegTrtError(f"unsafe {what} {_shown(str(text))}: a name used in a path must be {rule}")
    return text


def component_from_stem(stem: str) -> str:
    """A safe component for a name the user chose freely (an image stem): readable, deterministic, unique.

    A stem that is already safe is kept as is. Otherwise unsafe characters (spaces, non-ASCII,
    separators) become `_`, a leading `.` or `-` becomes `_`, the result is shortened, and `__` plus
    8 hex digits of the original's sha1 is appended, so two different stems never share a component
    (a safe stem that happens to end like such a suffix is hashed too, for the same reason).
    """
    if is_safe_component(stem) and not _HASHED.search(stem):
        return stem
    readable = _UNSAFE_CHAR.sub("_", stem)[:_READABLE]
    readable = re.sub(r"^[.-]", "_", readable)
    return f"{readable}__{short_digest(stem)}"


def short_digest(text: str) -> str:
    """8 hex digits of sha1: what a sanitised name carries so that two originals never share it."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def inside(root: Path, *parts: str) -> Path:
    """`root / parts`, refused unless it resolves (symbolic links included) to a path strictly below `root`."""
    for part in parts:
        if "\x00" in part:
            raise LsegTrtError(f"unsafe path component {_shown(part)} under {root}: it contains a NUL byte")
    path = Path(root).joinpath(*parts)
    base = Path(root).resolve()
    target = path.resolve()
    if target == base or not target.is_relative_to(base):
        joined = "/".join(parts)
        raise LsegTrtError(f"refusing to use {_shown(joined)} under {root}: it would lead outside that folder")
    return path


def regular_file(path: str | Path, what: str) -> Path:
    """`path` if it is a readable, non-empty regular file; else a user error, before a byte is read.

    Devices (`/dev/zero` reads forever), FIFOs (block until a writer comes) and folders would
    otherwise reach a decoder; symbolic links are followed.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise LsegTrtError(f"{what} not found: {path}") from None
    except OSError as e:
        raise LsegTrtError(f"cannot access {what} {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise LsegTrtError(f"{what} path is a directory, not a file: {path}")
    if not stat.S_ISREG(info.st_mode):
        raise LsegTrtError(f"{what} {path} is not a regular file (a device, FIFO or socket)")
    if info.st_size == 0:
        raise LsegTrtError(f"{what} {path} is empty (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise LsegTrtError(f"cannot open {what} {path}: {e.strerror or e}") from None
    return path
