"""Shared fixtures: tiny networks (same code, toy sizes) and checkpoints written in lang-seg's layout."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lseg_trt.models import LSeg, random_lseg
from lseg_trt.models.synthetic import save_lightning_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user cache (`lseg_trt.files.user_cache_dir`) in a temporary folder, for this process and its
    children: tests neither read a developer's `~/.cache` nor leave anything in it."""
    folder = tmp_path_factory.mktemp("user-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        yield folder


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


@pytest.fixture(scope="session")
def png_header_claiming() -> Callable[[int, int], bytes]:
    """`(width, height) -> bytes`: a 100-byte PNG whose header declares a huge 8-bit RGB image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def png(width: int, height: int) -> bytes:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + data + chunk(b"IEND", b"")

    return png


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `lseg-trt ARGS` in this process (as the console script does) and capture what it prints."""
    from lseg_trt.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


# fingerprints of files (device, inode, times): two runs that write the same bytes still differ in these
_FINGERPRINTS = ("stat", "stored")


def run_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder by relative path, its manifests without the stat fingerprints."""
    files = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            records = [
                {k: v for k, v in json.loads(line).items() if k not in _FINGERPRINTS} for line in data.splitlines()
            ]
            data = json.dumps(records, sort_keys=True).encode()
        files[path.relative_to(run_dir).as_posix()] = data
    return files
