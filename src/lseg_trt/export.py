"""PyTorch -> ONNX for the LSeg image encoders, checked with onnx and verified with ONNX Runtime.

I/O contract of every exported model (fp32 and fp16 alike):
  input  `image`    float32 (batch, 3, height, width), normalised with the checkpoint's mean/std
  output `features` float32 (batch, 512, height_half, width_half), unit norm per pixel
With `io_names="seed"` the tensors are called `input` and `output` instead: the names the seed's
engines and its C++ tester look up. The choice is recorded in the metadata (`io_names`).

The graph is the inference rewrite of the encoder (`lseg_trt.models.fused`: BatchNorms folded, the
decoder's 1x1 convolutions before their upsampling, the head merged, the ViT readout split), recorded as
`graph` in the metadata: it computes lang-seg's function with less work (ONNX Runtime on 2 CPU
cores at 480x480, best of 7: RN101 -12 %, ViT-L/16 -6 %; benchmarks/results/cpu-2026-11-25), and TensorRT does
not make these rewrites itself (it folds BatchNorms, as the exporter does; not the rest).
Verification still compares with lang-seg's own structure in PyTorch.

fp16 models are exported from the half-precision module itself: weights and compute are fp16, and the
module's own casts keep the input, the output and the per-pixel L2 normalisation in fp32 (a sum of 512
squares overflows fp16). No converter is involved, so the graph is exactly what PyTorch runs in fp16.

An export is written, verified and given its metadata in a hidden temporary folder, and moved onto
the final name only when verification passed: a failing or interrupted export never replaces (or
deletes) the previous good file, and never leaves an unverified file under the final name.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from lseg_trt._version import __version__
from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.files import export_dir_prefix, remove_stale_temps
from lseg_trt.images import preprocess, samples
from lseg_trt.metrics import FeatureMetrics, compare_features
from lseg_trt.models import LSeg
from lseg_trt.models.fused import GRAPH, fuse_for_inference
from lseg_trt.sizes import format_size
from lseg_trt.tolerances import TOLERANCES, Tolerance

log = logging.getLogger(__name__)

IO_NAMES = {"lseg-trt": ("image", "features"), "seed": ("input", "output")}
INPUT_NAME, OUTPUT_NAME = IO_NAMES["lseg-trt"]
PRECISIONS = ("fp32", "fp16")
LAYER_NORM_OPSET = 17  # first opset with LayerNormalization, which TensorRT >= 8.6 fuses and 8.5 cannot parse
DEFAULT_OPSET = LAYER_NORM_OPSET
MIN_OPSET = 14  # the oldest opset the encoders export with (tested); 17 adds LayerNormalization
VERIFY_SIZES = ((256, 256), (256, 384))  # small, one non-square: the check must stay cheap on a CPU
CPU_FP16_NOTE = (
    "fp16 ONNX checked on CPU: ORT computes it in fp32 with fp16-rounded weights; "
    "real fp16 arithmetic is checked on a GPU"
)


def _onnx():  # noqa: ANN202 - lazy optional import
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(
            "reading or writing ONNX models needs onnx: pip install 'lseg-trt[onnx]'"
        ) from None
    return onnx


def max_opset() -> int:
    """The newest opset the TorchScript exporter (the one we use) writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def check_opset(opset: int) -> None:
    high = max_opset()
    if not MIN_OPSET <= opset <= high:
        raise LsegTrtError(
            f"--opset {opset} is outside {MIN_OPSET}..{high}, the opsets torch {torch.__version__} exports "
            f"these networks with (default {DEFAULT_OPSET})"
        )


def onnx_name(lseg: LSeg, precision: str) -> str:
    """`lseg_<variant>_<weights-stem>_<precision>.onnx`: variant, weights and precision visible."""
    return f"lseg_{lseg.variant}_{lseg.weights_name}_{precision}.onnx"


@dataclass(frozen=True)
class VerifyResult:
    size: tuple[int, int]
    metrics: FeatureMetrics
    passed: bool


@dataclass(frozen=True)
class Verification:
    """ONNX Runtime (CPU) against torch fp32 on a sample photo, at each of a few sizes."""

    precision: str
    tolerance: Tolerance
    results: tuple[VerifyResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def note(self) -> str | None:
        """What a CPU check of an fp16 model does not prove."""
        return CPU_FP16_NOTE if self.precision == "fp16" else None

    def markdown(self) -> str:
        """The table `lseg-trt export` prints, with the CPU-fp16 note under it where it applies."""
        lines = ["| size | pixel cosine min | pixel cosine mean | max-abs | verdict |", "|---|---|---|---|---|"]
        for r in self.results:
            m, verdict = r.metrics, "ok" if r.passed else f"FAIL (needs {self.tolerance})"
            lines.append(
                f"| {format_size(r.size)} | {m.pixel_cosine_min:.6f} | {m.pixel_cosine_mean:.6f} "
                f"| {m.max_abs:.2e} | {verdict} |"
            )
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else []))

    def to_metadata(self) -> str:
        return json.dumps(
            {
                "passed": self.passed,
                "device": "cpu",
                "reference": "torch fp32",
                "metric": self.tolerance.metric,
                "floor": self.tolerance.floor,
                "sizes": [format_size(r.size) for r in self.results],
                "values": [getattr(r.metrics, self.tolerance.metric) for r in self.results],
            }
        )


class VerificationError(LsegTrtError):
    """The export does not match PyTorch; `.verification` holds the numbers, the old file is intact."""

    def __init__(self, message: str, verification: Verification) -> None:
        super().__init__(message)
        self.verification = verification


@dataclass(frozen=True)
class Exported:
    path: Path
    verification: Verification | None  # None when exported with verify=False


def metadata(lseg: LSeg, precision: str, io_names: str, verification: Verification | None) -> dict[str, str]:
    """Model properties stored in the ONNX file: enough to rebuild or re-export it, and to trust it."""
    input_name, output_name = IO_NAMES[io_names]
    return {
        "lseg_trt_version": __version__,
        "variant": lseg.variant,
        "weights": lseg.source,
        "checkpoint_sha256": lseg.weights_sha256,
        "precision": precision,
        "mean": json.dumps(list(lseg.mean)),
        "std": json.dumps(list(lseg.std)),
        "size_multiple": str(lseg.config.size_multiple),
        "io_names": io_names,
        "graph": GRAPH,
        "input": f"{input_name}: float32 (batch, 3, height, width), normalised with mean/std",
        "output": f"{output_name}: float32 (batch, {lseg.config.out_c}, height/2, width/2), unit norm per pixel",
        "verification": verification.to_metadata() if verification is not None else json.dumps({"passed": None}),
    }


def verification_status(meta: dict[str, str]) -> bool | None:
    """True: the metadata records a passed verification; None: exported with `verify=False` (or by
    another tool); False: it failed, or the record is damaged."""
    try:
        record = json.loads(meta.get("verification", '{"passed": null}'))
    except ValueError:
        return False
    passed = record.get("passed", False) if isinstance(record, dict) else False
    return passed if passed is None or isinstance(passed, bool) else False


def verified(meta: dict[str, str]) -> bool:
    """Whether the metadata records a passed verification (`onnx_from_lseg(verify=True)`)."""
    return verification_status(meta) is True


@dataclass(frozen=True)
class OnnxInfo:
    """What the builder and the caches need to know of an ONNX file, read in one pass."""

    metadata: dict[str, str]
    opset: int
    precision: str  # from the weights' own type (metadata that claims otherwise is refused)
    channels: int | None  # the output's feature dimension when the graph fixes it
    op_types: frozenset[str] = frozenset()  # standard-domain operators, asked of a TensorRT parser before parsing


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Read an ONNX file once (external weight files are not loaded; inline weights are parsed)."""
    onnx = _onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends for corrupt files
        raise LsegTrtError(f"cannot read ONNX model {path} (corrupt?): {e}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    # The weights say what the model computes in; metadata that claims otherwise was edited, and would
    # file fp32 features under an fp16 backend name (or the reverse).
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    precision = "fp16" if fp16 else "fp32"
    claimed = meta.get("precision")
    if claimed is not None and claimed != precision:
        raise LsegTrtError(f"{path}: its metadata says {str(claimed)[:20]!r}, but its weights are {precision}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)
    dims = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
    channels = dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None
    op_types = frozenset(n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx"))
    return OnnxInfo(meta, opset, precision, channels, op_types)


def onnx_from_lseg(
    lseg: LSeg,
    out_dir: str | Path,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    *,
    verify: bool = True,
    io_names: str = "lseg-trt",
) -> Exported:
    """Export the image encoder with dynamic batch, height and width to `out_dir/onnx_name(...)`.

    Raises VerificationError (the previous file of that name untouched) when verification fails.
    Models over 2 GB carry an external data file, moved into place before the model.
    """
    onnx = _onnx()
    if precision not in PRECISIONS:
        raise LsegTrtError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if io_names not in IO_NAMES:
        raise LsegTrtError(f"unknown tensor names {io_names!r}; use one of {', '.join(IO_NAMES)}")
    check_opset(opset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    input_name, output_name = IO_NAMES[io_names]
    encoder = fuse_for_inference(lseg.image_encoder).cpu()  # a copy: the caller's model stays where it is
    if precision == "fp16":
        encoder = encoder.half()
    size = lseg.config.size_multiple * 2
    example = torch.zeros(1, 3, size, size)
    name = onnx_name(lseg, precision)
    started = time.perf_counter()
    log.info("exporting %s (opset %d) ...", name, opset)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=export_dir_prefix()) as tmp:
        # not `name`, nor `.onnx`, until verified: a kill skips the clean-up, and a search for models (a
        # glob for `*.onnx`, the name itself) must not find what was never checked
        tmp_path = Path(tmp) / f"{name}.unverified"
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected
            torch.onnx.export(
                encoder,
                (example,),
                str(tmp_path),
                input_names=[input_name],
                output_names=[output_name],
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter keeps the dynamic H/W arithmetic symbolic
                dynamic_axes={
                    input_name: {0: "batch", 2: "height", 3: "width"},
                    output_name: {0: "batch", 2: "height_half", 3: "width_half"},
                },
            )
        del encoder
        verification = verify_onnx(tmp_path, lseg, precision) if verify else None
        if verification is not None and not verification.passed:
            raise VerificationError(
                f"{name} does not match PyTorch within tolerance ({verification.tolerance}); "
                f"nothing was written, a previous {name} is kept",
                verification,
            )
        model = onnx.load(str(tmp_path), load_external_data=False)
        onnx.helper.set_model_props(model, metadata(lseg, precision, io_names, verification))
        onnx.save(model, str(tmp_path))
        onnx.checker.check_model(str(tmp_path))
        for data in Path(tmp).iterdir():
            if data != tmp_path:
                shutil.move(str(data), out_dir / data.name)
        final = out_dir / name
        tmp_path.replace(final)
    log.info("exported %s in %.1f s", final, time.perf_counter() - started)
    return Exported(final, verification)


def verify_onnx(
    onnx_path: str | Path, lseg: LSeg, precision: str, sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES
) -> Verification:
    """Run the ONNX model in ONNX Runtime (CPU) on a sample photo and compare with torch fp32.

    On a CPU, ONNX Runtime computes an fp16 model in fp32 (with the fp16-rounded weights): this
    checks the graph and the weights, not fp16 arithmetic, and the result's `note` says so.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("verification needs onnxruntime: pip install 'lseg-trt[onnx]'") from None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    tolerance = TOLERANCES[precision]
    encoder = lseg.image_encoder.cpu()
    results = []
    for size in sizes:
        x = preprocess(samples()["chelsea"], size, lseg.mean, lseg.std)
        with torch.inference_mode():
            reference = encoder(x)
        (candidate,) = session.run(None, {input_name: x.numpy()})
        metrics = compare_features(candidate, reference)
        finite = metrics.nonfinite == 0 and bool(torch.isfinite(reference).all())
        passed = tolerance.passes(metrics) and finite
        results.append(VerifyResult(size, metrics, passed))
        log.info(
            "verify %s %s: pixel cosine min %.6f mean %.6f, max-abs %.2e -> %s",
            Path(onnx_path).name, format_size(size), metrics.pixel_cosine_min, metrics.pixel_cosine_mean,
            metrics.max_abs, "ok" if passed else ("FAIL (NaN/Inf)" if not finite else f"FAIL (needs {tolerance})"),
        )  # fmt: skip
    verification = Verification(precision, tolerance, tuple(results))
    if verification.note:
        log.info("%s", verification.note)
    return verification
