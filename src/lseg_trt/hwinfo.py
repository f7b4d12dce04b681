"""The machine a figure came from (recorded next to every benchmark and fidelity result), and the GPU
that compiled code (engines, AOTInductor packages) is built for."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

import torch

# (label, module to import, attribute holding the version)
_PACKAGES = (
    ("torch", "torch", "__version__"),
    ("torchvision", "torchvision", "__version__"),
    ("timm", "timm", "__version__"),
    ("open_clip", "open_clip", "__version__"),
    ("numpy", "numpy", "__version__"),
    ("onnx", "onnx", "__version__"),
    ("onnxruntime", "onnxruntime", "__version__"),
    ("tensorrt", "tensorrt", "__version__"),
    ("tensorrt_rtx", "tensorrt_rtx_bindings", "__version__"),
)


def gpu_target(device: str | torch.device | None = None) -> dict[str, str | None]:
    """The GPU a compiled artefact is built for, as its sidecar records it: name and compute capability,
    both None on a CPU (TensorRT-RTX builds portable engines without a GPU). `device` None: the first
    GPU this process sees, if any."""
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", 0)
    if device is None or torch.device(device).type != "cuda":
        return {"gpu": None, "compute_capability": None}
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            )  # fmt: skip
            return out.stdout.strip().splitlines()[0]
        except (subprocess.SubprocessError, OSError, IndexError):
            return None
    return None


def _package_version(module: str, attribute: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), attribute))
    except Exception:  # noqa: BLE001 - a broken optional package is reported as absent
        return None


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        })  # fmt: skip
    return gpus


def torch_bytecode() -> str:
    """Whether this Python finds torch's compiled bytecode. Without it (`PYTHONDONTWRITEBYTECODE=1` and a
    torch installed without `.pyc` files, as in some container images) every process compiles the
    sources of torch, Dynamo and Inductor before it runs them: 8 s more to first features on the H100
    host, so a start-up figure means little without this. This module has imported torch, so a file
    still missing is one Python may not (`sys.dont_write_bytecode`) or could not (a read-only folder)
    write: either way the next process compiles again."""
    if os.path.exists(importlib.util.cache_from_source(torch.__file__)):  # honours PYTHONPYCACHEPREFIX
        return "found"
    why = "may not be written" if sys.dont_write_bytecode else "could not be written"
    return f"missing ({why}): compiled in every process"


def collect() -> dict[str, Any]:
    """Everything that explains a timing: CPU, RAM, GPU, driver, CUDA and library versions."""
    packages = {label: _package_version(module, attr) for label, module, attr in _PACKAGES}
    providers = None
    if packages["onnxruntime"]:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch_bytecode": torch_bytecode(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "gpus": _gpus(),
        "nvidia_driver": _nvidia_driver(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": packages,
        "onnxruntime_providers": providers,
    }


def to_markdown(info: dict[str, Any]) -> str:
    """A two-column table to paste under benchmark figures."""
    gpus = "; ".join(f"{g['name']} (cc {g['compute_capability']}, {g['memory_gib']} GiB)" for g in info["gpus"])
    rows = [
        ("host", info["host"]),
        ("OS", info["os"]),
        ("Python", info["python"]),
        ("torch bytecode", info.get("torch_bytecode", "-")),  # not in records made before it was
        ("CPU", f"{info['cpu']} ({info['cpu_cores']} logical cores)"),
        ("RAM", f"{info['ram_gib']} GiB"),
        ("GPU", gpus or "none"),
        ("NVIDIA driver", info["nvidia_driver"] or "-"),
        ("CUDA (torch)", info["cuda_runtime"] or "-"),
        ("cuDNN", info["cudnn"] or "-"),
    ]
    rows += [(name, version or "not installed") for name, version in info["packages"].items()]
    if info["onnxruntime_providers"]:
        rows.append(("ORT providers", ", ".join(info["onnxruntime_providers"])))
    return "\n".join(["| item | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
