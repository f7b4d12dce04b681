"""The demo page (`lseg-trt demo`): pick a photo, type labels, see the segmentation in a browser.

lang-seg's own app (`lseg_app.py`, Streamlit) is how most people first meet LSeg; this is the same on our
runners. It is served with Gradio, the field's convention for model demos: upload, webcam and request
queue come with it, and no front-end code of ours has to be kept. Gradio is an optional extra
(`lseg-trt[demo]`), imported only to serve the page (`gradio_module`).

The model work is `segment.py`'s plain functions, the ones `lseg-trt segment` runs, so the page and the
command give the same label map for the same picture and input size (a browser test compares them). The
image features, the one expensive step, are computed once per picture and input size and kept in a small
LRU that every browser shares; changing the labels re-runs only the text tower and the argmax.

Everything a browser sends is untrusted: a file is decoded by `images.load_rgb_array` with a pixel limit
read from its header, labels are parsed by `segment.parse_labels` with limits on their number and length,
and every name shown on the page is HTML-escaped. A user error becomes a message on the page; anything
else is a bug, whose traceback goes to the server log while the page says so in one line.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from lseg_trt.errors import LsegTrtError, MissingDependencyError
from lseg_trt.figures import overlay
from lseg_trt.images import IMAGE_SUFFIXES, default_size, load_rgb_array, preprocess, samples
from lseg_trt.metrics import count_nonfinite
from lseg_trt.segment import (
    Segmentation,
    palette,
    parse_labels,
    segment_text,
    segment_wordfree,
    vocabulary,
    vocabulary_embeddings,
)
from lseg_trt.sizes import format_size

if TYPE_CHECKING:
    import gradio

    from lseg_trt.backends import Runner
    from lseg_trt.models import LSeg

log = logging.getLogger(__name__)

MAX_PIXELS = 50_000_000  # an upload whose header promises more is refused before decoding (a 45 MP camera passes)
PAGE_SIDE = 1024  # pictures are shrunk to this longer side on arrival: the page shows them at this size
NETWORK_SIDE = 640  # default network input: the picture's longer side scaled to at most this, rounded to 32
MAX_LABELS = 100  # one colour and legend row each; ADE20K's 150 classes are past what a legend can show
MAX_LABEL_TEXT = 20_000  # characters in the label box: room for 100 long labels, not for a pasted file
FEATURE_CACHE = 4  # pictures whose features are kept (ViT-L at 480x640: 160 MB each)
WORDFREE_LEGEND = 20  # legend rows of the word-free view
MAX_UPLOAD = "50mb"
QUEUE = 16  # requests waiting beyond this are refused by the queue, with a message
SESSIONS = 100  # browsers whose current picture (3 MB at most) is kept; Gradio also drops it when a tab closes
SESSION_SECONDS = 3600  # and an hour after the picture was last set
DEFAULT_LABELS = "cat, cup, person, other"


def checked_features(runner: Runner, x: torch.Tensor, source: str) -> torch.Tensor:
    """Host features of one input, refused when not finite: NaN weights must not pass for a segmentation
    (`segment`, `wordfree` and the page all draw from these)."""
    features = runner.infer_host(x)
    bad = count_nonfinite(features)
    if bad:
        raise LsegTrtError(f"the features hold {bad} NaN/Inf values (non-finite weights in {source}?); nothing drawn")
    return features


def checked_labels(text: str) -> list[str]:
    """The label box's text as labels (`parse_labels`), within the page's limits on count and length."""
    if len(text) > MAX_LABEL_TEXT:
        raise LsegTrtError(f"the labels run to {len(text)} characters; at most {MAX_LABEL_TEXT} here")
    labels = parse_labels(text)
    if len(labels) > MAX_LABELS:
        raise LsegTrtError(f"{len(labels)} labels; at most {MAX_LABELS} on this page (one colour and legend row each)")
    return labels


@dataclass(frozen=True, eq=False)  # compared by `key`, never by array equality
class Picture:
    """A decoded photo at page size; `key` hashes its pixels, so browsers showing one photo share its features."""

    rgb: np.ndarray  # (H, W, 3) uint8
    name: str
    key: str

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.rgb)


def picture_from(source: str | Path | np.ndarray, name: str) -> Picture:
    """Decode (a file's header is checked against `MAX_PIXELS` first) and shrink to `PAGE_SIDE`, with PIL's
    bilinear filter, which antialiases, as the network input's resize does."""
    rgb = load_rgb_array(source, max_pixels=MAX_PIXELS)
    longest = max(rgb.shape[:2])
    if longest > PAGE_SIDE:
        height, width = (max(1, round(n * PAGE_SIDE / longest)) for n in rgb.shape[:2])
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
    key = hashlib.sha256(f"{rgb.shape}".encode() + rgb.tobytes()).hexdigest()
    return Picture(rgb, name, key)


@dataclass
class View:
    """What the page shows for one picture: overlay, legend rows, and the steps this request ran."""

    overlay: np.ndarray  # (H, W, 3) uint8
    segmentation: Segmentation
    legend: list[tuple[str, tuple[int, int, int], float]]  # name, colour, share of pixels
    steps: list[tuple[str, float | None]]  # step, seconds (None: taken from the cache)
    title: str


def legend_rows(seg: Segmentation, top: int | None = None) -> list[tuple[str, tuple[int, int, int], float]]:
    """(name, colour, share of pixels), largest share first, names that cover no pixel too (with 0: "is
    the mug found?" is answered by its row); ties keep the typed order."""
    colours = palette(max(len(seg.names), 1))
    counts = np.bincount(seg.label_map.ravel(), minlength=len(seg.names))
    order = sorted(range(len(seg.names)), key=lambda i: -counts[i])[:top]
    return [(seg.names[i], tuple(int(c) for c in colours[i]), counts[i] / seg.label_map.size) for i in order]


class Demo:
    """One network and one activated runner, shared by every browser the server answers.

    Model work holds one lock: the runner and the text tower serve one request at a time, and Gradio's
    queue orders the rest.
    """

    def __init__(self, lseg: LSeg, runner: Runner, backend: str, size: tuple[int, int] | None, cache: Path) -> None:
        self.lseg = lseg
        self.runner = runner
        self.backend = backend
        self.size = size
        self.cache = cache
        self._lock = threading.Lock()
        self._features: OrderedDict[tuple[str, tuple[int, int]], torch.Tensor] = OrderedDict()
        self._vocabulary: tuple[torch.Tensor, list[str]] | None = None

    @property
    def model_name(self) -> str:
        return f"{self.lseg.variant} / {self.lseg.weights_name}, {self.backend}"

    def network_size(self, picture: Picture) -> tuple[int, int]:
        """`--size`, else the picture's own size, scaled to `NETWORK_SIDE` at most and rounded to 32."""
        return self.size or default_size(picture.image, longest=NETWORK_SIDE)

    def features(self, picture: Picture) -> tuple[torch.Tensor, tuple[int, int], float | None]:
        """(features, network input size, seconds spent or None when cached)."""
        size = self.network_size(picture)
        key = (picture.key, size)
        with self._lock:
            if key in self._features:
                self._features.move_to_end(key)
                return self._features[key], size, None
            start = time.perf_counter()
            x = preprocess(picture.rgb, size, self.lseg.mean, self.lseg.std)
            features = checked_features(self.runner, x, self.lseg.source)
            self._features[key] = features
            while len(self._features) > FEATURE_CACHE:
                self._features.popitem(last=False)
            return features, size, time.perf_counter() - start

    def labels_view(self, picture: Picture, text: str) -> View:
        """Argmax over the typed labels: the text tower and the argmax run; the image features come from
        the cache when this picture was seen at this size."""
        labels = checked_labels(text)
        features, size, feature_seconds = self.features(picture)
        with self._lock:
            start = time.perf_counter()
            text_features = self.lseg.encode_text(labels)
            encoded = time.perf_counter()
            seg = segment_text(features, text_features, labels, picture.rgb.shape[:2])
            segmented = time.perf_counter()
        steps = [
            (f"image features ({self.backend}, input {format_size(size)})", feature_seconds),
            (f"text tower ({len(labels)} labels)", encoded - start),
            (f"logits, upsampling to {picture.rgb.shape[0]}x{picture.rgb.shape[1]}, argmax", segmented - encoded),
        ]
        return self._view(picture, seg, legend_rows(seg), steps, f"labels, {self.model_name}")

    def wordfree_view(self, picture: Picture) -> View:
        """Per-pixel best token of the whole CLIP vocabulary; its embeddings are computed on first use (and
        read from `<cache>/vocab` when a run before made them)."""
        features, size, feature_seconds = self.features(picture)
        with self._lock:
            start = time.perf_counter()
            vocabulary_seconds = None
            if self._vocabulary is None:
                words = vocabulary(self.lseg)
                self._vocabulary = vocabulary_embeddings(self.lseg, self.cache / "vocab"), words
                vocabulary_seconds = time.perf_counter() - start
            embedded = time.perf_counter()
            seg = segment_wordfree(features, *self._vocabulary)
            segmented = time.perf_counter()
        steps = [
            (f"image features ({self.backend}, input {format_size(size)})", feature_seconds),
            (f"vocabulary embeddings ({len(self._vocabulary[1]):,} tokens)", vocabulary_seconds),
            (f"best token per feature pixel ({len(seg.names)} distinct)", segmented - embedded),
        ]
        return self._view(picture, seg, legend_rows(seg, WORDFREE_LEGEND), steps, f"word-free, {self.model_name}")

    def _view(self, picture: Picture, seg: Segmentation, legend: list, steps: list, title: str) -> View:
        start = time.perf_counter()
        picture_overlay = np.asarray(overlay(picture.image, seg))
        steps.append(("overlay", time.perf_counter() - start))
        return View(picture_overlay, seg, legend, steps, title)


# ---- the page ----------------------------------------------------------------------------------------

CSS = """
#lseg-legend table, #lseg-timings table { border-collapse: collapse; font-size: 0.95em; }
#lseg-legend td, #lseg-timings td { padding: 2px 8px; }
.lseg-swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #888; vertical-align: middle; }
.lseg-share, .lseg-seconds { text-align: right; font-variant-numeric: tabular-nums; }
.lseg-error { color: #b00020; font-weight: 600; }
.lseg-random { background: #fff3cd; color: #664d03; padding: 6px 10px; border-radius: 6px; }
"""


def header_html(demo: Demo) -> str:
    """Title, model, and, for the embedded default, a plain warning that its labels mean nothing."""
    html = f"<h2>LSeg: type labels, see the segmentation</h2><p>{escape(demo.model_name)}</p>"
    if not demo.lseg.semantic:
        html += (
            '<p class="lseg-random" id="lseg-random-warning"><b>Random weights</b> (the embedded default): the '
            "real network with seeded random weights, so the labels mean nothing and the colours are noise. "
            "Start it with <code>--weights</code> and a lang-seg checkpoint for real segmentations.</p>"
        )
    return html


def legend_html(view: View) -> str:
    """The legend as an escaped table; `data-share` holds the exact share for scripts and tests."""
    rows = "".join(
        f'<tr><td><span class="lseg-swatch" style="background: rgb({r}, {g}, {b})"></span></td>'
        f'<td class="lseg-name">{escape(name)}</td>'
        f'<td class="lseg-share" data-share="{float(share)!r}">{100 * share:.1f} %</td></tr>'
        for name, (r, g, b), share in view.legend
    )
    return f"<p><b>share of pixels</b>: {escape(view.title)}</p><table>{rows}</table>"


def steps_html(steps: list[tuple[str, float | None]]) -> str:
    """Each step's wall time on the server (a cached step shows as such), and their total."""
    rows = "".join(
        f'<tr><td>{escape(step)}</td><td class="lseg-seconds">'
        f"{'cached' if seconds is None else f'{1000 * seconds:.1f} ms'}</td></tr>"
        for step, seconds in steps
    )
    total = sum(seconds for _, seconds in steps if seconds is not None)
    rows += f'<tr><td>total</td><td class="lseg-seconds">{1000 * total:.1f} ms</td></tr>'
    return f"<p><b>time per step</b></p><table>{rows}</table>"


def message_html(text: str) -> str:
    return f'<p class="lseg-error">{escape(text)}</p>'


# A handler's outputs: picture state, overlay, legend, timings, message.
Outputs = tuple[Picture | None, np.ndarray | None, str, str, str]


def _respond(demo: Demo, picture: Picture | None, labels: str, view: str, load_seconds: float | None) -> Outputs:
    """The page's answer for `picture`; a user error becomes the message, a bug the server log's traceback."""
    try:
        if picture is None:
            raise LsegTrtError("upload a photo or pick a sample first")
        if view == "word-free":
            result = demo.wordfree_view(picture)
        else:  # a request made without the page may send no text at all
            result = demo.labels_view(picture, labels if isinstance(labels, str) else "")
    except LsegTrtError as e:
        return picture, None, "", "", message_html(str(e))
    except Exception:
        log.exception("demo request failed")
        return picture, None, "", "", message_html("internal error (a bug): the server log has the traceback")
    steps = result.steps if load_seconds is None else [(f"decode {picture.name}", load_seconds), *result.steps]
    return picture, result.overlay, legend_html(result), steps_html(steps), ""


def _load(demo: Demo, source: str | Path | np.ndarray | None, name: str, labels: str, view: str) -> Outputs:
    """Decode a new picture and answer for it; a picture that cannot be decoded clears the current one."""
    if source is None:
        return _respond(demo, None, labels, view, None)
    start = time.perf_counter()
    try:
        picture = picture_from(source, name)
    except LsegTrtError as e:
        return None, None, "", "", message_html(str(e))
    except Exception:
        log.exception("decoding an upload failed")
        return None, None, "", "", message_html("internal error (a bug) reading the picture: see the server log")
    return _respond(demo, picture, labels, view, time.perf_counter() - start)


def gradio_module() -> Any:  # noqa: ANN401 - the gradio module (optional extra)
    try:
        import gradio
    except ImportError as e:
        raise MissingDependencyError(f"the demo page needs gradio: pip install 'lseg-trt[demo]' ({e})") from None
    return gradio


def build_app(demo: Demo) -> gradio.Blocks:
    """The page: photo (upload, sample or webcam frame), labels, view; overlay, legend, step timings."""
    gr = gradio_module()
    sample_paths = samples()
    with gr.Blocks(title="LSeg demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        picture = gr.State(None, time_to_live=SESSION_SECONDS)
        gr.HTML(header_html(demo))
        with gr.Row():
            with gr.Column():
                with gr.Tab("photo"):
                    upload = gr.File(label="upload a photo", file_types=list(IMAGE_SUFFIXES), elem_id="lseg-upload")
                    sample = gr.Radio(list(sample_paths), label="or pick a sample", elem_id="lseg-sample")
                with gr.Tab("webcam"):
                    webcam = gr.Image(sources=["webcam"], type="numpy", label="webcam frame", elem_id="lseg-webcam")
                labels = gr.Textbox(
                    DEFAULT_LABELS, label="labels, comma-separated (keep 'other' for the rest)", elem_id="lseg-labels"
                )
                view = gr.Radio(["labels", "word-free"], value="labels", label="view", elem_id="lseg-view")
                go = gr.Button("segment", variant="primary", elem_id="lseg-go")
            with gr.Column():
                message = gr.HTML(elem_id="lseg-message")
                result = gr.Image(
                    label="overlay",
                    format="png",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    elem_id="lseg-overlay",
                )
                legend = gr.HTML(elem_id="lseg-legend")
                timings = gr.HTML(elem_id="lseg-timings")
        outputs = [picture, result, legend, timings, message]
        upload.upload(
            lambda path, text, mode: _load(demo, path, Path(path).name if path else "", text, mode),
            [upload, labels, view],
            outputs,
        )
        sample.input(
            lambda name, text, mode: _load(demo, sample_paths.get(name), f"sample {name}", text, mode),
            [sample, labels, view],
            outputs,
        )
        webcam.input(
            lambda frame, text, mode: _load(demo, frame, "webcam frame", text, mode), [webcam, labels, view], outputs
        )
        for event in (labels.submit, go.click, view.input):
            event(
                lambda current, text, mode: _respond(demo, current, text, mode, None), [picture, labels, view], outputs
            )
    return app


def serve(demo: Demo, host: str, port: int) -> None:
    """Serve the page until interrupted (Ctrl-C); a port in use is a user error."""
    gr = gradio_module()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes, one INFO line each
    app = build_app(demo).queue(max_size=QUEUE)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # offline
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            ssr_mode=False,
            show_error=False,
            max_file_size=MAX_UPLOAD,
            footer_links=[],
            run_history=False,
            state_session_capacity=SESSIONS,
            theme=theme,
            css=CSS,
        )
    except OSError as e:
        raise LsegTrtError(f"cannot serve on {host}:{port}: {e}") from None
