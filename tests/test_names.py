"""Names from untrusted input never become a path outside the output folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lseg_trt import LsegTrtError
from lseg_trt.names import MAX_COMPONENT, component_from_stem, inside, regular_file, safe_component

HOSTILE = [
    "",
    ".",
    "..",
    "...",
    "../../../../tmp/x",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "\x00",
    "a\x00b",
    ".hidden",
    "-rf",
    "new\nline",
    "tab\there",
    "with space",
    "ünïcode",
    "x" * (MAX_COMPONENT + 1),
]


@pytest.mark.parametrize("name", ["clip_vitl16_384", "tiny_rn", "demo_e200", "result-epoch=199", "fp16+x", "a.b"])
def test_safe_names_pass_unchanged(name: str) -> None:
    assert safe_component(name, "variant") == name
    assert component_from_stem(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(LsegTrtError, match="unsafe variant") as info:
        safe_component(name, "variant")
    assert "\n" not in str(info.value)


def test_non_string_metadata_is_refused() -> None:
    with pytest.raises(LsegTrtError, match="unsafe weights"):
        safe_component(3, "weights")  # type: ignore[arg-type]


@pytest.mark.parametrize("stem", HOSTILE)
def test_hostile_stems_map_to_safe_components(stem: str, tmp_path: Path) -> None:
    component = component_from_stem(stem)
    assert safe_component(component, "component") == component
    assert component_from_stem(stem) == component  # deterministic
    assert inside(tmp_path, component).parent == tmp_path


def test_stems_never_collide() -> None:
    stems = HOSTILE + ["a b", "a_b", "a?b", "..", "__", "_.", "x" * 300, "x" * 301, "A", "a"]
    stems += [component_from_stem("a b")]  # a file named like another stem's mapped form
    components = [component_from_stem(s) for s in stems]
    assert len(set(components)) == len(set(stems))
    assert component_from_stem("with space").startswith("with_space__")  # still readable


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, "torch", "a.npy") == root / "torch" / "a.npy"
    for parts in [("..",), ("../../x",), ("/etc/passwd",), ("a", "..", "..", "b"), (".",), ("a\x00",)]:
        with pytest.raises(LsegTrtError, match="outside|NUL"):
            inside(root, *parts)
    os.symlink(tmp_path, root / "link")
    with pytest.raises(LsegTrtError, match="outside"):
        inside(root, "link", "x")


def test_regular_file_refuses_special_files(tmp_path: Path) -> None:
    (tmp_path / "ok.bin").write_bytes(b"x")
    assert regular_file(tmp_path / "ok.bin", "image") == tmp_path / "ok.bin"
    (tmp_path / "empty.bin").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    cases = {
        tmp_path / "missing": "not found",
        tmp_path: "directory",
        tmp_path / "fifo": "not a regular file",
        Path("/dev/zero"): "not a regular file",
        tmp_path / "empty.bin": "empty",
    }
    for path, message in cases.items():
        with pytest.raises(LsegTrtError, match=message):
            regular_file(path, "image")
