"""Loading checkpoints: the real Lightning layout, safety against code in pickles, and bad input."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from lseg_trt import LsegTrtError, load_lseg
from lseg_trt.models import LSeg
from lseg_trt.models.checkpoint import read_checkpoint
from lseg_trt.models.synthetic import LIGHTNING_CALLBACK, lang_seg_state_dict


def _features(lseg: LSeg, size: tuple[int, int] = (64, 96)) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.inference_mode():
        return lseg.image_encoder(torch.randn(1, 3, *size))


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_rn"])
def test_lightning_checkpoint_round_trip(name: str, request: pytest.FixtureRequest) -> None:
    original: LSeg = request.getfixturevalue(name)
    path: Path = request.getfixturevalue(f"{name}_ckpt")
    loaded = load_lseg(path)
    assert loaded.variant == name
    assert loaded.semantic and loaded.report is not None
    torch.testing.assert_close(_features(loaded), _features(original), atol=0, rtol=0)
    assert loaded.report.ignored  # the CLIP image tower at least


def test_file_really_has_lightning_layout(tiny_vit_ckpt: Path) -> None:
    """The fixture file must be what torch's default safe loader refuses, like a real lang-seg file."""
    with pytest.raises(pickle.UnpicklingError, match="ModelCheckpoint"):
        torch.load(tiny_vit_ckpt, weights_only=True)
    assert LIGHTNING_CALLBACK in torch.serialization.get_unsafe_globals_in_checkpoint(str(tiny_vit_ckpt))
    sd = read_checkpoint(tiny_vit_ckpt)
    assert sd["clip_pretrained.text_projection"].dtype == torch.float16
    assert sd["clip_pretrained.token_embedding.weight"].dtype == torch.float32


def test_loaded_weights_are_float32(tiny_vit_ckpt: Path) -> None:
    loaded = load_lseg(tiny_vit_ckpt)
    dtypes = {p.dtype for m in (loaded.image_encoder, loaded.text_encoder) for p in m.parameters()}
    assert dtypes == {torch.float32}


def test_plain_state_dict_with_and_without_prefix(tiny_rn: LSeg, tmp_path: Path) -> None:
    sd = lang_seg_state_dict(tiny_rn)
    torch.save(sd, tmp_path / "prefixed.pt")
    torch.save({k.removeprefix("net."): v for k, v in sd.items()}, tmp_path / "bare.pth")
    for file in ("prefixed.pt", "bare.pth"):
        torch.testing.assert_close(_features(load_lseg(tmp_path / file)), _features(tiny_rn), atol=0, rtol=0)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_does_not_run(tiny_rn: LSeg, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    sd = lang_seg_state_dict(tiny_rn)
    torch.save({"state_dict": sd, "callbacks": _Exploit(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(LsegTrtError, match="refusing.*system"):
        load_lseg(tmp_path / "evil.ckpt")
    assert not marker.exists()
    # the legacy (non-zip) format has no global listing: torch's restricted unpickler must refuse it
    legacy = tmp_path / "evil_legacy.ckpt"
    torch.save({"state_dict": {}, "x": _Exploit(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(LsegTrtError, match="safely"):
        load_lseg(legacy)
    assert not marker.exists()


def test_missing_directory_truncated_corrupt(tiny_rn_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(LsegTrtError, match="not found"):
        load_lseg(tmp_path / "nope.ckpt")
    with pytest.raises(LsegTrtError, match="directory"):
        load_lseg(tmp_path)
    data = tiny_rn_ckpt.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LsegTrtError, match="cannot read"):
        load_lseg(tmp_path / "truncated.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(LsegTrtError, match="cannot (read|load)"):
        load_lseg(tmp_path / "garbage.ckpt")


def test_not_lseg_and_wrong_variant(tiny_vit_ckpt: Path, tmp_path: Path) -> None:
    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(LsegTrtError, match="not an LSeg checkpoint"):
        load_lseg(tmp_path / "resnet18.pth")
    with pytest.raises(LsegTrtError, match="does not fit variant tiny_rn.*looks like tiny_vit"):
        load_lseg(tiny_vit_ckpt, variant="tiny_rn")
    with pytest.raises(LsegTrtError, match="unknown variant"):
        load_lseg(tiny_vit_ckpt, variant="vit_b32")


def test_missing_and_misshapen_keys_are_named(tiny_vit: LSeg, tmp_path: Path) -> None:
    sd = lang_seg_state_dict(tiny_vit)
    del sd["net.scratch.head1.bias"]
    sd["net.scratch.layer1_rn.weight"] = torch.zeros(1, 1, 3, 3)
    sd["net.scratch.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(LsegTrtError) as info:
        load_lseg(tmp_path / "broken.pt", variant="tiny_vit")
    message = str(info.value)
    for key in ("scratch.head1.bias", "scratch.layer1_rn.weight", "scratch.extra.weight"):
        assert key in message


def test_special_files_are_refused_before_reading(tiny_rn_ckpt: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.ckpt")  # reading it would block forever
    (tmp_path / "empty.ckpt").write_bytes(b"")
    data = tiny_rn_ckpt.read_bytes()
    (tmp_path / "cut_zip.ckpt").write_bytes(data[:-200])  # zip directory gone
    (tmp_path / "random.ckpt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    cases = {
        Path("/dev/zero"): "not a regular file",  # a char device: reading it once took 24 GB
        tmp_path / "fifo.ckpt": "not a regular file",
        tmp_path / "empty.ckpt": "empty",
        tmp_path / "cut_zip.ckpt": "cannot (read|load)",
        tmp_path / "random.ckpt": "cannot (read|load)",
    }
    for path, message in cases.items():
        with pytest.raises(LsegTrtError, match=message) as info:
            load_lseg(path)
        assert "\n" not in str(info.value)


def _swap(lseg: LSeg, key: str, tensor: torch.Tensor, path: Path) -> Path:
    sd = lang_seg_state_dict(lseg)
    assert key in sd
    sd[key] = tensor
    torch.save({"state_dict": sd}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("int64", "torch.int64, expected floating point"),
        ("complex", "torch.complex64, expected floating point"),
        ("bool", "torch.bool, expected floating point"),
        ("sparse", "sparse"),
        ("meta", "meta device"),
        ("float_counter", "torch.float32, expected torch.int64"),
    ],
)
def test_tensors_of_the_wrong_type_are_named(kind: str, message: str, tiny_rn: LSeg, tmp_path: Path) -> None:
    key = "net.scratch.head1.weight"
    like = lang_seg_state_dict(tiny_rn)[key]
    tensor = {
        "int64": lambda: like.long(),
        "complex": lambda: like.to(torch.complex64),
        "bool": lambda: like.bool(),
        "sparse": lambda: like.to_sparse(),
        "meta": lambda: like.to("meta"),
        "float_counter": lambda: None,
    }[kind]()
    if tensor is None:  # BatchNorm's counter is int64 for real: a float one is just as wrong
        key = next(k for k in lang_seg_state_dict(tiny_rn) if k.endswith("num_batches_tracked"))
        tensor = torch.tensor(3.0)
    path = _swap(tiny_rn, key, tensor, tmp_path / f"{kind}.ckpt")
    with pytest.raises(LsegTrtError, match="wrong type") as info:
        load_lseg(path)
    assert key.removeprefix("net.") in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_quantized_and_sparse_tensors_are_refused_without_torch_warnings(tiny_rn: LSeg, tmp_path: Path) -> None:
    """torch warns while unpickling these (deprecated quantized tensors, sparse invariant checks): the
    user should see our one-line refusal, not torch's notes first."""
    key = "net.scratch.head1.bias"
    like = lang_seg_state_dict(tiny_rn)[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # creating a quantized tensor warns too: not what is tested
        quantized = torch.quantize_per_tensor(like, 0.1, 0, torch.quint8)
    cases = {"quantized torch.quint8": quantized, "sparse": like.to_sparse()}
    for message, tensor in cases.items():
        path = _swap(tiny_rn, key, tensor, tmp_path / "odd.ckpt")
        with warnings.catch_warnings(record=True) as caught, pytest.raises(LsegTrtError, match=message):
            warnings.simplefilter("always")
            load_lseg(path)
        assert [str(w.message) for w in caught] == []


def test_int64_batchnorm_counters_still_load(tiny_rn: LSeg, tiny_rn_ckpt: Path) -> None:
    counters = [k for k, v in read_checkpoint(tiny_rn_ckpt).items() if v.dtype == torch.int64]
    assert counters and all(k.endswith("num_batches_tracked") for k in counters)
    assert load_lseg(tiny_rn_ckpt).report.non_finite == []


def test_non_finite_weights_load_but_are_reported(
    tiny_vit: LSeg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sd = lang_seg_state_dict(tiny_vit)
    sd["net.scratch.head1.weight"][0, 0] = float("nan")
    sd["net.clip_pretrained.text_projection"][0, 0] = float("inf")  # fp16 in the file
    sd["net.clip_pretrained.visual.proj"][0, 0] = float("nan")  # ignored tensor: never used, not counted
    torch.save(sd, tmp_path / "nan.pt")
    with caplog.at_level("WARNING", logger="lseg_trt.models.loading"):
        loaded = load_lseg(tmp_path / "nan.pt")
    assert loaded.report.non_finite == ["scratch.head1.weight", "clip_pretrained.text_projection"]
    assert "2 weight tensors hold NaN or Inf" in caplog.text and "scratch.head1.weight" in caplog.text
