"""PyTorch -> ONNX for the LSeg image encoders, checked with onnx and verified with ONNX Runtime.

I/O contract of every exported model (fp32 and fp16 alike):
  input  `image`    float32 (batch, 3, height, width), normalised with the checkpoint's mean/std
  output `features` float32 (batch, 512, height_half, width_half), unit norm per pixel

fp16 models are exported from the half-precision module itself: weights and compute are fp16, and the
module's own casts keep the input, the output and the per-pixel L2 normalisation in fp32 (a sum of 512
squares overflows fp16). No converter is involved, so the graph is exactly what PyTorch runs in fp16.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from lseg_trt import __version__
from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.images import preprocess, samples
from lseg_trt.metrics import FeatureMetrics, compare_features
from lseg_trt.models import LSeg
from lseg_trt.sizes import format_size

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "features"
PRECISIONS = ("fp32", "fp16")
DEFAULT_OPSET = 17  # first opset with LayerNormalization, which TensorRT fuses
VERIFY_SIZES = ((256, 256), (256, 384))  # small, one non-square: the check must stay cheap on a CPU
# tolerances against torch fp32 (issue #4): fp32 per-pixel cosine min, fp16 per-pixel cosine mean
TOLERANCES = {"fp32": ("pixel_cosine_min", 0.99999), "fp16": ("pixel_cosine_mean", 0.999)}


def _onnx():  # noqa: ANN202 - lazy optional import
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "reading or writing ONNX models needs onnx: pip install 'lseg-trt[onnx]'"
        ) from None
    return onnx


def onnx_name(lseg: LSeg, precision: str) -> str:
    """`lseg_<variant>_<weights-stem>_<precision>.onnx`: variant, weights and precision visible."""
    return f"lseg_{lseg.variant}_{lseg.weights_name}_{precision}.onnx"


def metadata(lseg: LSeg, precision: str) -> dict[str, str]:
    """Model properties stored in the ONNX file: enough to rebuild or re-export it."""
    return {
        "lseg_trt_version": __version__,
        "variant": lseg.variant,
        "weights": lseg.source,
        "checkpoint_sha256": lseg.sha256 or "random",
        "precision": precision,
        "mean": json.dumps(list(lseg.mean)),
        "std": json.dumps(list(lseg.std)),
        "size_multiple": str(lseg.config.size_multiple),
        "input": f"{INPUT_NAME}: float32 (batch, 3, height, width), normalised with mean/std",
        "output": f"{OUTPUT_NAME}: float32 (batch, {lseg.config.out_c}, height/2, width/2), unit norm per pixel",
    }


@dataclass(frozen=True)
class OnnxInfo:
    """What the builder and the caches need to know of an ONNX file, read in one pass."""

    metadata: dict[str, str]
    opset: int
    precision: str  # from our metadata; for foreign models, fp16 if any initializer is fp16


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Read an ONNX file once (external weight files are not loaded; inline weights are parsed)."""
    onnx = _onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends for corrupt files
        raise LsegTrtError(f"cannot read ONNX model {path} (corrupt?): {e}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    precision = meta.get("precision")
    if precision not in PRECISIONS:
        fp16 = onnx.TensorProto.FLOAT16
        precision = "fp16" if any(t.data_type == fp16 for t in model.graph.initializer) else "fp32"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)
    return OnnxInfo(meta, opset, precision)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file."""
    return inspect_onnx(path).metadata


def onnx_from_lseg(lseg: LSeg, out_dir: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET) -> Path:
    """Export the image encoder with dynamic batch, height and width; returns the .onnx path.

    Written in a temporary folder and moved into place when complete (models over 2 GB carry an
    external data file, moved first), so an interrupted export leaves nothing a later run could use.
    """
    onnx = _onnx()
    if precision not in PRECISIONS:
        raise LsegTrtError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = copy.deepcopy(lseg.image_encoder).cpu().eval()
    if precision == "fp16":
        encoder = encoder.half()
    size = lseg.config.size_multiple * 2
    example = torch.zeros(1, 3, size, size)
    name = onnx_name(lseg, precision)
    started = time.perf_counter()
    log.info("exporting %s (opset %d) ...", name, opset)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_path = Path(tmp) / name
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected
            torch.onnx.export(
                encoder,
                (example,),
                str(tmp_path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter keeps the dynamic H/W arithmetic symbolic
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch", 2: "height_half", 3: "width_half"},
                },
            )
        external = [p for p in Path(tmp).iterdir() if p != tmp_path]
        model = onnx.load(str(tmp_path), load_external_data=False)
        onnx.helper.set_model_props(model, metadata(lseg, precision))
        onnx.save(model, str(tmp_path))
        onnx.checker.check_model(str(tmp_path))
        for data in external:
            shutil.move(str(data), out_dir / data.name)
        final = out_dir / name
        tmp_path.replace(final)
    log.info("exported %s in %.1f s", final, time.perf_counter() - started)
    return final


def cached_onnx(lseg: LSeg, out_dir: str | Path, precision: str = "fp32") -> Path:
    """The exported model for these weights, reused when its metadata names the same checkpoint."""
    path = Path(out_dir) / onnx_name(lseg, precision)
    if path.is_file():
        meta = read_metadata(path)
        if meta.get("variant") == lseg.variant and meta.get("checkpoint_sha256") == (lseg.sha256 or "random"):
            log.info("reusing %s", path)
            return path
        log.info("re-exporting %s: it was made from other weights", path.name)
    return onnx_from_lseg(lseg, out_dir, precision)


@dataclass(frozen=True)
class VerifyResult:
    size: tuple[int, int]
    metrics: FeatureMetrics
    passed: bool


def verify_onnx(
    onnx_path: str | Path, lseg: LSeg, precision: str, sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES
) -> list[VerifyResult]:
    """Run the ONNX model in ONNX Runtime (CPU) on a sample photo and compare with torch fp32."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("verification needs onnxruntime: pip install 'lseg-trt[onnx]'") from None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    metric, threshold = TOLERANCES[precision]
    encoder = lseg.image_encoder.cpu()
    results = []
    for size in sizes:
        x = preprocess(samples()["chelsea"], size, lseg.mean, lseg.std)
        with torch.inference_mode():
            reference = encoder(x)
        (candidate,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        metrics = compare_features(candidate, reference)
        passed = getattr(metrics, metric) >= threshold and metrics.nonfinite == 0
        results.append(VerifyResult(size, metrics, passed))
        log.info(
            "verify %s %s: pixel cosine min %.6f mean %.6f, max-abs %.2e -> %s",
            Path(onnx_path).name, format_size(size), metrics.pixel_cosine_min, metrics.pixel_cosine_mean,
            metrics.max_abs, "ok" if passed else f"FAIL ({metric} < {threshold})",
        )  # fmt: skip
    return results
