"""Reading lang-seg checkpoints safely and telling which network they hold.

lang-seg checkpoints are PyTorch-Lightning 1.3/1.4 files. Besides tensors they pickle a reference to
`pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` (the key of the `callbacks` dict), so
plain `torch.load(weights_only=True)` refuses them, and `weights_only=False` would execute whatever the
file's pickles say. We stay on torch's restricted unpickler and allow-list, under their own names,
inert stand-ins for exactly the Lightning globals the file references (as timm's `_torch_load` allow-
lists the one global its checkpoints need). Any other global is refused with its name; we never fall
back to unsafe loading.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from lseg_trt.errors import LsegTrtError
from lseg_trt.names import regular_file

LIGHTNING_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.")


class LightningStandIn:
    """Inert replacement for a Lightning class referenced by a checkpoint; holds whatever state it gets."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: object) -> None:
        self.state = state


def _stand_ins(path: Path) -> list[tuple[type, str]]:
    """Stand-ins for the Lightning globals the file references; any other global is refused by name."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
        return []  # not a zip checkpoint: torch.load below refuses or reports the real error
    foreign = [name for name in names if not name.startswith(LIGHTNING_MODULES)]
    if foreign:
        raise LsegTrtError(
            f"refusing to load {path}: it references code that a checkpoint should not contain "
            f"({', '.join(foreign[:5])})"
        )
    stand_ins = []
    for name in names:
        module, _, qualname = name.rpartition(".")
        cls = type(qualname, (LightningStandIn,), {"__module__": module})
        stand_ins.append((cls, name))
    return stand_ins


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a lang-seg `.ckpt` or a plain state-dict file, keys without the `net.` prefix.

    Accepts a Lightning checkpoint (`{"state_dict": {"net.…": tensor}}`), a bare state dict with or
    without the `net.` prefix, and `{"state_dict": …}` / `{"model": …}` wrappers. Raises
    LsegTrtError for anything a user can get wrong: missing or unreadable path, anything but a
    regular file (a device or FIFO would never end), empty, corrupt or truncated file, unsafe content,
    no tensors.
    """
    path = regular_file(path, "checkpoint")
    stand_ins = _stand_ins(path)
    try:
        with torch.serialization.safe_globals(stand_ins), _quiet_torch():
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(e).__name__
        raise LsegTrtError(f"cannot load {path} safely (corrupt, or not a plain checkpoint): {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise LsegTrtError(f"cannot read checkpoint {path} (corrupt or truncated?): {e}") from None
    return _model_tensors(obj, path)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's warnings while it unpickles (quantized, sparse or TypedStorage tensors): a file we
    refuse a moment later with one clear line should not first print torch's notes about its internals."""
    with warnings.catch_warnings():
        for category in (UserWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"torch(\.|$)")
        yield


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _model_tensors(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap the container and strip lang-seg's `net.` prefix (the LightningModule's `self.net`)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise LsegTrtError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise LsegTrtError(f"{path} contains no tensors")
    if all(k.startswith("net.") for k in tensors):
        tensors = {k[len("net.") :]: v for k, v in tensors.items()}
    return tensors
