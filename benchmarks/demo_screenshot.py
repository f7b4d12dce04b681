"""A screenshot of the demo page for the README: `lseg-trt demo` in a child process, one sample photo and a few
labels typed into it in headless Chromium, the page saved as PNG once the legend is shown.

    python benchmarks/demo_screenshot.py --out benchmarks/results/demo-2026-12-07/demo.png

Needs `lseg-trt[demo]`, playwright and a Chromium on PATH (Debian: apt-get install chromium). The embedded
default (random weights) is what a newcomer sees first, so that is what is shown unless --weights is given.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--variant", default=None, help="default: the checkpoint's, vit_l16 for random")
    parser.add_argument("--sample", default="coffee", help="chelsea, astronaut or coffee [%(default)s]")
    parser.add_argument("--labels", default="cup, saucer, table, other")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no Chromium on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lseg_trt.cli", "demo", "--weights", args.weights, "--port", str(port)]
    server = subprocess.Popen(command + (["--variant", args.variant] if args.variant else []))
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):  # building ViT-L with random weights takes a while on a CPU
            if server.poll() is not None:
                sys.exit(f"lseg-trt demo exited with code {server.returncode}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(300_000)
            page.goto(url)
            page.locator("#lseg-labels textarea").fill(args.labels)
            page.get_by_label(args.sample).check()
            page.wait_for_selector("#lseg-legend td.lseg-name")
            page.wait_for_selector("#lseg-overlay img")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            print(f"wrote {args.out} (Chromium {browser.version})")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
