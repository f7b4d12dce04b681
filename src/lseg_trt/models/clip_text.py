"""CLIP ViT-B/32 text tower and tokenizer, rebuilt from the tensors every lang-seg checkpoint carries.

lang-seg calls OpenAI `clip.load("ViT-B/32")` and stores the whole CLIP model under
`net.clip_pretrained.*`; only its text half is used (`encode_text`). open_clip's `TextTransformer`
has the same parameter names as OpenAI's CLIP text side (`token_embedding`, `positional_embedding`,
`transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`),
so the tensors load without renaming; QuickGELU and argmax (end-of-text) pooling match OpenAI's model.
The BPE vocabulary ships inside open_clip: nothing is downloaded.

open_clip is imported only where a tower or the tokenizer is built: its `__init__` imports
`transformers` (and through it scikit-learn) whenever they are installed, 0.6 s of every process
start on a 2-core CPU machine and 2.7 s on the H200 host, and dense feature extraction never runs the text
tower. `text_tensor_shapes` lets checkpoints be validated without it, and `LazyTextTower` builds the
tower the first time it is used.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.models.config import TextTowerConfig

if TYPE_CHECKING:
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transformer import TextTransformer

_BUILD_LOCK = threading.Lock()  # two threads' first `encode_text` build one tower; global, so LSeg still deep-copies


def text_tensor_shapes(cfg: TextTowerConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor of the text tower's state dict (OpenAI's layout, all floating point),
    in `build_text_tower(cfg).state_dict()` order; the causal mask is a non-persistent buffer, in no
    state dict. `tests/test_text.py` holds this table to open_clip's module for every variant."""
    w = cfg.width
    shapes: dict[str, tuple[int, ...]] = {
        "positional_embedding": (cfg.context_length, w),
        "text_projection": (w, cfg.embed_dim),
        "token_embedding.weight": (cfg.vocab_size, w),
    }
    block = {
        "ln_1.weight": (w,),
        "ln_1.bias": (w,),
        "attn.in_proj_weight": (3 * w, w),
        "attn.in_proj_bias": (3 * w,),
        "attn.out_proj.weight": (w, w),
        "attn.out_proj.bias": (w,),
        "ln_2.weight": (w,),
        "ln_2.bias": (w,),
        "mlp.c_fc.weight": (4 * w, w),
        "mlp.c_fc.bias": (4 * w,),
        "mlp.c_proj.weight": (w, 4 * w),
        "mlp.c_proj.bias": (w,),
    }
    for i in range(cfg.layers):
        shapes.update({f"transformer.resblocks.{i}.{k}": shape for k, shape in block.items()})
    shapes.update({"ln_final.weight": (w,), "ln_final.bias": (w,)})
    return shapes


def _open_clip(submodule: str) -> ModuleType:
    """`open_clip.<submodule>`, imported on first use (module docstring); a missing or broken open_clip is
    the user's environment, so one error that says what to install, for the tower and the tokenizer alike."""
    try:
        return importlib.import_module(f"open_clip.{submodule}")
    except ImportError as e:
        raise MissingDependencyError(
            f"cannot build CLIP's text tower or tokenizer without open_clip (pip install open_clip_torch): {e}"
        ) from e


def build_text_tower(cfg: TextTowerConfig) -> TextTransformer:
    """An OpenAI-layout CLIP text transformer of the given size (randomly initialised)."""
    transformer = _open_clip("transformer")
    return transformer.TextTransformer(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        heads=cfg.heads,
        layers=cfg.layers,
        output_dim=cfg.embed_dim,
        act_layer=transformer.QuickGELU,
        norm_layer=transformer.LayerNorm,
        pool_type="argmax",
    )


def _loaded_text_tower(cfg: TextTowerConfig, state_dict: dict[str, torch.Tensor]) -> TextTransformer:
    """The tower holding `state_dict`'s tensors cast to float32 (no random init)."""
    with torch.device("meta"):
        tower = build_text_tower(cfg)
    tower.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    # The causal mask is a non-persistent buffer (in no checkpoint): compute it for real.
    tower.attn_mask = tower.build_causal_mask()
    return tower


def _seeded_text_tower(cfg: TextTowerConfig, rng_state: torch.Tensor) -> TextTransformer:
    """The tower open_clip's random init makes when the CPU generator is in `rng_state` (the global RNG
    is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng_state)
        return build_text_tower(cfg)


@contextmanager
def _as_at_load() -> Iterator[None]:
    """What building at load time could take for granted, restored for a build on first use: no
    inference mode (the first use, `encode_text`, runs in one, and the tower's tensors must stay ordinary
    ones, usable with autograd and in-place updates), the CPU and float32 as defaults (the seeded init
    draws from the CPU generator; a caller may have changed either default since)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.inference_mode(False), torch.device("cpu"):
            yield
    finally:
        torch.set_default_dtype(dtype)


class LazyTextTower:
    """CLIP's text tower, built (importing open_clip) the first time `get` is called.

    Until then it is only its recipe: the checkpoint's validated tensors in their stored dtype, cast to
    float32 when built (`from_state_dict`), or the CPU RNG state its seeded random init starts from
    (`from_rng_state`), and the device `to` last named. The built tower is float32, in eval mode with
    autograd off.
    """

    def __init__(self, build: Callable[[], TextTransformer]) -> None:
        self._build: Callable[[], TextTransformer] | None = build
        self._module: TextTransformer | None = None
        self._device = torch.device("cpu")

    @classmethod
    def from_state_dict(cls, cfg: TextTowerConfig, state_dict: dict[str, torch.Tensor]) -> LazyTextTower:
        return cls(partial(_loaded_text_tower, cfg, state_dict))

    @classmethod
    def from_rng_state(cls, cfg: TextTowerConfig, rng_state: torch.Tensor) -> LazyTextTower:
        return cls(partial(_seeded_text_tower, cfg, rng_state))

    @property
    def built(self) -> bool:
        return self._module is not None

    def get(self) -> TextTransformer:
        """The tower; built now, on the device `to` last named, if it was not built yet."""
        with _BUILD_LOCK:
            if self._module is None:
                assert self._build is not None
                with _as_at_load():
                    try:
                        module = self._build()
                    except RuntimeError as e:  # an open_clip whose module has another layout
                        raise LsegTrtError(f"cannot build CLIP's text tower: {e}") from e
                    self._module = module.to(self._device).eval().requires_grad_(False)
                self._build = None  # the module holds the weights now: the recipe's tensors may go
            return self._module

    def to(self, device: str | torch.device) -> None:
        """Where the tower lives: moved now if built, else built there (under the build's lock, so a
        concurrent first build cannot land on the old device)."""
        with _BUILD_LOCK:
            self._device = torch.device(device)
            if self._module is not None:
                self._module.to(self._device)


@lru_cache(maxsize=4)
def tokenizer(context_length: int = 77) -> SimpleTokenizer:
    """open_clip's BPE tokenizer, cached: building it parses the 49k-merge vocabulary."""
    return _open_clip("tokenizer").SimpleTokenizer(context_length=context_length)


def tokenize(labels: list[str], context_length: int = 77) -> torch.Tensor:
    """Token ids (N, context_length) with SOT/EOT, like OpenAI `clip.tokenize`.

    Raw labels, no prompt template, as lang-seg does. Empty and over-long labels are user errors:
    OpenAI's tokenizer refuses over-long text too, where open_clip would silently truncate.
    """
    if not labels:
        raise LsegTrtError("no labels given")
    stripped = [label.strip() for label in labels]
    if any(not label for label in stripped):
        raise LsegTrtError(f"empty label in {labels!r}")
    tok = tokenizer(context_length)
    for label in stripped:
        if len(tok.encode(label)) > context_length - 2:
            raise LsegTrtError(f"label too long for CLIP's {context_length}-token context: {label[:40]!r}...")
    return tok(stripped)


def encode_tokens(tower: TextTransformer, ids: torch.Tensor) -> torch.Tensor:
    """`tower(ids)` computed on the shortest prefix that holds every end-of-text token.

    The text transformer is causal and pools at the end-of-text position, so the zero padding after it
    never changes the result: cutting 77 positions to the longest label (a few tokens for class
    names) gives the same features ~10x faster, which makes encoding the whole 49k-token vocabulary
    practical on a CPU.
    """
    length = int((ids != 0).sum(dim=1).max())
    ids = ids[:, :length]
    x = tower.token_embedding(ids) + tower.positional_embedding[:length]
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
    return pooled @ tower.text_projection
