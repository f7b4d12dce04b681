"""Which checkpoint tensor goes where: variant detection, strict loading, and the documented ignores.

Every tensor of a lang-seg checkpoint is either loaded into the image encoder or kept for the text
tower (built on first use, see `clip_text.LazyTextTower`), or ignored for one of the reasons in
IGNORED. Anything missing, unexpected, of the wrong shape or of the wrong type (integer, complex,
sparse, quantized or data-less where our module holds floats) is a user error that names the keys:
lang-seg's own loaders used `strict=False` and silently dropped mismatches. NaN or Inf in the
weights is not refused (the user may still want to run), but it is counted in the LoadReport and
logged, so it cannot pass unseen.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import cache

import torch

from lseg_trt.errors import LsegTrtError
from lseg_trt.models.clip_text import text_tensor_shapes
from lseg_trt.models.config import VARIANTS, LSegConfig
from lseg_trt.models.encoder import LSegImageEncoder

TEXT_PREFIX = "clip_pretrained."
IGNORED: dict[str, str] = {
    "clip_pretrained.visual.": "CLIP image tower: LSeg encodes images with its own backbone",
    "clip_pretrained.logit_scale": "CLIP's learned temperature: LSeg uses a fixed 1/0.07",
    "pretrained.model.norm.": "ViT final LayerNorm: lang-seg taps block outputs before it",
    "pretrained.model.head.": "ViT ImageNet classifier: never run",
}
SIGNATURE_KEYS = {"vit": "pretrained.model.pos_embed", "resnet": "pretrained.layer1.0.weight"}

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What happened to each checkpoint tensor; `lseg-trt info` prints it."""

    image_tensors: int = 0
    text_tensors: int = 0
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> tensor count
    non_finite: list[str] = field(default_factory=list)  # keys of loaded tensors holding NaN or Inf


@dataclass
class KeyMismatch:
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for what, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.wrong_shape),
        ):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts)


def ignore_reason(key: str) -> str | None:
    return next((reason for prefix, reason in IGNORED.items() if key.startswith(prefix)), None)


@cache
def expected_tensors(variant: str) -> dict[str, torch.Tensor]:
    """Key -> meta tensor (shape and dtype) of every tensor our modules take from a checkpoint of `variant`.

    Built on the meta device, so instant; the dtypes tell floats from BatchNorm's int64
    `num_batches_tracked`. The text tower's tensors come from its layout table, all float32: building
    the tower needs open_clip, which loading a network for feature extraction must not import.
    """
    cfg = VARIANTS[variant]
    with torch.device("meta"):
        image = LSegImageEncoder(cfg)
    expected = dict(image.state_dict())
    expected.update(
        {TEXT_PREFIX + k: torch.empty(shape, device="meta") for k, shape in text_tensor_shapes(cfg.text).items()}
    )
    return expected


def key_mismatch(state_dict: dict[str, torch.Tensor], variant: str) -> KeyMismatch:
    expected = expected_tensors(variant)
    return KeyMismatch(
        missing=sorted(k for k in expected if k not in state_dict),
        unexpected=sorted(k for k in state_dict if k not in expected and ignore_reason(k) is None),
        wrong_shape=sorted(
            f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
            for k, v in state_dict.items()
            if k in expected and v.shape != expected[k].shape
        ),
    )


def _wrong_type(tensor: torch.Tensor, expected: torch.Tensor) -> str | None:
    """Why `tensor` cannot be loaded where our module holds `expected`, or None when it can."""
    if tensor.layout != torch.strided:
        return f"{tensor.layout} (sparse)"
    if tensor.is_meta:
        return "on the meta device (no data)"
    if tensor.is_quantized:
        return f"quantized {tensor.dtype}"
    if expected.is_floating_point():
        return None if tensor.is_floating_point() else f"{tensor.dtype}, expected floating point"
    return None if tensor.dtype == expected.dtype else f"{tensor.dtype}, expected {expected.dtype}"


def check_types(state_dict: dict[str, torch.Tensor], variant: str, limit: int = 5) -> None:
    """Raise a user error naming the tensors whose layout, device or dtype our modules cannot take."""
    expected = expected_tensors(variant)
    wrong = [
        f"{key} {why}"
        for key, tensor in state_dict.items()
        if key in expected and (why := _wrong_type(tensor, expected[key])) is not None
    ]
    if wrong:
        more = f" (+{len(wrong) - limit} more)" if len(wrong) > limit else ""
        raise LsegTrtError(f"{len(wrong)} checkpoint tensors of the wrong type: {'; '.join(wrong[:limit])}{more}")


def non_finite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Keys of the floating-point tensors that hold a NaN or an Inf."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def detect_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the variant from signature keys and shapes (lang-seg stores no hyper-parameters)."""
    family = next((f for f, key in SIGNATURE_KEYS.items() if key in state_dict), None)
    if family is None:
        sample = ", ".join(list(state_dict)[:3])
        raise LsegTrtError(
            f"not an LSeg checkpoint: it has neither {' nor '.join(SIGNATURE_KEYS.values())} (first keys: {sample})"
        )
    candidates = [name for name, cfg in VARIANTS.items() if cfg.backbone == family]
    for name in candidates:
        if not key_mismatch(state_dict, name):
            return name
    closest = candidates[0]
    raise LsegTrtError(
        f"{family} LSeg checkpoint that matches no known variant; against {closest}: "
        + key_mismatch(state_dict, closest).describe()
    )


def check_variant(state_dict: dict[str, torch.Tensor], variant: str) -> None:
    """Raise a user error when a forced variant does not fit the checkpoint."""
    mismatch = key_mismatch(state_dict, variant)
    if mismatch:
        try:
            detected = f" (it looks like {detect_variant(state_dict)})"
        except LsegTrtError:
            detected = ""
        raise LsegTrtError(f"checkpoint does not fit variant {variant}{detected}: {mismatch.describe()}")


def load_weights(
    state_dict: dict[str, torch.Tensor], cfg: LSegConfig
) -> tuple[LSegImageEncoder, dict[str, torch.Tensor], LoadReport]:
    """The image encoder built directly from the checkpoint tensors (no random init) in float32, and the
    text tower's tensors (keys without `clip_pretrained.`), all checked against the variant.

    The text tower itself is built from them on first use (`clip_text.LazyTextTower`); the checks here
    are what make its strict load then succeed. Its tensors are kept as stored until then (fp16 in real
    files, where OpenAI's `clip.load` on CUDA converted them; views of the memory-mapped file, so a tower
    that extraction never builds costs no copy) and cast to float32 when it is built. Tensors holding
    NaN or Inf are loaded, listed in the report and logged.
    """
    check_variant(state_dict, cfg.name)
    check_types(state_dict, cfg.name)
    with torch.device("meta"):
        image = LSegImageEncoder(cfg)
    image_sd, text_sd, ignored = {}, {}, Counter()
    for key, tensor in state_dict.items():
        reason = ignore_reason(key)
        if reason is not None:
            ignored[reason] += 1
            continue
        if key.startswith(TEXT_PREFIX):  # all floating point (checked); cast when the tower is built
            text_sd[key[len(TEXT_PREFIX) :]] = tensor
        else:
            image_sd[key] = tensor.float() if tensor.is_floating_point() else tensor
    image.load_state_dict(image_sd, strict=True, assign=True)
    non_finite = non_finite_keys(image_sd) + [TEXT_PREFIX + k for k in non_finite_keys(text_sd)]
    if non_finite:
        log.warning(
            "%d weight tensors hold NaN or Inf, so outputs will too: %s%s",
            len(non_finite),
            ", ".join(non_finite[:5]),
            " ..." if len(non_finite) > 5 else "",
        )
    report = LoadReport(len(image_sd), len(text_sd), dict(ignored), non_finite)
    return image, text_sd, report
