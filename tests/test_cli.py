"""The command line as a user runs it: exit codes, one-line errors, nothing written where it should not be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lseg_trt.cli import commands


def test_info_on_checkpoint_reports_keys(cli, tiny_rn_ckpt: Path) -> None:  # noqa: ANN001 - conftest fixture
    result = cli("info", "--weights", tiny_rn_ckpt, "--json")
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["variant"] == "tiny_rn"
    assert details["checkpoint"]["image_encoder_tensors"] > 0
    assert any("CLIP image tower" in reason for reason in details["checkpoint"]["ignored"])


def test_hwinfo_markdown_and_json(cli) -> None:  # noqa: ANN001
    result = cli("hwinfo")
    assert result.returncode == 0 and "| torch |" in result.stdout
    info = json.loads(cli("hwinfo", "--json").stdout)
    assert info["cpu_cores"] >= 1 and info["packages"]["torch"]


def test_hwinfo_tells_whether_torch_bytecode_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python looks for bytecode in an empty folder (PYTHONPYCACHEPREFIX): torch's is missing, and hwinfo
    must say whether every process compiles it (it explains seconds of every start-up figure); once
    written there, it is found."""
    import importlib.util
    import py_compile

    import torch

    from lseg_trt import hwinfo

    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert hwinfo.torch_bytecode() == "missing (may not be written): compiled in every process"
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # torch is imported: missing means unwritable
    assert hwinfo.torch_bytecode() == "missing (could not be written): compiled in every process"
    py_compile.compile(torch.__file__, cfile=importlib.util.cache_from_source(torch.__file__), doraise=True)
    assert str(tmp_path) in importlib.util.cache_from_source(torch.__file__)
    assert hwinfo.torch_bytecode() == "found"


def _no_traceback_one_line(result, message: str) -> None:  # noqa: ANN001
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "--weights", "/no/such.ckpt"], "not found"),
        (["info", "--weights", "random", "--variant", "vit_b99"], "unknown variant"),
        (["export", "--weights", "/no/such.ckpt"], "not found"),
        (["build", "--onnx", "/no/such.onnx"], "not found"),
        (["build", "--onnx", "x.onnx", "--min-shape", "1x3x512x512"], "exceeds"),
        (["build", "--onnx", "x.onnx", "--max-shape", "1x3x1000x1000"], "multiples of 32"),
        (["bench", "--batch", "0"], "at least 1"),
        (["bench", "--batch", "-1"], "at least 1"),
        (["bench", "--iterations", "-1"], "at least 1"),
        (["bench", "--warmup", "x"], "not an integer"),
        (["bench", "--backends", ""], "no backend"),
        (["bench", "--backends", " , "], "no backend"),
        (["bench", "--variants", ","], "names no variant"),
        (["bench", "--device", "tpu"], "unknown device"),
        (["bench", "--device", "cuda:99"], "cuda"),
        (["extract", "--images", "x.png", "--batch", "0"], "at least 1"),
        (["extract", "--images", "x.png", "--weights", "random", "--onnx", "m.onnx"], "not allowed with"),
        (["segment", "--image", "x.png", "--labels", "dog\ncat, grass"], "line breaks"),
        (["wordfree", "--image", "x.png", "--legend", "0"], "at least 1"),
        (["bench", "--no-such-option"], "unrecognized arguments"),
        (["bench", "--batch", "99999999999999999999"], "per batch"),
        (["extract", "--images", "x.png", "--batch", "5000"], "per batch"),
        (["bench", "--out", ""], "--out is empty"),
        (["bench", "--cache", ""], "--cache"),
        (["bench", "--device", "cpu:5"], "one CPU device"),
        (["extract", "--images", "x.png", "--shard", ""], "expected K/N"),
        (["segment", "--image", "x.png", "--out", ""], "--out is empty"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_user_errors_exit_2_without_traceback(cli, args: list[str], message: str) -> None:  # noqa: ANN001
    _no_traceback_one_line(cli(*args), message)


def test_cuda_device_without_gpu(cli) -> None:  # noqa: ANN001
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU message cannot appear")
    _no_traceback_one_line(cli("bench", "--device", "cuda"), "no CUDA GPU")


def test_unwritable_out_is_refused_before_measuring(cli, tmp_path: Path) -> None:  # noqa: ANN001
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    for command in (["bench", "--variants", "tiny_rn"], ["extract", "--images", "x.png"]):
        _no_traceback_one_line(cli(*command, "--cache", a_file), "not a folder")
        _no_traceback_one_line(cli(*command, "--cache", a_file / "sub"), "not a folder")
    _no_traceback_one_line(cli("bench", "--variants", "tiny_rn", "--out", a_file), "not a folder")
    _no_traceback_one_line(cli("bench", "--variants", "tiny_rn", "--out", a_file / "sub"), "cannot write")
    assert a_file.read_text() == "keep me"
    folder = tmp_path / "folder.png"
    folder.mkdir()
    _no_traceback_one_line(cli("segment", "--variant", "tiny_vit", "--image", "x.png", "--out", folder), "is a folder")


def test_export_then_build(cli, tmp_path: Path) -> None:  # noqa: ANN001
    onnx_dir, engine_dir = tmp_path / "onnx", tmp_path / "engines"
    result = cli("export", "--weights", "random", "--variant", "tiny_rn", "--out", onnx_dir)
    assert result.returncode == 0, result.stderr
    assert "| 256x384 |" in result.stdout and "FAIL" not in result.stdout
    onnx_file = onnx_dir / "lseg_tiny_rn_random_fp32.onnx"
    assert result.stdout.strip().endswith(str(onnx_file))
    shape = ["--min-shape", "1x3x64x64", "--opt-shape", "1x3x128x128", "--max-shape", "1x3x256x256"]
    result = cli("build", "--onnx", onnx_file, "--no-fp16", "--out", engine_dir, *shape)
    if "not installed" in result.stderr:
        pytest.skip("no TensorRT flavour installed")
    assert result.returncode == 0, result.stderr
    name = Path(result.stdout.strip().splitlines()[-1]).name
    assert name.startswith("lseg_tiny_rn_random_fp32__fp32_sparse_") and name.endswith(".engine")


def test_help_works_without_optional_packages(tmp_path: Path) -> None:
    """`--help` of every sub-command must not import onnxruntime, onnx, tensorrt, matplotlib, ray or gradio (one
    subprocess: the blocked imports must not leak into this test process)."""
    script = (
        "import sys\n"
        "for name in ('onnxruntime', 'onnx', 'tensorrt', 'tensorrt_rtx_bindings', 'matplotlib', 'ray', 'gradio'):\n"
        "    sys.modules[name] = None\n"
        "from lseg_trt.cli import commands, main\n"
        "for command in ['', *commands()]:\n"
        "    try:\n"
        "        main([command, '--help'] if command else ['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (command, e.code)\n"
        "    else:\n"
        "        raise AssertionError(command)\n"
        "print('ALL HELP OK')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "ALL HELP OK" in result.stdout and len(commands()) >= 10


def test_console_script_entry_point(tmp_path: Path) -> None:
    """One real subprocess through `python -m lseg_trt.cli`, as a user's shell runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "lseg_trt.cli", "bench", "--batch", "0"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and "at least 1" in result.stderr and "Traceback" not in result.stderr
