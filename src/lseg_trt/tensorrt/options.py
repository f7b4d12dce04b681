"""Builder options, checked before anything is built, and the engine name that shows them.

Engine names: `<onnx-stem>__<precision>[_<flag>...]_ws<MiB>MiB_<profile>.engine`, e.g.
`lseg_vit_l16_random_fp32__fp32_sparse_ws2048MiB_b1_h256-480-1024_w256-480-1024.engine`.
Flags appear only when really applied (`tf32` when TF32 kernels are allowed; absent means strict fp32;
`tac-<sources>` when the tactic sources are not TensorRT's default set, `tac-none` for its own kernels only;
`pv-<features>` for preview features turned on).
The profile token gives min-opt-max of batch, height and width; an axis whose three values are equal
shows one number. Two profiles therefore never share a file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from lseg_trt.errors import LsegTrtError
from lseg_trt.sizes import SIZE_MULTIPLE

Shape = tuple[int, int, int, int]
# 2 GiB: TensorRT-RTX needs ~970 MB of scratch for the fp32 ViT-L/16 at the default profile, and fp16
# over 90 % of the seed's 512 MiB. It is a limit, not an allocation.
DEFAULT_WORKSPACE = 1 << 31
MAX_WORKSPACE = 1 << 38  # 256 GiB: more than any GPU's memory; larger values are typos


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
    """What the user asked of the builder (the seed's defaults: fp16 and sparse on).

    `tf32` is off by default, so an fp32 engine computes in fp32; TensorRT turns TF32 on unless told.
    """

    fp16: bool = True
    sparse: bool = True
    tf32: bool = False
    workspace: int = DEFAULT_WORKSPACE
    profile: Profile = field(default_factory=Profile)
    timing_cache: Path | None = None
    disable_timing_cache: bool = False
    gpu_fallback: bool = False
    debug: bool = False
    flavour: str = "auto"
    # TacticSource names, () for TensorRT's own kernels only; None keeps the flavour's default set. A
    # TensorRT without cuBLAS/cuDNN libraries (or with stand-ins for them) must leave them out.
    tactic_sources: tuple[str, ...] | None = None
    # PreviewFeature names turned on, beside the flavour's defaults: 8.5's FASTER_DYNAMIC_SHAPES_0805 (Myelin
    # for dynamic shapes, "most likely to benefit: transformer-based models") is what 8.6 turned on by default
    preview_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Names as the CLI gives them (upper case, sorted, once each), so one choice is one engine name."""
        for name in ("tactic_sources", "preview_features"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(sorted({n.upper() for n in value})))

    def validate(self) -> None:
        self.profile.validate()
        if self.workspace < 1 << 20:
            raise LsegTrtError(f"--workspace {self.workspace} bytes is below 1 MiB")
        if self.workspace > MAX_WORKSPACE:
            raise LsegTrtError(
                f"--workspace {self.workspace} bytes is above {MAX_WORKSPACE >> 30} GiB, more than any GPU has"
            )
        if self.timing_cache is not None and self.disable_timing_cache:
            raise LsegTrtError("--timing-cache and --disable-timing-cache exclude each other")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return d


def profile_token(profile: Profile) -> str:
    """`b1_h256-480-1024_w256-480-1024`: min-opt-max per axis, one number where all three agree."""

    def axis(i: int) -> str:
        values = (profile.min[i], profile.opt[i], profile.max[i])
        return str(values[0]) if len(set(values)) == 1 else "-".join(map(str, values))

    return f"b{axis(0)}_h{axis(2)}_w{axis(3)}"


def parse_enum_names(option: str, text: str) -> tuple[str, ...]:
    """`cublas,CUDNN` -> ("CUBLAS", "CUDNN"); `none` -> () (for --tactic-sources: TensorRT's own kernels only).
    Which names exist is the flavour's to say (`TensorRT.enum_members`); here only their form is checked."""
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    if names == ["NONE"]:
        return ()
    if not names or "NONE" in names or not all(n.replace("_", "").isalnum() and n.isascii() for n in names):
        raise LsegTrtError(f"{option} {text!r}: give names separated by commas, or none")
    return tuple(sorted(set(names)))


def names_token(prefix: str, names: tuple[str, ...]) -> str:
    """`tac-none`, `tac-cublas+cudnn`, `pv-fasterdynamicshapes0805`: the engine-name token of a choice of names."""
    return f"{prefix}-" + ("+".join(n.lower().replace("_", "") for n in names) or "none")


def engine_name(onnx_stem: str, precision: str, applied_flags: list[str], workspace: int, profile: Profile) -> str:
    """`<onnx-stem>__<precision>_<flags>_ws<MiB>MiB_<profile>.engine` (see the module docstring)."""
    parts = [precision, *applied_flags, f"ws{workspace >> 20}MiB", profile_token(profile)]
    return f"{onnx_stem}__{'_'.join(parts)}.engine"


def engine_options(file_name: str) -> str:
    """What `engine_name` wrote after the ONNX stem (precision, flags, workspace, profile): how two engines of
    one precision differ; "" for a file name it did not make."""
    return file_name.partition("__")[2].removesuffix(".engine")
