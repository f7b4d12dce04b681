"""The CLIP text tower against open_clip's own OpenAI-format CLIP, and the tokenizer contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import build_model_from_openai_state_dict

from lseg_trt import LsegTrtError, load_lseg
from lseg_trt.models import VARIANTS, LSeg, LSegImageEncoder, random_lseg
from lseg_trt.models.clip_text import build_text_tower, encode_tokens, text_tensor_shapes, tokenize
from lseg_trt.models.synthetic import lang_seg_state_dict, save_lightning_checkpoint


def test_tokens_match_open_clip() -> None:
    labels = ["dog", "grass", "a photo of a cat", "others"]
    torch.testing.assert_close(tokenize(labels), open_clip.tokenize(labels))


@pytest.mark.parametrize("labels", [[], ["dog", ""], ["word " * 80]])
def test_bad_labels_are_user_errors(labels: list[str]) -> None:
    with pytest.raises(LsegTrtError):
        tokenize(labels)


def test_trimmed_encoding_equals_full_context(tiny_rn: LSeg) -> None:
    ids = tokenize(["dog", "a photo of a big cat on a sofa", "x"])
    with torch.inference_mode():
        full = tiny_rn.text_encoder(ids)
        trimmed = encode_tokens(tiny_rn.text_encoder, ids)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)


def test_text_features_match_open_clip_full_clip(tiny_vit: LSeg, tmp_path: Path) -> None:
    """Rebuild the whole CLIP (both towers) from the checkpoint tensors with open_clip's OpenAI builder
    and compare encode_text: an independent construction of the same network."""
    sd = lang_seg_state_dict(tiny_vit)
    torch.save({"state_dict": sd}, tmp_path / "plain.pt")
    loaded = load_lseg(tmp_path / "plain.pt")
    prefix = "net.clip_pretrained."
    clip_sd = {k[len(prefix) :]: v.float() for k, v in sd.items() if k.startswith(prefix)}
    clip = build_model_from_openai_state_dict(clip_sd, quick_gelu=True, cast_dtype=torch.float32).float().eval()
    labels = ["dog", "grass", "other"]
    with torch.inference_mode():
        expected = clip.encode_text(open_clip.tokenize(labels))
    expected = expected / expected.norm(dim=-1, keepdim=True)
    ours = loaded.encode_text(labels)
    assert ours.shape == (3, tiny_vit.config.out_c)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_text_layout_table_is_open_clips_state_dict(variant: str) -> None:
    """Checkpoints are validated against `text_tensor_shapes` (no open_clip import); the tower that is
    built later loads strictly, so the table must be exactly open_clip's module, and all floating point."""
    with torch.device("meta"):
        tower = build_text_tower(VARIANTS[variant].text)
    state = tower.state_dict()
    assert text_tensor_shapes(VARIANTS[variant].text) == {k: tuple(v.shape) for k, v in state.items()}
    assert all(v.is_floating_point() for v in state.values())


def test_lazy_random_text_tower_is_the_eager_one() -> None:
    """`random_lseg` builds the text tower on first use from the RNG state the image encoder left: its
    weights must be the ones both towers get in one stream, whatever the caller did in between (moved the
    RNG, changed the default dtype, entered inference mode, as `encode_text` does)."""
    seed, cfg = 3, VARIANTS["tiny_vit"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LSegImageEncoder(cfg)
        eager = build_text_tower(cfg.text).state_dict()
    lazy = random_lseg("tiny_vit", seed=seed)
    assert not lazy.text_tower.built
    torch.randn(1000)  # the caller's RNG moves on before the tower is built
    before = torch.get_rng_state()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.inference_mode():
            tower = lazy.text_encoder
    finally:
        torch.set_default_dtype(torch.float32)
    built = tower.state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # building left the caller's RNG alone
    assert list(built) == list(eager)
    for key, tensor in eager.items():
        assert torch.equal(built[key], tensor), key
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    assert not any(t.is_inference() for t in [*tower.parameters(), *tower.buffers()])


def test_text_tower_first_built_in_encode_text_is_an_ordinary_module(tiny_vit_ckpt: Path) -> None:
    """`encode_text` runs in inference mode; a tower first built there must not be made of inference
    tensors (they refuse autograd and in-place updates for good), and it is float32 though the
    checkpoint stores CLIP in fp16."""
    lseg = load_lseg(tiny_vit_ckpt)
    lseg.encode_text(["cat"])
    tower = lseg.text_encoder
    tensors = [*tower.parameters(), *tower.buffers()]
    assert not any(t.is_inference() for t in tensors)
    assert {p.dtype for p in tower.parameters()} == {torch.float32}
    tower.ln_final.weight.mul_(1.0)  # an inference tensor would raise here


def test_text_tower_that_cannot_be_built_is_a_user_error(tiny_vit: LSeg, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip missing (or of another layout) shows at the first text use, as one error that says what
    failed, not as an ImportError from deep inside."""
    lseg = random_lseg("tiny_vit")
    monkeypatch.setitem(sys.modules, "open_clip.transformer", None)  # `from open_clip.transformer` fails
    with pytest.raises(LsegTrtError, match="cannot build CLIP's text tower"):
        lseg.encode_text(["cat"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "1 missing: clip_pretrained.transformer.resblocks.1.mlp.c_fc.bias"),
        ("unexpected", "1 unexpected: clip_pretrained.transformer.resblocks.2.ln_1.weight"),
        ("shape", "clip_pretrained.positional_embedding (76, 64) != (77, 64)"),
        ("type", "clip_pretrained.token_embedding.weight torch.int64, expected floating point"),
    ],
)
def test_text_keys_are_checked_at_load(change: str, message: str, tiny_vit: LSeg, tmp_path: Path) -> None:
    """The text tower is built later, but its tensors are checked when the checkpoint is read."""
    sd = lang_seg_state_dict(tiny_vit)
    prefix = "net.clip_pretrained."
    if change == "missing":
        del sd[prefix + "transformer.resblocks.1.mlp.c_fc.bias"]
    elif change == "unexpected":
        sd[prefix + "transformer.resblocks.2.ln_1.weight"] = torch.ones(64)
    elif change == "shape":
        sd[prefix + "positional_embedding"] = sd[prefix + "positional_embedding"][:76]
    else:
        sd[prefix + "token_embedding.weight"] = sd[prefix + "token_embedding.weight"].long()
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(LsegTrtError) as info:
        load_lseg(tmp_path / "broken.pt", variant="tiny_vit")
    assert message in str(info.value)


def test_text_tower_follows_to_before_and_after_it_is_built(tiny_vit_ckpt: Path) -> None:
    """A tower built after `LSeg.to` is built on the image encoder's device; one built before moves with it
    ("meta" stands in for a GPU on a CPU-only machine)."""
    for build_first in (False, True):
        lseg = load_lseg(tiny_vit_ckpt)
        assert not lseg.text_tower.built
        first = lseg.text_encoder if build_first else None
        lseg.to("meta")
        tower = lseg.text_encoder
        assert first is None or tower is first  # built once
        assert lseg.device.type == "meta"
        assert {t.device.type for t in [*tower.parameters(), *tower.buffers()]} == {"meta"}
        assert not tower.training and not any(p.requires_grad for p in tower.parameters())


def test_loading_for_extraction_does_not_import_open_clip(tiny_vit: LSeg, tmp_path: Path) -> None:
    """open_clip imports transformers where it is installed (seconds of every start): importing the package,
    loading a network (random or from a checkpoint) and running its image encoder must not import it; the
    first `encode_text` does. A fresh interpreter, since this one has imported open_clip long ago."""
    checkpoint = save_lightning_checkpoint(tiny_vit, tmp_path / "tiny_vit.ckpt")
    script = (
        "import sys\n"
        "import torch\n"
        "import lseg_trt.backends, lseg_trt.cli, lseg_trt.extraction, lseg_trt.models\n"
        "from lseg_trt.models import load_lseg\n"
        "assert 'open_clip' not in sys.modules, 'open_clip imported by importing lseg_trt'\n"
        "random = load_lseg('random', variant='tiny_vit')\n"
        "loaded = load_lseg(sys.argv[1])  # variant detected from the keys\n"
        "assert loaded.variant == 'tiny_vit' and loaded.report.text_tensors == 29, loaded.report\n"
        "for lseg in (random, loaded):\n"
        "    with torch.inference_mode():\n"
        "        assert lseg.image_encoder(torch.zeros(1, 3, 64, 96)).shape == (1, 32, 32, 48)\n"
        "assert 'open_clip' not in sys.modules, 'open_clip imported by loading or running a network'\n"
        "text = loaded.encode_text(['cat'])\n"
        "assert 'open_clip' in sys.modules\n"
        "assert text.shape == (1, 32) and torch.allclose(text.norm(dim=-1), torch.ones(1)), text\n"
        "print('LAZY OK')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(checkpoint)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "LAZY OK" in result.stdout
