"""Downstream extraction recipes as data: one frozen row of settings per project that extracts LSeg features.

Every step, constant and source line is in `shared/docs/recipes.md`; a row here says the same in fields
that `lseg_trt.extraction.multicrop` executes, so a project is reproduced by its name and any field can
be overridden (`Recipe.with_overrides`, the CLI's `--base-size`, `--crop`, ...). Terms: `head1` is the
encoder's output before the per-pixel L2 normalisation, `unit` that normalisation, `up2` lang-seg's x2
bilinear (align_corners=True) `output_conv`.

The tiled layout is lang-seg's `MultiEvalModule` (PyTorch-Encoding): per scale the long side becomes
`ceil(base * scale)`, the image is padded with normalised black to the crop where shorter, and crop x crop
tiles start at multiples of the stride (the last one padded, not right-aligned).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.manifest import SETTINGS_FILE, RunLayout, read_settings
from lseg_trt.extraction.sources import Source, decode, decode_video, list_items
from lseg_trt.sizes import SIZE_MULTIPLE, format_size

# Input resize rules, applied before anything else (see `multicrop.prepared`).
RESIZES = {
    "network": "antialiased bilinear to input_size, on the pixels (lseg-trt's own single pass)",
    "none": "no resize: the full-resolution image",
    "exact": "bilinear align_corners=True to input_size, on the normalised image",
    "wider": "as exact, only when the image is wider than input_size (DFF, Feature-3DGS)",
    "torchvision": "bilinear align_corners=False, no antialiasing, to input_size on the normalised image "
    "(lang-seg's app: torchvision 0.10's Resize of a tensor)",
    "cv2": "cv2.resize INTER_LINEAR to input_size on the uint8 pixels, OpenCV's fixed point (lseg-minimal)",
    "cv2-float": "cv2.resize INTER_LINEAR to input_size on the float64 pixels, not rounded (ConceptFusion: "
    "gradslam's dataset)",
}
# The input's normalisation after /255. The projects write lang-seg's mean = std = 0.5 into their code (the
# transforms and the pad value -mean/std), whatever checkpoint they load: a row reproducing one keeps it.
NORMALISATIONS = {
    "checkpoint": "the checkpoint's mean/std (lseg-trt's single pass)",
    "half": "mean = std = 0.5 as the projects hard-code it (lang-seg, VLMaps, OpenScene, DFF, Feature-3DGS)",
    "none": "[0, 1] pixels (lseg-minimal, ConceptFusion)",
}
FLIPS = ("none", "sum", "mean")  # horizontal flip: off, f(x) + flip(f(flip(x))), or that halved
# What one crop contributes; half-resolution tensors are at crop/2, the others at the crop's size.
TENSORS = {
    "unit": "unit(head1) at crop/2 (OpenScene)",
    "raw": "head1 at crop/2 (lseg-minimal, ConceptFusion)",
    "unit-up2": "up2(unit(head1)) (lang-seg's feature form of its logits)",
    "vlmaps": "up2(float(fp16(logit_scale) * fp16(unit(head1)))) (VLMaps)",
    "up2-unit": "unit(up2(head1)) (DFF)",
    "up2": "up2(head1) (Feature-3DGS)",
}
HALF_RESOLUTION = ("unit", "raw")
RAW_TENSORS = ("raw", "up2-unit", "up2")  # need head1 itself: torch backends only
# Where each scale's result goes before the scales are summed.
BACKS = {
    "image": "cropped to the scaled image, resized back to the image size (align_corners=True)",
    "scaled": "cropped to the scaled image, not resized back: one scale only (VLMaps)",
    "grid": "the single crop's feature grid cut at [0:h, 0:w] of the image size: one scale, one crop (OpenScene)",
}
DTYPES = ("fp32", "fp16")


@dataclass(frozen=True)
class Recipe:
    """One way of turning an image into LSeg features; `check` says which combinations are valid."""

    name: str
    matches: str  # the project and code it reproduces
    resize: str = "network"  # a key of RESIZES
    input_size: tuple[int, int] | None = (480, 640)  # (H, W) for the resize rules that need one
    normalise: str = "checkpoint"  # a key of NORMALISATIONS
    tiled: bool = False  # crops, scales and flips of lang-seg's MultiEvalModule; False: one pass on the image
    base_size: int | None = 520  # long side at scale 1; None: twice the image's long side (OpenScene's 2L)
    crop: int | None = 480  # square crop side; None: the base size
    stride: int | None = None  # tile step; None: int(crop * 2/3), lang-seg's stride rate
    scales: tuple[float, ...] = (1.0,)
    flip: str = "none"  # a member of FLIPS
    tensor: str = "unit"  # a key of TENSORS
    back: str = "image"  # a key of BACKS
    average: bool = False  # divide the scale sum by scales x flip forwards (lang-seg's feature form)
    output_size: tuple[int, int] | None = None  # final bilinear resize of the result
    output_align_corners: bool = True  # of that resize (DFF: False)
    unit_output: bool = False  # F.normalize the result per pixel at the end
    dtype: str = "fp32"  # of the result

    def with_overrides(self, **overrides: object) -> Recipe:
        """This row with the fields given (None values ignored), checked. An input size given to a row
        that does not resize makes it resize to exactly that size as lang-seg's app does (360x480 first, with
        torchvision's `Resize` of the normalised tensor)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in fields(self)})
        if unknown:
            raise LsegTrtError(f"recipe {self.name}: no setting {', '.join(unknown)}")
        if "input_size" in given and self.resize == "none" and "resize" not in given:
            given["resize"] = "torchvision"
        if "scales" in given:
            given["scales"] = tuple(float(s) for s in given["scales"])  # type: ignore[union-attr]
        return replace(self, **given).checked()

    def checked(self) -> Recipe:
        """Itself, or a one-line user error naming the first invalid setting."""
        for value, choices, what in (
            (self.resize, RESIZES, "resize"),
            (self.normalise, NORMALISATIONS, "normalise"),
            (self.flip, FLIPS, "flip"),
            (self.tensor, TENSORS, "tensor"),
            (self.back, BACKS, "back"),
            (self.dtype, DTYPES, "dtype"),
        ):
            if value not in choices:
                raise LsegTrtError(f"recipe {self.name}: {what} {value!r}: choose {', '.join(choices)}")
        if self.resize != "none" and self.resize != "wider" and self.input_size is None:
            raise LsegTrtError(f"recipe {self.name}: resize {self.resize} needs an input size")
        for size, what in ((self.input_size, "input size"), (self.output_size, "output size")):
            if size is not None and (len(size) != 2 or min(size) < 1):
                raise LsegTrtError(f"recipe {self.name}: {what} {size}: must be two positive numbers (H, W)")
        if self.resize == "network" and self.input_size is not None:
            check_multiple(self.input_size, f"recipe {self.name}: input size")
        if not self.scales or any(not s > 0 or math.isinf(s) for s in self.scales):
            raise LsegTrtError(f"recipe {self.name}: scales {list(self.scales)}: each must be a positive number")
        if self.base_size is not None and self.base_size < 1:
            raise LsegTrtError(f"recipe {self.name}: base size {self.base_size}: must be positive")
        if self.crop is not None:
            check_multiple((self.crop,), f"recipe {self.name}: crop")
            if self.stride is not None and not 0 < self.stride <= self.crop:
                raise LsegTrtError(f"recipe {self.name}: stride {self.stride}: must be in 1..crop ({self.crop})")
        elif self.stride is not None and self.stride < 1:
            raise LsegTrtError(f"recipe {self.name}: stride {self.stride}: must be at least 1")
        if not self.tiled and (len(self.scales) != 1 or self.scales[0] != 1 or self.flip != "none"):
            raise LsegTrtError(f"recipe {self.name}: scales and flips need tiled crops (a one-pass recipe)")
        if self.tiled and self.back in ("scaled", "grid") and len(self.scales) != 1:
            raise LsegTrtError(f"recipe {self.name}: back {self.back!r} takes one scale, not {list(self.scales)}")
        if self.tiled and (self.tensor in HALF_RESOLUTION) != (self.back == "grid"):
            raise LsegTrtError(
                f"recipe {self.name}: tiled crops give {self.tensor!r}; half-resolution tensors (unit, raw) go with "
                "back 'grid' and full-resolution ones with 'image' or 'scaled'"
            )
        return self

    @property
    def needs_raw(self) -> bool:
        """Whether the crops need raw head1 (the runner must give it: torch backends)."""
        return self.tensor in RAW_TENSORS

    @property
    def forwards_per_tile(self) -> int:
        return 2 if self.flip != "none" else 1

    def describe(self) -> dict:
        """The settings as run.json records them (JSON types)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def output_shape(self, channels: int, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(C, H, W) of the result for an image of `image_size` (H, W), without running anything."""
        size = self.output_size or self._result_size(self.input_image_size(image_size))
        return (channels, *size)

    def input_image_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The image's size after the input resize rule."""
        h, w = image_size
        if self.resize == "none" or (self.resize == "wider" and (self.input_size is None or w <= self.input_size[1])):
            return h, w
        return self.input_size  # type: ignore[return-value]

    def _result_size(self, image: tuple[int, int]) -> tuple[int, int]:
        if not self.tiled:
            check_multiple(image, f"recipe {self.name}: a one-pass recipe's image")
            return (image[0] // 2, image[1] // 2) if self.tensor in HALF_RESOLUTION else image
        if self.back == "scaled":
            return plan_scale(image, *self.geometry(image), self.scales[0]).scaled
        return image

    def geometry(self, image: tuple[int, int]) -> tuple[int, int, int]:
        """(base, crop, stride) for an image of that size (after the input resize), checked."""
        base = self.base_size if self.base_size is not None else 2 * max(image)
        crop = self.crop if self.crop is not None else base
        check_multiple((crop,), f"recipe {self.name}: crop {'2L' if self.crop is None else ''}")
        stride = self.stride if self.stride is not None else int(crop * 2.0 / 3.0)
        if not 0 < stride <= crop:
            raise LsegTrtError(f"recipe {self.name}: stride {stride}: must be in 1..crop ({crop})")
        return base, crop, stride


def check_multiple(numbers: tuple[int, ...], what: str) -> None:
    """A one-line user error unless every number is a positive multiple of the network's 32."""
    if any(n < SIZE_MULTIPLE or n % SIZE_MULTIPLE for n in numbers):
        raise LsegTrtError(f"{what} {'x'.join(map(str, numbers))}: must be a positive multiple of {SIZE_MULTIPLE}")


@dataclass(frozen=True)
class ScalePlan:
    """One scale of the tiled layout: the scaled image, the padded canvas, the tiles (h0, h1, w0, w1)."""

    scaled: tuple[int, int]  # (height, width) of the resized image
    canvas: tuple[int, int]  # (ph, pw): padded so that every tile lies inside
    tiles: tuple[tuple[int, int, int, int], ...]  # row-major, as lang-seg's loop visits them
    single: bool  # long side <= crop: one padded crop, no count normalisation


def plan_scale(image: tuple[int, int], base: int, crop: int, stride: int, scale: float) -> ScalePlan:
    """lang-seg's `MultiEvalModule.forward` for one scale, as sizes and tile boxes (its own arithmetic)."""
    h, w = image
    long_size = int(math.ceil(base * scale))
    if h > w:
        height, width = long_size, int(1.0 * w * long_size / h + 0.5)
    else:
        height, width = int(1.0 * h * long_size / w + 0.5), long_size
    if long_size <= crop:
        return ScalePlan((height, width), (crop, crop), ((0, crop, 0, crop),), True)
    ph, pw = max(height, crop), max(width, crop)
    h_grids = int(math.ceil(1.0 * (ph - crop) / stride)) + 1
    w_grids = int(math.ceil(1.0 * (pw - crop) / stride)) + 1
    tiles = tuple(
        (i * stride, min(i * stride + crop, ph), j * stride, min(j * stride + crop, pw))
        for i in range(h_grids)
        for j in range(w_grids)
    )
    return ScalePlan((height, width), (ph, pw), tiles, False)


DFF = Recipe(
    "dff",
    "Distilled Feature Fields encode_images: 4 scales, flip averaged, unit(up2(head1)), 360x480, fp16",
    resize="wider",
    input_size=(360, 480),
    normalise="half",
    tiled=True,
    scales=(0.75, 1.0, 1.25, 1.75),
    flip="mean",
    tensor="up2-unit",
    output_size=(360, 480),
    output_align_corners=False,
    unit_output=True,
    dtype="fp16",
)
DEFAULT = Recipe("default", "lseg-trt's single pass: one antialiased resize, unit-norm features at H/2")

RECIPES: dict[str, Recipe] = {
    r.name: r.checked()
    for r in (
        DEFAULT,
        Recipe(
            "langseg-eval",
            "lang-seg's multi-scale evaluation (LSeg_MultiEvalModule, ADE20K test mode), features not logits",
            resize="none",
            input_size=None,
            normalise="half",
            tiled=True,
            scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
            flip="sum",
            tensor="unit-up2",
            average=True,
        ),
        Recipe(
            "vlmaps",
            "VLMaps get_lseg_feat: one scale, long side 520, 480 tiles, fp16 logit-scaled features",
            resize="none",
            input_size=None,
            normalise="half",
            tiled=True,
            tensor="vlmaps",
            back="scaled",
        ),
        Recipe(
            "openscene",
            "OpenScene's lseg_feature_extraction: crop = 2x the long side, flip summed, unit(head1), fp16",
            resize="none",
            input_size=None,
            normalise="half",
            tiled=True,
            base_size=None,
            crop=None,
            flip="sum",
            tensor="unit",
            back="grid",
            dtype="fp16",
        ),
        Recipe(
            "lseg-minimal",
            "lseg-minimal extract_lseg_features: cv2 640x480, no mean/std, raw head1, then F.normalize",
            resize="cv2",
            normalise="none",
            tensor="raw",
            unit_output=True,
        ),
        Recipe(
            "conceptfusion",
            "ConceptFusion: gradslam's float cv2 resize to 640x480, raw head1 kept (resized with --output-size)",
            resize="cv2-float",
            normalise="none",
            tensor="raw",
        ),
        DFF,
        replace(
            DFF,
            name="feature-3dgs",
            matches="Feature-3DGS (DFF's encoder): up2(head1), the raw scale sum at the input size, fp16",
            tensor="up2",
            output_size=None,
            output_align_corners=True,
            unit_output=False,
        ),
    )
}


def get_recipe(name: str, **overrides: object) -> Recipe:
    """The named row with `overrides` (None values ignored), checked; an unknown name is a user error."""
    if name not in RECIPES:
        raise LsegTrtError(f"unknown recipe {name!r}: choose {', '.join(RECIPES)}")
    return RECIPES[name].with_overrides(**overrides)


def recipe_name(settings: dict) -> str:
    """The recipe a run's settings (run.json, an extractor's metadata) record; `default` when none."""
    recipe = settings.get("recipe")
    return recipe["name"] if isinstance(recipe, dict) and isinstance(recipe.get("name"), str) else DEFAULT.name


def check_resume(layout: RunLayout) -> None:
    """Refuse `--resume` of a run folder that does not exist when one of another recipe, at this size and
    format, does: each recipe has its own folder, so the resume would silently start a new run instead of
    continuing the one the user meant. (Changed settings of the same recipe are refused by `start_run`.)"""
    if layout.settings_path.exists():
        return
    for sibling in sorted(layout.tree.glob(f"{format_size(layout.size)}-*{layout.format}.run")):
        settings_path = sibling / SETTINGS_FILE
        if sibling != layout.run_dir and settings_path.is_file():
            other = recipe_name(read_settings(sibling))
            if other != layout.recipe:
                raise LsegTrtError(
                    f"cannot resume recipe {layout.recipe}: {sibling} is a run of recipe {other}; drop --resume to "
                    "start this recipe's run beside it"
                )


def first_image_size(source: Source) -> tuple[int, int]:
    """(H, W) of the first readable item of `source` in name order, the order a run takes them: a recipe's
    output size follows from its images' size, and a run stores one shape."""
    for item in list_items(source):
        _, pixels = next(decode_video([item])) if item.frame is not None else decode(item)
        if not isinstance(pixels, LsegTrtError):
            return pixels.shape[0], pixels.shape[1]
    raise LsegTrtError("no readable image among the inputs")
