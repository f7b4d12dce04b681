"""Recipes: the batched device runner against references written from shared/docs/recipes.md.

Each reference is the project's loop as the doc describes it, crop by crop (lang-seg's
`MultiEvalModule`: resize, pad each tile, `module_inference` with the flip, count normalisation), written
here without the package's planning code, on the tiny variants with random weights, on the CPU, float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lseg_trt.artifacts import ModelSource
from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.multicrop import RecipeRunner
from lseg_trt.extraction.recipes import RECIPES, get_recipe
from lseg_trt.metrics import compare_features
from lseg_trt.models import LSeg

Net = Callable[[torch.Tensor], torch.Tensor]


# ---- the reference, from the doc ------------------------------------------------------------------


def to_tensor_normalize(image: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """torchvision ToTensor + Normalize(mean, std), batched: (1, 3, H, W)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x[None]


def pad_image(img: torch.Tensor, mean: tuple, std: tuple, crop_size: int) -> torch.Tensor:
    b, c, h, w = img.shape
    padh = crop_size - h if h < crop_size else 0
    padw = crop_size - w if w < crop_size else 0
    pad_values = -np.array(mean) / np.array(std)
    out = img.new_empty((b, c, h + padh, w + padw))
    for i in range(c):
        out[:, i] = F.pad(img[:, i], (0, padw, 0, padh), value=float(pad_values[i]))
    return out


def flip_image(img: torch.Tensor) -> torch.Tensor:
    return img.index_select(3, torch.arange(img.size(3) - 1, -1, -1))


def module_inference(f: Net, image: torch.Tensor, flip: str) -> torch.Tensor:
    output = f(image)
    if flip != "none":
        output = output + flip_image(f(flip_image(image)))
        if flip == "mean":
            output = output / 2
    return output


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(x, (h, w), mode="bilinear", align_corners=True)


def multi_eval(
    image: torch.Tensor, f: Net, mean: tuple, std: tuple, *, base: int, crop: int, scales: list[float], flip: str,
    back: bool = True, grid: bool = False,
) -> torch.Tensor:  # fmt: skip
    """lang-seg's MultiEvalModule.forward (doc section 1), with OpenScene's early return (`grid`) and
    VLMaps' no-resize-back (`back` False)."""
    _, _, h, w = image.shape
    stride = int(crop * 2.0 / 3.0)
    scores = None
    for scale in scales:
        long_size = int(math.ceil(base * scale))
        if h > w:
            height = long_size
            width = short_size = int(1.0 * w * long_size / h + 0.5)
        else:
            width = long_size
            height = short_size = int(1.0 * h * long_size / w + 0.5)
        cur = resize(image, height, width)
        if long_size <= crop:
            outputs = module_inference(f, pad_image(cur, mean, std, crop), flip)
            if grid:
                return outputs[:, :, :h, :w]
            outputs = outputs[:, :, :height, :width]
        else:
            pad = pad_image(cur, mean, std, crop) if short_size < crop else cur
            _, _, ph, pw = pad.shape
            h_grids = int(math.ceil(1.0 * (ph - crop) / stride)) + 1
            w_grids = int(math.ceil(1.0 * (pw - crop) / stride)) + 1
            outputs = count = None
            for idh in range(h_grids):
                for idw in range(w_grids):
                    h0, w0 = idh * stride, idw * stride
                    h1, w1 = min(h0 + crop, ph), min(w0 + crop, pw)
                    out = module_inference(f, pad_image(pad[:, :, h0:h1, w0:w1], mean, std, crop), flip)
                    if outputs is None:
                        outputs = out.new_zeros((1, out.shape[1], ph, pw))
                        count = out.new_zeros((1, 1, ph, pw))
                    outputs[:, :, h0:h1, w0:w1] += out[:, :, : h1 - h0, : w1 - w0]
                    count[:, :, h0:h1, w0:w1] += 1
            assert (count == 0).sum() == 0
            outputs = (outputs / count)[:, :, :height, :width]
        score = resize(outputs, h, w) if back else outputs
        scores = score if scores is None else scores + score
    return scores


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def reference(lseg: LSeg, name: str, image: np.ndarray, s: dict) -> torch.Tensor:
    """The recipe `name` as its project runs it (doc sections 1-5), with the test's settings `s`."""
    encoder = lseg.image_encoder
    head1 = encoder.head1_features
    mean, std = lseg.mean, lseg.std
    tiled = {"base": s.get("base_size", 520), "crop": s.get("crop", 480)}
    with torch.inference_mode():
        if name == "langseg-eval":
            scales = s.get("scales", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
            x = to_tensor_normalize(image, mean, std)
            out = multi_eval(x, lambda c: resize(unit(head1(c)), c.shape[2], c.shape[3]), mean, std, **tiled,
                             scales=scales, flip="sum")  # fmt: skip
            return out[0] / (2 * len(scales))
        if name == "vlmaps":
            logit_scale = torch.tensor(1 / 0.07)  # fp32, 0-dim: fp16 arithmetic with an fp16 tensor

            def f(c: torch.Tensor) -> torch.Tensor:
                return resize((logit_scale * unit(head1(c)).half()).float(), c.shape[2], c.shape[3])

            x = to_tensor_normalize(image, mean, std)
            return multi_eval(x, f, mean, std, **tiled, scales=[1.0], flip="none", back=False)[0]
        if name == "openscene":
            x = to_tensor_normalize(image, mean, std)
            two_l = 2 * max(image.shape[:2])
            out = multi_eval(x, lambda c: unit(head1(c)), mean, std, base=two_l, crop=two_l, scales=[1.0],
                             flip="sum", grid=True)  # fmt: skip
            return out[0].half()
        if name in ("lseg-minimal", "conceptfusion"):  # image already 640x480-like: cv2.resize is a no-op
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
            out = head1(x)
            if name == "lseg-minimal":
                return F.normalize(out, dim=1)[0]
            size = s.get("output_size")
            return (resize(out, *size) if size else out)[0]
        if name in ("dff", "feature-3dgs"):
            th, tw = s.get("input_size", (360, 480))
            x = to_tensor_normalize(image, mean, std)
            if x.shape[-1] > tw:
                x = resize(x, th, tw)
            scales = s.get("scales", [0.75, 1.0, 1.25, 1.75])
            if name == "dff":
                out = multi_eval(x, lambda c: unit(resize(head1(c), c.shape[2], c.shape[3])), mean, std, **tiled,
                                 scales=scales, flip="mean")  # fmt: skip
                out = F.interpolate(out, (th, tw), mode="bilinear", align_corners=False)
                return F.normalize(out, dim=1)[0].half()
            out = multi_eval(x, lambda c: resize(head1(c), c.shape[2], c.shape[3]), mean, std, **tiled,
                             scales=scales, flip="mean")  # fmt: skip
            return out[0].half()
    raise AssertionError(name)


# ---- the comparison -------------------------------------------------------------------------------


def batched(lseg: LSeg, name: str, image: np.ndarray, overrides: dict, batch_size: int = 16) -> torch.Tensor:
    runner = make_runner(parse_backend("torch"), ModelSource.from_lseg(lseg), "cpu", "models")
    recipe = get_recipe(name, **overrides)
    return RecipeRunner(runner, recipe, lseg.mean, lseg.std, batch_size=batch_size)([torch.from_numpy(image)])[0]


def check_exact(candidate: torch.Tensor, ref: torch.Tensor, rounding: torch.dtype | None = None) -> dict:
    """Per-pixel cosine >= 0.99999 and max-abs within a few roundings of the largest value, in the
    narrowest dtype the recipe rounds to (`rounding`: VLMaps' fp16 step inside an fp32 result; a value
    near an fp16 tie may round the other way when the float32 network differs by one ulp)."""
    assert candidate.shape == ref.shape and candidate.dtype == ref.dtype
    m = compare_features(candidate[None].float(), ref[None].float())
    scale = float(ref.float().abs().max())
    eps = torch.finfo(rounding or ref.dtype).eps
    assert m.nonfinite == 0
    assert m.pixel_cosine_min >= 0.99999, m
    assert m.max_abs <= 64 * eps * scale, (m.max_abs, scale)  # a few ulps of the largest value
    return {"pixel_cosine_min": m.pixel_cosine_min, "max_abs": m.max_abs, "max_value": scale}


SMALL = {"base_size": 130, "crop": 96}  # the real layouts, at a tenth of the pixels: tiles, pads, scales
CASES = [  # recipe, image (H, W), overrides for the runner, the same settings for the reference
    ("langseg-eval", (75, 101), SMALL),
    ("langseg-eval", (101, 75), SMALL),  # portrait: the other branch of the long-side rule
    ("vlmaps", (75, 101), SMALL),
    ("openscene", (45, 64), {}),
    ("lseg-minimal", (96, 128), {"input_size": (96, 128)}),
    ("conceptfusion", (96, 128), {"input_size": (96, 128), "output_size": (75, 101)}),
    ("dff", (75, 101), {**SMALL, "input_size": (60, 80), "output_size": (60, 80)}),
    ("dff", (50, 70), {**SMALL, "input_size": (60, 80), "output_size": (60, 80)}),  # narrower: not resized
    ("feature-3dgs", (75, 101), {**SMALL, "input_size": (60, 80)}),
]


def image_of(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


RN_CASES = [  # the ResNet variant (ImageNet mean/std: another pad value) on fewer scales
    ("langseg-eval", (75, 101), {**SMALL, "scales": (0.75, 1.25)}),
    ("openscene", (45, 64), {}),
    ("conceptfusion", (96, 128), {"input_size": (96, 128)}),
    ("feature-3dgs", (75, 101), {**SMALL, "input_size": (60, 80), "scales": (1.0, 1.75)}),
]


def check_case(lseg: LSeg, name: str, size: tuple[int, int], overrides: dict) -> dict:
    image = image_of(size)
    ref = reference(lseg, name, image, overrides)
    rounding = torch.float16 if name == "vlmaps" else None
    return check_exact(batched(lseg, name, image, overrides, batch_size=5), ref, rounding)  # odd: chunks cut pairs


@pytest.mark.parametrize(("name", "size", "overrides"), CASES)
def test_batched_recipe_equals_the_crop_by_crop_reference(
    tiny_vit: LSeg, name: str, size: tuple[int, int], overrides: dict
) -> None:
    check_case(tiny_vit, name, size, overrides)


@pytest.mark.parametrize(("name", "size", "overrides"), RN_CASES)
def test_batched_recipe_equals_the_reference_on_the_resnet(
    tiny_rn: LSeg, name: str, size: tuple[int, int], overrides: dict
) -> None:
    check_case(tiny_rn, name, size, overrides)


REAL = [("langseg-eval", (90, 120)), ("dff", (120, 160)), ("openscene", (240, 320))]


@pytest.mark.parametrize(("name", "size"), REAL)
def test_real_settings(tiny_vit: LSeg, name: str, size: tuple[int, int]) -> None:
    """The rows as they are (520/480/320, all scales; OpenScene's ScanNet 2L = 640)."""
    image = image_of(size, seed=1)
    out = batched(tiny_vit, name, image, {})
    check_exact(out, reference(tiny_vit, name, image, {}))
    expected = {"langseg-eval": (512, 90, 120), "dff": (512, 360, 480), "openscene": (512, 240, 320)}[name]
    assert tuple(out.shape) == (tiny_vit.config.out_c, *expected[1:])


def test_the_default_row_is_the_single_pass(tiny_vit: LSeg) -> None:
    """`default` through the recipe runner gives what `FeatureExtractor` gives (one antialiased resize)."""
    from lseg_trt.extraction import FeatureExtractor

    image = image_of((75, 101))
    runner = make_runner(parse_backend("torch"), ModelSource.from_lseg(tiny_vit), "cpu", "models")
    expected = FeatureExtractor(runner, (64, 96), tiny_vit.mean, tiny_vit.std)(torch.from_numpy(image)[None])[0]
    got = batched(tiny_vit, "default", image, {"input_size": (64, 96)})
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"crop": 100}, "crop 100: must be a positive multiple of 32"),
        ({"stride": 0}, "stride 0: must be in 1..crop"),
        ({"stride": 481}, "stride 481: must be in 1..crop"),
        ({"scales": (1.0, 0.0)}, "each must be a positive number"),
        ({"scales": (-0.5,)}, "each must be a positive number"),
        ({"flip": "twice"}, "flip 'twice'"),
        ({"bogus": 1}, "no setting bogus"),
    ],
)
def test_invalid_settings_are_user_errors(overrides: dict, message: str) -> None:
    with pytest.raises(LsegTrtError, match=message):
        get_recipe("langseg-eval", **overrides)


def test_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(LsegTrtError, match="unknown recipe 'vlmap'.*vlmaps"):
        get_recipe("vlmap")


def test_every_row_is_valid_and_describable() -> None:
    for recipe in RECIPES.values():
        assert recipe.checked() is recipe
        assert recipe.describe()["name"] == recipe.name


def test_layouts_of_the_doc() -> None:
    """The doc's counts: lang-seg eval takes 18 crops (36 forwards) for a 4:3 image; VLMaps' output is
    390x520 for 4:3 and 293x520 for 16:9."""
    from lseg_trt.extraction.recipes import plan_scale

    langseg = get_recipe("langseg-eval")
    tiles = [plan_scale((960, 1280), 520, 480, 320, s).tiles for s in langseg.scales]
    assert sum(map(len, tiles)) == 18
    vlmaps = get_recipe("vlmaps")
    assert vlmaps.output_shape(512, (960, 1280)) == (512, 390, 520)
    assert vlmaps.output_shape(512, (720, 1280)) == (512, 293, 520)


def test_raw_head1_needs_a_torch_runner() -> None:
    """Engines and ONNX files end in the normalisation: a recipe needing raw head1 says so at once."""
    from lseg_trt.backends.base import BackendSpec, Runner

    class UnitOnly(Runner):
        @classmethod
        def from_source(cls, *args: object) -> Runner:
            raise NotImplementedError

        def _activate(self) -> None:
            pass

        def _infer(self, x: torch.Tensor) -> torch.Tensor:
            return x

    runner = UnitOnly(BackendSpec("onnxruntime", "fp32"), "cpu")
    with pytest.raises(LsegTrtError, match="onnxruntime gives unit-norm features only"):
        RecipeRunner(runner, get_recipe("dff"), (0.5,) * 3, (0.5,) * 3)
    RecipeRunner(runner, get_recipe("langseg-eval"), (0.5,) * 3, (0.5,) * 3)  # unit features: any backend
