"""The demo page: its model work against `lseg-trt segment`, its limits on untrusted input, and the page itself
served by `lseg-trt demo` and driven in a real headless Chromium (Playwright on the system's browser)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import lseg_trt
from lseg_trt import LsegTrtError
from lseg_trt.backends import make_runner, parse_backend
from lseg_trt.figures import overlay
from lseg_trt.images import load_image, samples
from lseg_trt.models import LSeg, random_lseg
from lseg_trt.segment import Segmentation, segment_labels
from lseg_trt.webdemo import (
    FEATURE_CACHE,
    MAX_LABELS,
    PAGE_SIDE,
    Demo,
    View,
    checked_features,
    checked_labels,
    legend_html,
    legend_rows,
    message_html,
    picture_from,
)

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
)
WAIT = 90.0  # seconds any one step of the page may take (the word-free vocabulary: ~20 s on 2 cores)


@pytest.fixture(scope="module")
def demo(tiny_vit: LSeg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with make_runner(parse_backend("torch"), tiny_vit, "cpu") as runner:
        yield Demo(tiny_vit, runner, "torch", None, tmp_path_factory.mktemp("cache"))


def test_labels_view_is_segment_labels_and_caches_features(demo: Demo, tiny_vit: LSeg) -> None:
    picture = picture_from(samples()["coffee"], "coffee")
    first = demo.labels_view(picture, "cup, table, other")
    features, size, seconds = demo.features(picture)
    assert size == (384, 608) and seconds is None  # the image's size rounded to 32, as `segment` picks
    expected = segment_labels(features, tiny_vit, ["cup", "table", "other"], (400, 600))
    np.testing.assert_array_equal(first.segmentation.label_map, expected.label_map)
    assert first.steps[0][1] is not None and first.overlay.shape == (400, 600, 3)
    np.testing.assert_array_equal(first.overlay, np.asarray(overlay(picture.image, expected)))
    again = demo.labels_view(picture, "cup, other")
    assert again.steps[0] == ("image features (torch, input 384x608)", None)  # only text tower and argmax ran
    assert sum(share for _, _, share in again.legend) == pytest.approx(1.0)
    for seed in range(FEATURE_CACHE):  # other pictures push it out of the LRU
        noise = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        demo.features(picture_from(noise, f"noise {seed}"))
    assert demo.features(picture)[2] is not None


def test_nonfinite_features_are_refused() -> None:
    """NaN weights must not pass for a segmentation, on the page as in `segment` (both call checked_features)."""
    broken = random_lseg("tiny_vit")
    next(broken.image_encoder.parameters()).data.fill_(float("nan"))
    x = broken.preprocess(samples()["coffee"], (64, 64))
    message = r"NaN/Inf values \(non-finite weights in random\?\)"
    with make_runner(parse_backend("torch"), broken, "cpu") as runner, pytest.raises(LsegTrtError, match=message):
        checked_features(runner, x, broken.source)


def test_legend_lists_every_label_largest_first() -> None:
    seg = Segmentation(np.array([[2, 2, 2, 0]], dtype=np.int32), ["mug", "table", "other"])
    rows = legend_rows(seg)
    assert [(name, share) for name, _, share in rows] == [("other", 0.75), ("mug", 0.25), ("table", 0.0)]
    assert rows[0][1] == (0, 128, 0) and rows[1][1] == (0, 0, 0)  # lang-seg's palette by label index
    assert len(legend_rows(seg, top=1)) == 1


def test_labels_are_limited() -> None:
    assert checked_labels("<b>mug</b>, a & b, other") == ["<b>mug</b>", "a & b", "other"]
    for text, message in [
        ("", "empty label"),
        (" , other", "empty label"),
        (", ".join(f"label {i}" for i in range(500)), f"500 labels; at most {MAX_LABELS}"),
        ("x" * 20_001, "20001 characters"),
        ("cup\x07, other", "control characters"),
        ("cup\nmug, other", "line breaks"),
        ("cup, cup", "duplicate"),
    ]:
        with pytest.raises(LsegTrtError, match=message):
            checked_labels(text)


def test_names_are_escaped_in_the_page() -> None:
    seg = Segmentation(np.zeros((1, 1), np.int32), ["<img src=x onerror=alert(1)>"])
    view = View(np.zeros((1, 1, 3), np.uint8), seg, legend_rows(seg), [], "<script>title</script>")
    html = legend_html(view) + message_html("duplicate labels: <b>x</b>")
    assert "<img" not in html and "<script" not in html and "<b>x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_pictures_are_checked_and_shrunk(tmp_path: Path, png_header_claiming: Callable[[int, int], bytes]) -> None:
    (tmp_path / "huge.png").write_bytes(png_header_claiming(20000, 20000))
    (tmp_path / "big.png").write_bytes(png_header_claiming(8000, 8000))
    (tmp_path / "notes.png").write_text("not an image\n")
    for name, message in [("huge.png", "decompression bomb"), ("big.png", "megapixels"), ("notes.png", "cannot read")]:
        with pytest.raises(LsegTrtError, match=message):
            picture_from(tmp_path / name, name)
    wide = np.random.default_rng(0).integers(0, 255, (1500, 3000, 3), dtype=np.uint8)
    picture = picture_from(wide, "wide")
    assert picture.rgb.shape == (PAGE_SIDE // 2, PAGE_SIDE, 3)
    assert picture_from(wide.copy(), "again").key == picture.key != picture_from(wide[::-1], "flipped").key


def test_demo_command_refuses_bad_options(cli) -> None:
    result = cli("demo", "--port", "70000")
    assert result.returncode == 2 and "TCP port" in result.stderr
    result = cli("demo", "--variant", "tiny_vit", "--backend", "nope", "--device", "cpu")
    assert result.returncode == 2 and "unknown backend" in result.stderr


def test_demo_command_without_gradio_is_one_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # importing it fails
    result = cli("demo", "--variant", "tiny_vit", "--device", "cpu")
    assert result.returncode == 2 and "pip install 'lseg-trt[demo]'" in result.stderr
    assert "Traceback" not in result.stderr and "built tiny_vit" not in result.stderr  # before loading the network


def test_demo_command_on_a_busy_port_is_one_line(cli, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'lseg-trt[demo]')")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("demo", "--variant", "tiny_vit", "--device", "cpu", "--cache", tmp_path, "--port", port)
    assert result.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# ---- the page in a browser ---------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    cache: Path

    def check_alive(self) -> None:
        """The server still answers, and printed no traceback (user errors must not make one)."""
        assert self.process.poll() is None, self.log.read_text()
        assert "Traceback" not in self.log.read_text(), self.log.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`lseg-trt demo` on tiny_vit in a child process, bound to 127.0.0.1 on a free port, stopped at the end."""
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'lseg-trt[demo]')")
    root = tmp_path_factory.mktemp("demo")
    port = _free_port()
    src = str(Path(lseg_trt.__file__).parents[1])  # the code under test, installed or not
    env = {
        **os.environ,
        "GRADIO_TEMP_DIR": str(root / "uploads"),
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    command = [sys.executable, "-m", "lseg_trt.cli", "demo", "--weights", "random", "--variant", "tiny_vit",
               "--device", "cpu", "--cache", str(root / "cache"), "--port", str(port)]  # fmt: skip
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, f"the demo server exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no page at {url} after {WAIT} s:\n{log.read_text()}"
                time.sleep(0.5)
        yield Server(url, process, log, root / "cache")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system (Playwright cannot download its own here)."""
    if CHROMIUM is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install 'lseg-trt[demo]')"
    )
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; the fake camera (a moving
        # test pattern) and auto-accepted permission prompt let the webcam tab take a frame
        flags = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        yield chromium
        chromium.close()


def _open(browser: Any, server: Server) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(WAIT * 1000)
    page.goto(server.url)
    page.wait_for_selector("#lseg-upload input[type=file]", state="attached")
    return page


def _until(condition: Callable[[], Any], what: str) -> Any:
    """Poll until `condition()` is truthy (the page updates in place: wait for the expected state)."""
    deadline = time.monotonic() + WAIT
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _legend(page: Any) -> list[tuple[str, float]]:
    """(name, share) per legend row, read in one go (the page may re-render between two reads)."""
    script = "rows => rows.map(r => [r.querySelector('.lseg-name').textContent, r.lastChild.dataset.share])"
    return [(name, float(share)) for name, share in page.eval_on_selector_all("#lseg-legend tr", script)]


def _message(page: Any) -> str:
    """The page's error line ('' when none; Gradio's progress timer shares the element)."""
    return " ".join(page.eval_on_selector_all("#lseg-message .lseg-error", "ps => ps.map(p => p.textContent)"))


def _labels(page: Any, text: str) -> None:
    box = page.locator("#lseg-labels textarea")
    box.fill(text)
    box.press("Enter")


def _upload(page: Any, path: Path) -> None:
    """As a user does: clear the file shown (Gradio's File holds one), then choose the new one."""
    clear = page.locator("#lseg-upload button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.locator("#lseg-upload input[type=file]").set_input_files(str(path))


def _shows(page: Any, names: set[str]) -> list[tuple[str, float]]:
    return _until(lambda: (rows := _legend(page)) and {n for n, _ in rows} == names and rows, f"legend {names}")


def _overlay(page: Any, before: str | None = None) -> tuple[str, np.ndarray]:
    src = _until(lambda: (s := page.locator("#lseg-overlay img").get_attribute("src")) and s != before and s, "overlay")
    return src, np.asarray(Image.open(BytesIO(page.request.get(src).body())).convert("RGB"))


@needs_browser
def test_page_segments_like_the_command(server: Server, browser: Any, cli, tmp_path: Path) -> None:
    page = _open(browser, server)
    assert "labels mean nothing" in page.locator("#lseg-random-warning").inner_text()
    _labels(page, "cup, other")
    assert "upload a photo or pick a sample first" in _until(lambda: _message(page), "a message")
    coffee = samples()["coffee"]
    _upload(page, coffee)
    _shows(page, {"cup", "other"})
    first, _ = _overlay(page)
    _labels(page, "cup, table, saucer, other")
    rows = _shows(page, {"cup", "table", "saucer", "other"})
    _, shown = _overlay(page, before=first)
    timings = page.locator("#lseg-timings").inner_text()
    # no --backend: auto, onnxruntime on the CPU, for the page as for `segment` below
    assert "image features (onnxruntime, input 384x608)\tcached" in timings and "text tower (4 labels)" in timings
    page.screenshot(path=tmp_path / "demo.png", full_page=True)

    result = cli("segment", "--weights", "random", "--variant", "tiny_vit", "--device", "cpu", "--image", coffee,
                 "--labels", "cup, table, saucer, other", "--cache", server.cache,
                 "--out", tmp_path / "seg.png")  # fmt: skip
    assert result.returncode == 0, result.stderr
    seg = Segmentation(np.load(tmp_path / "seg.labels.npy"), (tmp_path / "seg.labels.txt").read_text().splitlines())
    assert rows == [(name, share) for name, _, share in legend_rows(seg)]  # exact shares, in the same order
    np.testing.assert_array_equal(shown, np.asarray(overlay(load_image(coffee), seg)))
    server.check_alive()


@needs_browser
def test_page_reports_bad_input(
    server: Server, browser: Any, tmp_path: Path, png_header_claiming: Callable[[int, int], bytes]
) -> None:
    page = _open(browser, server)
    (tmp_path / "notes.png").write_text("<script>not an image</script>\n")
    (tmp_path / "huge.png").write_bytes(png_header_claiming(20000, 20000))
    (tmp_path / "big.png").write_bytes(png_header_claiming(8000, 8000))
    for name, message in [("notes.png", "cannot read image"), ("huge.png", "decompression bomb"),
                          ("big.png", "more than the 50 megapixels")]:  # fmt: skip
        _upload(page, tmp_path / name)
        _until(lambda m=message: m in _message(page), message)
    page.get_by_label("chelsea").check()
    _shows(page, {"cat", "cup", "person", "other"})  # the default labels
    assert _message(page) == ""
    for text, message in [
        ("", "empty label"),
        (", ".join(f"thing {i}" for i in range(500)), "500 labels; at most 100"),
        ("cat\x07, other", r"control characters: 'cat\x07'"),
    ]:
        _labels(page, text)
        _until(lambda m=message: m in _message(page), message)
        _until(lambda: not _legend(page), "no legend beside the message")
    markup = ["<img src=x onerror=window.lsegHacked=1>", "<b>bold</b>", "other"]
    _labels(page, ", ".join(markup))
    _shows(page, set(markup))  # the text itself, not markup
    assert page.evaluate("window.lsegHacked") is None
    assert page.locator("#lseg-legend td img, #lseg-legend td b, #lseg-message b").count() == 0
    assert "Traceback" not in page.content()
    server.check_alive()


@needs_browser
def test_two_browsers_at_once(server: Server, browser: Any) -> None:
    pages = [_open(browser, server), _open(browser, server)]
    for page, labels in zip(pages, ("cat, other", "astronaut, flag, other"), strict=True):
        page.locator("#lseg-labels textarea").fill(labels)
    pages[0].get_by_label("chelsea").check()
    _upload(pages[1], samples()["astronaut"])  # both requests are in flight together
    _shows(pages[0], {"cat", "other"})
    _shows(pages[1], {"astronaut", "flag", "other"})
    _labels(pages[0], "cat, sofa, other")  # each browser keeps its own picture
    _shows(pages[0], {"cat", "sofa", "other"})
    assert "decode" not in pages[0].locator("#lseg-timings").inner_text()  # labels only: no new picture
    server.check_alive()


@needs_browser
def test_webcam_frame(server: Server, browser: Any) -> None:
    page = _open(browser, server)
    page.get_by_role("tab", name="webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    # a capture before the stream plays takes no frame: wait for the fake camera's picture
    page.wait_for_function("() => document.querySelector('#lseg-webcam video')?.videoWidth > 0")
    page.locator("#lseg-webcam button[aria-label='capture photo']").click()
    _shows(page, {"cat", "cup", "person", "other"})
    assert "decode webcam frame" in page.locator("#lseg-timings").inner_text()
    server.check_alive()


@pytest.mark.slow  # the whole vocabulary through the text tower: ~20-60 s on 2 cores
@needs_browser
def test_wordfree_view(server: Server, browser: Any, cli, tmp_path: Path) -> None:
    page = _open(browser, server)
    page.get_by_label("coffee").check()
    _shows(page, {"cat", "cup", "person", "other"})
    page.get_by_label("word-free").check()
    _until(lambda: "vocabulary embeddings (49,408 tokens)" in page.locator("#lseg-timings").inner_text(), "word-free")
    rows = _legend(page)
    assert 0 < len(rows) <= 20 and 0 < sum(share for _, share in rows) <= 1 + 1e-9
    result = cli("wordfree", "--weights", "random", "--variant", "tiny_vit", "--device", "cpu", "--image",
                 samples()["coffee"], "--cache", server.cache, "--out", tmp_path / "wf.png")  # fmt: skip
    assert result.returncode == 0 and "from cache" in result.stderr, result.stderr  # the page's vocabulary file
    names = (tmp_path / "wf.labels.txt").read_text().split("\n")[:-1]
    seg = Segmentation(np.load(tmp_path / "wf.labels.npy"), names)
    assert rows == [(name, share) for name, _, share in legend_rows(seg, 20)]
    page.get_by_label("labels", exact=True).check()
    _shows(page, {"cat", "cup", "person", "other"})
    server.check_alive()
