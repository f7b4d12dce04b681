"""Recipes: the batched device runner against the crop-by-crop references of `recipe_reference` (written
from shared/docs/recipes.md), on the tiny variants with random weights, on the CPU, float32; the recipe
table's checks; `extract --recipe` through the store, resume and compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import recipe_reference
from lseg_trt.artifacts import ModelSource
from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.errors import LsegTrtError
from lseg_trt.extraction.cv2_resize import cv2_linear
from lseg_trt.extraction.multicrop import RecipeRunner
from lseg_trt.extraction.recipes import RECIPES, get_recipe
from lseg_trt.metrics import compare_features
from lseg_trt.models import LSeg, random_lseg

# ---- batched against the reference --------------------------------------------------------------


def batched(
    lseg: LSeg, name: str, image: np.ndarray, overrides: dict, batch_size: int = 16, call_size: int | None = None
) -> torch.Tensor:
    runner = make_runner(parse_backend("torch"), ModelSource.from_lseg(lseg), "cpu", "models")
    recipe = get_recipe(name, **overrides)
    return RecipeRunner(runner, recipe, lseg.mean, lseg.std, batch_size=batch_size, call_size=call_size)([image])[0]


def reference(lseg: LSeg, name: str, image: np.ndarray, s: dict) -> torch.Tensor:
    return recipe_reference.reference(lseg.image_encoder.head1_features, name, torch.from_numpy(image), s)


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
    ("langseg-eval", (101, 75), {**SMALL, "scales": (1.0, 1.75)}),  # portrait: the other branch of the long side
    ("vlmaps", (75, 101), SMALL),
    ("openscene", (45, 64), {}),
    ("langseg-eval", (101, 135), {**SMALL, "scales": (1.0, 1.25), "input_size": (72, 96)}),  # lang-seg's app
    ("lseg-minimal", (96, 128), {"input_size": (96, 128)}),
    ("lseg-minimal", (75, 101), {"input_size": (96, 128)}),  # OpenCV's fixed-point resize of the uint8 frame
    ("conceptfusion", (96, 128), {"input_size": (96, 128), "output_size": (75, 101)}),
    ("conceptfusion", (150, 202), {"input_size": (96, 128)}),  # gradslam's float64 resize, not rounded
    ("dff", (75, 101), {**SMALL, "input_size": (60, 80), "output_size": (60, 80)}),
    ("dff", (50, 70), {**SMALL, "input_size": (60, 80), "output_size": (60, 80), "scales": (0.75, 1.25)}),  # narrow
    ("feature-3dgs", (75, 101), {**SMALL, "input_size": (60, 80)}),
]


def image_of(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


RN_CASES = [  # the ResNet variant, whose ImageNet mean/std the projects' hard-coded 0.5 replaces, on fewer scales
    ("langseg-eval", (75, 101), {**SMALL, "scales": (0.75, 1.25)}),
    ("openscene", (45, 64), {}),
    ("conceptfusion", (96, 128), {"input_size": (96, 128)}),
    ("feature-3dgs", (75, 101), {**SMALL, "input_size": (60, 80), "scales": (1.0, 1.75)}),
]


def check_case(lseg: LSeg, name: str, size: tuple[int, int], overrides: dict, call_size: int | None = None) -> dict:
    """The runner against the reference. On the CPU (call_size None) each crop and flip goes through the
    network alone, as in the projects' loops: the same bits. Batched calls round differently in the network
    and so, after VLMaps' fp16 step or an fp16 output, by whole fp16 roundings here and there."""
    image = image_of(size)
    ref = reference(lseg, name, image, overrides)
    got = batched(lseg, name, image, overrides, batch_size=5, call_size=call_size)
    if call_size is None:
        assert torch.equal(got, ref), compare_features(got[None].float(), ref[None].float())
    rounding = torch.float16 if name == "vlmaps" else None
    return check_exact(got, ref, rounding)


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


@pytest.mark.parametrize(("name", "size", "overrides"), [CASES[1], CASES[2], CASES[-2]])
def test_batched_calls_agree_with_the_reference(
    tiny_vit: LSeg, name: str, size: tuple[int, int], overrides: dict
) -> None:
    """Batches of crops as on a GPU, on the CPU: five inputs a call, so chunks cut crop/flip pairs."""
    check_case(tiny_vit, name, size, overrides, call_size=5)


@pytest.mark.parametrize(("name", "size", "overrides", "groups"), [
    ("lseg-minimal", (96, 128), {"input_size": (96, 128)}, [4, 1]),  # one forward an image: four to a call
    ("langseg-eval", (75, 101), {**SMALL, "scales": (1.0, 1.25)}, [1, 1, 1, 1, 1]),  # more than a call each
])  # fmt: skip
def test_images_are_assembled_a_call_at_a_time(
    tiny_vit: LSeg, name: str, size: tuple[int, int], overrides: dict, groups: list[int]
) -> None:
    """A batch of images is assembled a network call's worth of crops at a time (each image holds
    full-resolution maps until finished), and each result is still its own image's."""
    images = [image_of(size, seed) for seed in range(5)]
    runner = make_runner(parse_backend("torch"), ModelSource.from_lseg(tiny_vit), "cpu", "models")
    recipe = RecipeRunner(runner, get_recipe(name, **overrides), tiny_vit.mean, tiny_vit.std, batch_size=4, call_size=4)
    seen: list[int] = []
    assemble = recipe._assemble
    recipe._assemble = lambda states, jobs: seen.append(len(states)) or assemble(states, jobs)  # type: ignore[method-assign]
    results = recipe(images)
    assert seen == groups
    for image, result in zip(images, results, strict=True):
        check_exact(result, reference(tiny_vit, name, image, overrides))


REAL = [  # the two big layouts are slow on 2 cores (36 and 26 forwards of 480x480, twice): the SMALL cases cover them
    pytest.param("langseg-eval", (90, 120), marks=pytest.mark.slow),
    pytest.param("dff", (120, 160), marks=pytest.mark.slow),
    ("openscene", (240, 320)),
]


@pytest.mark.parametrize(("name", "size"), REAL)
def test_real_settings(tiny_vit: LSeg, name: str, size: tuple[int, int]) -> None:
    """The rows as they are (520/480/320, all scales; OpenScene's ScanNet 2L = 640)."""
    image = image_of(size, seed=1)
    out = batched(tiny_vit, name, image, {})
    ref = reference(tiny_vit, name, image, {})
    assert torch.equal(out, ref)  # on the CPU: one network input per call, as the project's loop
    check_exact(out, ref)
    expected = {"langseg-eval": (512, 90, 120), "dff": (512, 360, 480), "openscene": (512, 240, 320)}[name]
    assert tuple(out.shape) == (tiny_vit.config.out_c, *expected[1:])


CV2 = np.load(Path(__file__).parent / "fixtures" / "cv2_resize.npz")  # real cv2.resize outputs


@pytest.mark.parametrize("key", [k for k in CV2.files if k.count("/") == 2])
def test_opencv_resize_is_bit_exact(key: str) -> None:
    """lseg-minimal's and ConceptFusion's `cv2.resize`, reproduced without OpenCV: the package's version
    and the test reference both equal OpenCV's own output, the uint8 path to the level (a bilinear filter
    rounded to uint8 is one level off in about one pixel in ten) and the float64 one after gradslam's
    cast to float32."""
    name, kind, size = key.split("/")
    h, w = map(int, size.split("x"))
    source, expected = CV2[f"{name}/source"], CV2[key]
    got = cv2_linear(torch.from_numpy(source).permute(2, 0, 1)[None], (h, w), fixed=kind == "u8")
    got = got[0].permute(1, 2, 0).numpy()
    if kind == "u8":
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(recipe_reference.opencv_resize_u8(source, h, w), expected)
    else:
        np.testing.assert_array_equal(got.astype(np.float32), expected)
        np.testing.assert_array_equal(recipe_reference.opencv_resize_f64(source, h, w).astype(np.float32), expected)


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
        ({"normalise": "imagenet"}, "normalise 'imagenet'"),
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


# ---- CLI and store --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "vlmap"], "unknown recipe 'vlmap'"),
        (["--recipe", "langseg-eval", "--crop", "100"], "crop 100: must be a positive multiple of 32"),
        (["--recipe", "langseg-eval", "--stride", "0"], "stride 0: must be in 1..crop"),
        (["--recipe", "vlmaps", "--stride", "500"], "stride 500: must be in 1..crop"),
        (["--recipe", "dff", "--scales", "1", "0"], "each must be a positive number"),
        (["--recipe", "dff", "--scales", "-1"], "each must be a positive number"),
        (["--recipe", "dff", "--devices", "cpu"], "workers run the single pass"),
        (["--recipe", "dff", "--pool", "2"], "--pool and --pca"),
        (["--recipe", "dff", "--output-size", "0x3"], "positive numbers"),
    ],
)
def test_invalid_recipe_options_exit_2_in_one_line(cli, args: list[str], message: str) -> None:  # noqa: ANN001
    result = cli("extract", "--images", "x.png", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """Three 64x96 PNG frames (lossless: the stored features follow from the pixels alone)."""
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(image_of((64, 96), seed=i)).save(folder / f"{i:02d}.png")
    return folder


def test_extract_recipe_runs_store_resume_and_compare(cli, frames: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "features"
    common = ["--weights", "random", "--variant", "tiny_vit", "--images", frames, "--out", out, "--format", "npy"]
    common += ["--device", "cpu", "--batch", "4", "--backend", "torch"]  # one backend folder for compare
    assert cli("extract", *common, "--sizes", "64x96").returncode == 0  # the single pass, for compare
    first = cli("extract", *common, "--recipe", "openscene")
    assert first.returncode == 0, first.stderr
    tree = out / "torch" / "tiny_vit" / "random"
    run = tree / "64x96-openscene-npy.run"
    settings = json.loads((run / "run.json").read_text())
    assert settings["recipe"]["name"] == "openscene" and settings["recipe"]["flip"] == "sum"
    assert settings["feature_shape"][1:] == [64, 96]
    stored = np.load(tree / "00" / "64x96-openscene.npy")
    assert stored.shape == (1, settings["feature_shape"][0], 64, 96) and stored.dtype == np.float16
    lseg = random_lseg("tiny_vit")
    expected = batched(lseg, "openscene", image_of((64, 96), seed=0), {})
    np.testing.assert_allclose(stored[0], expected.numpy(), rtol=0, atol=2e-3)  # fp16 storage

    again = cli("extract", *common, "--recipe", "vlmaps", "--resume")
    assert again.returncode == 2 and "is a run of recipe" in again.stderr, again.stderr
    changed = cli("extract", *common, "--recipe", "openscene", "--flip", "none", "--resume")
    assert changed.returncode == 2 and "settings differ" in changed.stderr and "recipe" in changed.stderr
    assert cli("extract", *common, "--recipe", "openscene", "--resume").returncode == 0

    report = tmp_path / "compare"
    compared = cli("compare", "--tree", out, "--by", "recipes", "--out", report)
    assert compared.returncode == 0, compared.stderr
    rows = json.loads((report / "compare_recipes.json").read_text())["comparisons"]
    assert {(r["reference"], r["candidate"]) for r in rows} == {("default", "openscene")} and len(rows) == 3


def test_an_input_size_makes_a_full_resolution_row_resize() -> None:
    """lang-seg's app resizes to 360x480 first: `--input-size` on a row that takes the full image."""
    recipe = get_recipe("langseg-eval", input_size=(360, 480))
    assert recipe.resize == "torchvision" and recipe.output_shape(512, (960, 1280)) == (512, 360, 480)
    assert get_recipe("langseg-eval").output_shape(512, (960, 1280)) == (512, 960, 1280)


def test_feature_extractor_takes_a_recipe_by_name(tmp_path: Path) -> None:
    """The API: `FeatureExtractor.open(..., recipe=NAME)` gives the recipe's output for paths and arrays,
    declares its shape, and a run of it reads back through `open_features`."""
    from PIL import Image

    from lseg_trt.extraction import FeatureExtractor, extract, open_features

    image = image_of((64, 96), seed=3)
    Image.fromarray(image).save(tmp_path / "a.png")
    with FeatureExtractor.open(weights="random", variant="tiny_vit", size=(64, 96), recipe="openscene",
                               device="cpu", batch_size=4) as fx:  # fmt: skip
        assert fx.output_shape() == (32, 64, 96)
        from_path = fx([tmp_path / "a.png"])
        assert from_path.shape == (1, 32, 64, 96) and from_path.dtype == torch.float16
        assert torch.equal(from_path, fx.frame(image))
        summary = extract(fx, tmp_path / "a.png", tmp_path / "out", progress=False)
    assert summary.ok and summary.done == 1
    store = open_features(summary.run_dir)
    np.testing.assert_array_equal(store["a"], from_path.numpy())
