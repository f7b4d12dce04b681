"""Builder options, checked before anything is built, and the engine name that shows them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from lseg_trt.errors import LsegTrtError
from lseg_trt.sizes import SIZE_MULTIPLE

Shape = tuple[int, int, int, int]
DEFAULT_WORKSPACE = 1 << 29  # 512 MiB, the seed converter's default


def parse_shape(text: str) -> Shape:
    """`1x3x480x480` -> (1, 3, 480, 480)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise LsegTrtError(f"cannot parse shape {text!r}: use BxCxHxW, e.g. 1x3x480x480") from None
    if len(dims) != 4 or min(dims) < 1:
        raise LsegTrtError(f"cannot parse shape {text!r}: use BxCxHxW with positive numbers")
    return dims  # type: ignore[return-value]


def format_shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


@dataclass(frozen=True)
class Profile:
    """One optimisation profile for the image input."""

    min: Shape = (1, 3, 256, 256)
    opt: Shape = (1, 3, 480, 480)
    max: Shape = (1, 3, 1024, 1024)

    def validate(self) -> None:
        for name, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if shape[1] != 3:
                raise LsegTrtError(f"--{name}-shape {format_shape(shape)}: the image has 3 channels")
            bad = [d for d in shape[2:] if d % SIZE_MULTIPLE]
            if bad:
                raise LsegTrtError(
                    f"--{name}-shape {format_shape(shape)}: height and width must be multiples of {SIZE_MULTIPLE}"
                )
        for lo, hi, lo_name, hi_name in ((self.min, self.opt, "min", "opt"), (self.opt, self.max, "opt", "max")):
            if any(a > b for a, b in zip(lo, hi, strict=True)):
                raise LsegTrtError(
                    f"--{lo_name}-shape {format_shape(lo)} exceeds --{hi_name}-shape {format_shape(hi)} in some axis"
                )

    def contains(self, shape: Shape) -> bool:
        return all(lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True))


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked of the builder (the seed's defaults: fp16 and sparse on, 512 MiB)."""

    fp16: bool = True
    sparse: bool = True
    workspace: int = DEFAULT_WORKSPACE
    profile: Profile = field(default_factory=Profile)
    timing_cache: Path | None = None
    disable_timing_cache: bool = False
    gpu_fallback: bool = False
    debug: bool = False
    flavour: str = "auto"

    def validate(self) -> None:
        self.profile.validate()
        if self.workspace < 1 << 20:
            raise LsegTrtError(f"--workspace {self.workspace} bytes is below 1 MiB")
        if self.timing_cache is not None and self.disable_timing_cache:
            raise LsegTrtError("--timing-cache and --disable-timing-cache exclude each other")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return d


def engine_name(onnx_stem: str, precision: str, applied_flags: list[str], workspace: int) -> str:
    """`<onnx-stem>__<precision>_<flags>_ws<MiB>MiB.engine`, flags in the seed's order.

    Only flags that were really applied appear: a flag the flavour lacks is logged and left out.
    """
    parts = [precision, *applied_flags, f"ws{workspace >> 20}MiB"]
    return f"{onnx_stem}__{'_'.join(parts)}.engine"
