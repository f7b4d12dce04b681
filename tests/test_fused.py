"""The inference rewrite computes the encoder's function: exactly in float64, within fp32's tolerance in fp32."""

from __future__ import annotations

import copy

import pytest
import torch

from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.metrics import compare_features
from lseg_trt.models import LSeg, LSegImageEncoder, random_lseg
from lseg_trt.models.fused import fuse_for_inference
from lseg_trt.tolerances import TOLERANCES


def _with_random_batchnorms(encoder: LSegImageEncoder) -> LSegImageEncoder:
    """A copy whose BatchNorms have non-trivial affine parameters and statistics, so folding is exercised."""
    encoder = copy.deepcopy(encoder).eval()
    generator = torch.Generator().manual_seed(7)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = torch.randn(n, generator=generator) * 0.2
            module.running_mean = torch.randn(n, generator=generator) * 0.2
            module.running_var = torch.rand(n, generator=generator) + 0.5
    return encoder


def _image(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("variant", ["tiny_vit", "tiny_rn"])
def test_rewrite_is_exact_in_float64(variant: str) -> None:
    encoder = _with_random_batchnorms(random_lseg(variant).image_encoder).double()
    fused = fuse_for_inference(encoder)
    x = _image(2, 64, 96).double()  # a non-square grid catches a transposed reshape
    with torch.no_grad():
        expected, got = encoder(x), fused(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-10


def test_rewrite_in_fp32_meets_the_fp32_tolerance(tiny: LSeg) -> None:
    encoder = _with_random_batchnorms(tiny.image_encoder)
    x = _image(1, 64, 96)
    with torch.no_grad():
        metrics = compare_features(fuse_for_inference(encoder)(x), encoder(x))
    assert TOLERANCES["fp32"].passes(metrics), metrics


def test_rewrite_leaves_its_source_alone(tiny_vit: LSeg) -> None:
    encoder = tiny_vit.image_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fused = fuse_for_inference(encoder)
    source_storage = {t.data_ptr() for t in encoder.state_dict().values()}
    assert not source_storage & {t.data_ptr() for t in fused.state_dict().values()}
    assert not any(p.requires_grad for p in fused.parameters())
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_rewrite_refuses_sizes_the_encoder_refuses(tiny_vit: LSeg) -> None:
    from lseg_trt.errors import LsegTrtError

    with pytest.raises(LsegTrtError):
        fuse_for_inference(tiny_vit.image_encoder)(_image(1, 60, 64))


@pytest.mark.parametrize("backend", ["torch-fused-fp32", "torch-fused-bf16"])
def test_fused_backend_runs_through_the_registry(tiny: LSeg, backend: str, tmp_path) -> None:
    spec = parse_backend(backend)
    x = _image(1, 64, 64)
    with torch.no_grad():
        reference = tiny.image_encoder.eval()(x)
    with make_runner(spec, tiny, "cpu", cache_dir=tmp_path) as runner:
        features = runner.infer_host(x)
    assert TOLERANCES[spec.precision].passes(compare_features(features, reference))


@pytest.mark.slow
def test_compiled_fused_backend_matches_the_reference(tiny_vit: LSeg, tmp_path) -> None:
    x = _image(1, 64, 96)
    with torch.no_grad():
        reference = tiny_vit.image_encoder.eval()(x)
    with make_runner(parse_backend("torch-compile-fused-fp32"), tiny_vit, "cpu", cache_dir=tmp_path) as runner:
        features = runner.infer_host(x)
    assert TOLERANCES["fp32"].passes(compare_features(features, reference))


@pytest.mark.real_size
@pytest.mark.parametrize("variant", ["vit_l16", "rn101_zs"])
def test_real_size_rewrite_meets_the_fp32_tolerance(variant: str) -> None:
    encoder = random_lseg(variant).image_encoder.eval()
    x = _image(1, 64, 96)
    with torch.no_grad():
        metrics = compare_features(fuse_for_inference(encoder)(x), encoder(x))
    assert TOLERANCES["fp32"].passes(metrics), metrics


@pytest.mark.parametrize("variant", ["tiny_vit", "tiny_rn"])
def test_rewrite_holds_no_weight_it_never_runs(variant: str) -> None:
    """The unused readouts, the deepest block's skip unit and the merged head are gone, not carried along
    to the GPU or into compiled packages."""
    encoder = random_lseg(variant).image_encoder
    fused = fuse_for_inference(encoder)
    assert fused.scratch.blocks[3].skip_unit is None
    assert not any("act_postprocess" in name for name, _ in fused.named_parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    features = encoder.config.features
    merged_away = features * features + features  # refinenet1.out_conv, now inside the head
    assert count(fused) <= count(encoder) - count(encoder.scratch.refinenet4.resConfUnit1) - merged_away
