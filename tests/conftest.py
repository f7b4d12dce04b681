"""Shared fixtures: tiny networks (same code, toy sizes) and checkpoints written in lang-seg's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lseg_trt.models import LSeg, random_lseg
from lseg_trt.models.synthetic import save_lightning_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_vit() -> LSeg:
    return random_lseg("tiny_vit")


@pytest.fixture(scope="session")
def tiny_rn() -> LSeg:
    return random_lseg("tiny_rn")


@pytest.fixture(scope="session", params=["tiny_vit", "tiny_rn"])
def tiny(request: pytest.FixtureRequest) -> LSeg:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def tiny_vit_ckpt(tiny_vit: LSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lightning_checkpoint(tiny_vit, tmp_path_factory.mktemp("ckpt") / "tiny_vit.ckpt")


@pytest.fixture(scope="session")
def tiny_rn_ckpt(tiny_rn: LSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lightning_checkpoint(tiny_rn, tmp_path_factory.mktemp("ckpt") / "tiny_rn.ckpt")
