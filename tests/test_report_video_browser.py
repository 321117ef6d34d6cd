"""A video run's report as a browser shows it: headless Chromium, driven over the
DevTools protocol, proves that the previews and renders PLAY (screenshots of each video
taken over half a second differ, a still image's do not), that the flip shows the
render, playing, and that the page logs no error.

The run folder is :func:`test_report_video.make_run`'s: real animated WebP files."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_report_video import CHANGED, FRAMES, JOB, make_run

from parity.report import write_report
from parity.results import read_results
from parity.run_info import RunInfo

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser checks need `chromium` on PATH (Debian package chromium)",
)

#: The page's size, CSS px: tall enough that every card is in view, so that every lazily
#: loaded image loads and every animation runs (Chromium pauses those out of view).
VIEWPORT = (1280, 8000)

#: Seconds between two screenshots of a video, and how many are taken: together longer
#: than several frames (125 ms at 8 fps, 62 ms at 16 fps), and no multiple of a loop
#: (1125 ms, 310 ms), so that a playing video cannot show one frame in every shot.
INTERVAL = 0.1
SHOTS = 6


#: Run as ``python -c``: make fds argv[1] and argv[2] the fds 3 and 4, then exec argv[3:].
_TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: commands go in on its fd 3, replies and events come out
    on its fd 4, each a JSON message ended by a NUL byte); no driver library needed."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        # The pipe must be the browser's fds 3 and 4: a Python trampoline puts it there
        # and execs the browser (a POSIX shell redirects only fds 0-9).
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser), str(from_browser), CHROMIUM,
             *flags],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (AssertionError on a protocol error)."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        ident = self._last_id
        reply = self._read_until(lambda m: m.get("id") == ident)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def wait_for(self, method: str, after: int) -> dict:
        """The first event ``method`` received after the first ``after`` events."""
        for event in self.events[after:]:
            if event.get("method") == method:
                return event
        return self._read_until(lambda m: m.get("method") == method)

    def _read_until(self, wanted: Any, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" not in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            ready, _, _ = select.select([self._replies], [], [], deadline - time.monotonic())
            assert ready, "chromium did not answer in time"
            chunk = os.read(self._replies, 1 << 20)
            assert chunk, f"chromium exited (status {self.process.poll()})"
            self._buffer += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=15)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


class Page:
    """One tab of :class:`Chromium` with the report open."""

    def __init__(self, browser: Chromium, url: str) -> None:
        self.browser = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        width, height = VIEWPORT
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.first_event = len(browser.events)
        self.call("Page.navigate", {"url": url})
        browser.wait_for("Page.loadEventFired", after=self.first_event)
        # Every image decoded (a broken one settles too; the page's own check counts it).
        self.evaluate("Promise.all(Array.from(document.images, i => i.decode().catch(() => null)))")

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def box(self, selector: str) -> dict[str, float]:
        """The element's box in page pixels (the page is never scrolled)."""
        rect = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, "
            "height: r.height}; })()"
        )
        assert rect["width"] > 0 and rect["height"] > 0, (selector, rect)
        return rect

    def screenshot(self, selector: str) -> np.ndarray:
        """What the page shows of the element now, RGB."""
        clip = {**self.box(selector), "scale": 1}
        data = self.call("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)

    def shots(self, selector: str, count: int = SHOTS) -> list[np.ndarray]:
        """``count`` screenshots of the element, :data:`INTERVAL` seconds apart."""
        out = []
        for i in range(count):
            if i:
                time.sleep(INTERVAL)
            out.append(self.screenshot(selector))
        return out

    def errors(self) -> list[str]:
        """Errors the page reported since it was opened: uncaught exceptions, console
        errors and browser log errors (a resource that failed to load...)."""
        out = []
        for event in self.browser.events[self.first_event :]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                out.append(json.dumps(params["args"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(f"{params['entry'].get('url')}: {params['entry']['text']}")
        return out


def distinct(shots: list[np.ndarray]) -> int:
    """How many different pictures ``shots`` holds."""
    return len({shot.tobytes() for shot in shots})


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = make_run(tmp_path_factory.mktemp("video-browser"))
    info = RunInfo.from_json({"job_path": "/data/wan job", "device": "cpu"})
    return write_report(run_dir, read_results(run_dir), job_name=JOB, run_info=info)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture()
def page(browser: Chromium, report: Path) -> Page:
    return Page(browser, report.as_uri())


def test_every_video_plays_and_a_still_does_not_move(page):
    sources = page.evaluate(
        "Array.from(document.querySelectorAll('article img.video'), i => i.getAttribute('src'))"
    )
    # Step 100 #0: preview, render, best counterfactual; #1: preview, render.
    assert len(sources) == 5 and all(s.endswith(".webp") for s in sources)
    selectors = [
        f'#s100-i{i} .images figure:nth-child({k}) img' for i, ks in ((0, (1, 2, 4)), (1, (1, 2)))
        for k in ks
    ]  # fmt: skip
    assert (
        page.evaluate(
            f"{json.dumps(selectors)}.map(s => document.querySelector(s).getAttribute('src'))"
        )
        == sources
    )
    for selector in selectors:
        shots = page.shots(selector)
        assert shots[0].std() > 10, selector  # a picture, not a blank box
        assert distinct(shots) >= 2, f"{selector} shows one frame only: it does not play"
    # The heatmap is a still PNG: the same picture every time (the check sees motion,
    # not noise).
    assert distinct(page.shots("#s100-i0 .images figure:nth-child(3) img", count=3)) == 1


def test_the_flip_shows_the_render_playing(page):
    flip = "#flip-s100-i0"
    shown = page.box(f"{flip} img.a")  # where both images lie, one over the other
    assert page.box(f"{flip} img.b") == shown
    x, y = shown["x"] + shown["width"] / 2, shown["y"] + shown["height"] / 2
    on_top = f"document.elementFromPoint({x}, {y}).className"
    assert page.evaluate(on_top) == "side a"  # the preview is shown
    assert distinct(page.shots(f"{flip} img.a")) >= 2
    page.evaluate(f"document.querySelector('{flip} .pair').click()")
    assert page.evaluate(f"document.querySelector('{flip}').className") == "flip show-b"
    assert page.evaluate(f"document.querySelector('{flip} .flip-button').textContent") == (
        "flip: showing render"
    )
    assert page.evaluate(on_top) == "side b"  # the render is shown now
    assert distinct(page.shots(f"{flip} img.b")) >= 2  # and it plays
    page.evaluate(f"document.querySelector('{flip} .flip-button').click()")
    assert page.evaluate(on_top) == "side a"


def test_frame_strip_marks_the_worst_frame(page):
    bars = page.evaluate(
        "Array.from(document.querySelectorAll('#s100-i0 svg.frame-strip g'), g => ({"
        "frame: Number(g.dataset.frame), worst: g.classList.contains('worst'),"
        "height: g.querySelector('rect.bar').getBBox().height,"
        "fill: getComputedStyle(g.querySelector('rect.bar')).fill,"
        "title: g.querySelector('title').textContent}))"
    )
    assert [b["frame"] for b in bars] == list(range(FRAMES))
    worst = [b for b in bars if b["worst"]]
    assert [b["frame"] for b in worst] == [CHANGED]
    assert worst[0]["height"] == max(b["height"] for b in bars)
    assert len({b["fill"] for b in bars}) == 2  # the worst frame's bar has its own colour
    assert worst[0]["title"].startswith(f"frame {CHANGED + 1} of {FRAMES}: SSIM ")


def test_no_console_error_and_no_broken_image(page):
    counts = page.evaluate(
        "[document.documentElement.dataset.imagesLoaded,"
        " document.documentElement.dataset.imagesBroken, document.images.length]"
    )
    loaded, broken, images = int(counts[0]), int(counts[1]), counts[2]
    assert (loaded, broken) == (images, 0)
    assert page.errors() == []
