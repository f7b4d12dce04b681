"""Loading checkpoints: the real Lightning layout, safety against code in pickles, and bad input."""

from __future__ import annotations

import os
import pickle
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
