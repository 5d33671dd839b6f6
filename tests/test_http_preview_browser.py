"""The preview page in a real headless Chromium: it loads, fills the window, and the image moves.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package
(dev extra). Playwright only drives the system browser here: no ``playwright install``.
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from bridge.io.http_preview import HttpPreviewSink
from bridge.io.test_pattern import TestPatternSource

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SDBRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 320, "height": 240}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def fed_sink() -> Iterator[HttpPreviewSink]:
    """A preview sink fed by the moving test pattern from a thread, like the daemon's sink thread."""
    sink = HttpPreviewSink(port=0)
    sink.open()
    stop = threading.Event()

    def feed() -> None:
        with TestPatternSource(width=256, height=192, fps=15) as source:
            while not stop.is_set():
                sink.send(source.receive(timeout=1.0))

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    yield sink
    stop.set()
    thread.join(timeout=5)
    sink.close()


def test_page_shows_a_moving_image(browser: object, fed_sink: HttpPreviewSink) -> None:
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[attr-defined]
    try:
        page.goto(fed_sink.url)
        page.wait_for_function("document.getElementById('out').naturalWidth > 0", timeout=20_000)
        layout = page.evaluate("""() => {
            const r = document.getElementById('out').getBoundingClientRect();
            const root = document.documentElement;
            return {w: r.width, h: r.height, natural: document.getElementById('out').naturalWidth,
                    scrollW: root.scrollWidth, scrollH: root.scrollHeight,
                    bg: getComputedStyle(document.body).backgroundColor};
        }""")
        assert layout["natural"] == 256
        assert (layout["w"], layout["h"]) == (VIEWPORT["width"], VIEWPORT["height"])
        assert layout["scrollW"] <= VIEWPORT["width"] and layout["scrollH"] <= VIEWPORT["height"]
        assert layout["bg"] == "rgb(0, 0, 0)"

        first = page.screenshot()
        # Frames arrive at 15 fps; give the browser up to 20 s on a loaded CI machine to repaint.
        deadline = time.monotonic() + 20
        second = page.screenshot()
        while second == first and time.monotonic() < deadline:
            page.wait_for_timeout(200)
            second = page.screenshot()
        assert second != first, "the displayed image did not change while frames were fed"
        shot = np.asarray(Image.open(io.BytesIO(second)).convert("RGB"))
        assert shot.shape == (VIEWPORT["height"], VIEWPORT["width"], 3)
        assert shot.max() > 200 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 8  # bars, not black
    finally:
        page.close()


def test_control_form_applies_changes_and_shows_errors(browser: object) -> None:
    from bridge.control.target import StateTarget

    target = StateTarget()
    sink = HttpPreviewSink(port=0, controls=True, control=target)
    sink.open()
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(sink.url + "control")
        # the form is filled from the daemon's state before anything is sent
        page.wait_for_function("document.forms[0].elements['prompt'].value.length > 0", timeout=20_000)
        assert page.input_value("[name=prompt]") == target.get_state()["params"]["prompt"]
        page.fill("[name=prompt]", "typed in the browser")
        page.fill("[name=guidance_scale]", "2.5")
        page.fill("[name=t_index_list]", "20, 45")
        page.check("[name=similarity_filter]")
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('status').className === 'ok'", timeout=20_000)
        params = target.get_state()["params"]
        assert params["prompt"] == "typed in the browser" and params["guidance_scale"] == 2.5
        assert params["t_index_list"] == [20, 45] and params["similarity_filter"] is True
        assert params["delta"] == 1.0  # untouched fields are not sent
        # a number out of its min/max never leaves the browser (HTML constraint validation);
        # what only the schema knows comes back from the server and is shown
        page.fill("[name=t_index_list]", "45, 20")
        page.fill("[name=delta]", "0.5")
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('status').className === 'err'", timeout=20_000)
        text = page.text_content("#status") or ""
        assert "invalid_config" in text and "t_index_list" in text and "ascending" in text
        assert target.get_state()["params"]["delta"] == 1.0  # all-or-nothing
    finally:
        page.close()
        sink.close()
