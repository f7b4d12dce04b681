"""Real-size networks against the committed layout of real lang-seg checkpoints.

`fixtures/lang_seg_checkpoint_layout.json` lists every key, shape and dtype of a real checkpoint, made
from lang-seg's module definitions without our model code. Writing our random weights in lang-seg's
layout must reproduce it exactly, and loading that file must give back the same network: then a real
file loads too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lseg_trt import load_lseg
from lseg_trt.models import random_lseg
from lseg_trt.models.synthetic import lang_seg_state_dict, save_lightning_checkpoint

LAYOUT = json.loads((Path(__file__).parent / "fixtures" / "lang_seg_checkpoint_layout.json").read_text())


@pytest.mark.real_size
@pytest.mark.parametrize("variant", ["vit_l16", "rn101_zs"])
def test_real_size_layout_and_load(variant: str, tmp_path: Path) -> None:
    lseg = random_lseg(variant)
    sd = lang_seg_state_dict(lseg)
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()}
    expected = LAYOUT[variant]
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}

    path = save_lightning_checkpoint(lseg, tmp_path / f"{variant}.ckpt")
    del sd
    loaded = load_lseg(path)
    assert loaded.variant == variant
    report = loaded.report
    assert sum(report.ignored.values()) + report.image_tensors + report.text_tensors == len(expected)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        a, b = lseg.image_encoder(x), loaded.image_encoder(x)
    assert a.shape == (1, 512, 32, 48)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    text = loaded.encode_text(["dog", "grass"])
    assert text.shape == (2, 512)
