"""The command line as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lseg_trt.cli import COMMANDS


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lseg_trt.cli", *args], capture_output=True, text=True, timeout=600)


def test_info_on_checkpoint_reports_keys(tiny_rn_ckpt: Path) -> None:
    result = run_cli("info", "--weights", str(tiny_rn_ckpt), "--json")
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["variant"] == "tiny_rn"
    assert details["checkpoint"]["image_encoder_tensors"] > 0
    assert any("CLIP image tower" in reason for reason in details["checkpoint"]["ignored"])


def test_hwinfo_markdown_and_json() -> None:
    result = run_cli("hwinfo")
    assert result.returncode == 0 and "| torch |" in result.stdout
    info = json.loads(run_cli("hwinfo", "--json").stdout)
    assert info["cpu_cores"] >= 1 and info["packages"]["torch"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "--weights", "/no/such.ckpt"], "not found"),
        (["info", "--weights", "random", "--variant", "vit_b99"], "unknown variant"),
        (["export", "--weights", "/no/such.ckpt"], "not found"),
        (["build", "--onnx", "/no/such.onnx"], "not found"),
        (["build", "--onnx", "x.onnx", "--min-shape", "1x3x512x512"], "exceeds"),
        (["build", "--onnx", "x.onnx", "--max-shape", "1x3x1000x1000"], "multiples of 32"),
    ],
)
def test_user_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_export_then_build(tmp_path: Path) -> None:
    onnx_dir, engine_dir = tmp_path / "onnx", tmp_path / "engines"
    result = run_cli("export", "--weights", "random", "--variant", "tiny_rn", "--out", str(onnx_dir))
    assert result.returncode == 0, result.stderr
    assert "| 256x384 |" in result.stdout and "FAIL" not in result.stdout
    onnx_file = onnx_dir / "lseg_tiny_rn_random_fp32.onnx"
    assert result.stdout.strip().endswith(str(onnx_file))
    shape = ["--min-shape", "1x3x64x64", "--opt-shape", "1x3x128x128", "--max-shape", "1x3x256x256"]
    result = run_cli("build", "--onnx", str(onnx_file), "--no-fp16", "--out", str(engine_dir), *shape)
    if "not installed" in result.stderr:
        pytest.skip("no TensorRT flavour installed")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).name == "lseg_tiny_rn_random_fp32__fp32_sparse_ws512MiB.engine"


def test_help_works_without_optional_packages(tmp_path: Path) -> None:
    """`--help` of every sub-command must not import onnxruntime, onnx or tensorrt."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "for name in ('onnxruntime', 'onnx', 'tensorrt', 'tensorrt_rtx_bindings', 'matplotlib'):\n"
        "    sys.modules[name] = None\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}
    for command in ["", *COMMANDS]:
        args = [command, "--help"] if command else ["--help"]
        result = subprocess.run(
            [sys.executable, "-m", "lseg_trt.cli", *args],
            capture_output=True, text=True, timeout=300, env={**os.environ, **env},
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stderr)
