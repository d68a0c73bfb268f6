"""A real browser talks to the examples' WebSockets: headless Chromium, driven by blockws.

Chromium's DevTools protocol is itself a WebSocket: the test connects to it
with blockws, loads the example's page (same port as its WebSocket), and runs
JavaScript in the page (``Runtime.evaluate``) to type and to read what the
page shows. The example's other side is a blockws client.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import blockws

from .helpers import http_get, run_example_server

pytestmark = [pytest.mark.slow]

BROWSER = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if (found := shutil.which(name))
    ),
    None,
)
if BROWSER is None:
    pytestmark.append(pytest.mark.skip(reason="no chromium, chromium-browser or google-chrome binary found"))


class Page:
    """A page in the browser, seen through its DevTools WebSocket."""

    def __init__(self, ws: blockws.WebSocket) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        call_id = next(self.ids)
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        self.ws.sendall(json.dumps({"id": call_id, "method": "Runtime.evaluate", "params": params}))
        while True:  # skip events (none are enabled) and answers to nothing
            message = self.ws.recv()
            assert message is not None, "the browser closed its DevTools connection"
            answer = json.loads(message)
            if answer.get("id") == call_id:
                break
        assert "error" not in answer, answer  # a DevTools error, not one of the page
        result = answer["result"]
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10) -> Any:
        """The value of ``expression`` once it is true (polled)."""
        deadline = time.monotonic() + timeout
        # False, not an exception, while the page is loading (no document yet)
        guarded = f"(() => {{ try {{ return {expression}; }} catch (error) {{ return false; }} }})()"
        while not (value := self.evaluate(guarded)):
            assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
            time.sleep(0.05)
        return value

    def items(self) -> list[str]:
        """The texts of the page's list items (messages, in both pages)."""
        return list(self.evaluate("[...document.querySelectorAll('li')].map((li) => li.textContent)"))


@contextlib.contextmanager
def browser(url: str, tmp_path: Path) -> Iterator[Page]:
    """Headless Chromium showing ``url``; killed, with every process it started, at the end."""
    assert BROWSER is not None
    profile = tmp_path / "chromium-profile"
    command = [BROWSER, "--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
    command += ["--no-default-browser-check", f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    if os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    log = tmp_path / "chromium.log"
    # Its temporary files, crash reports and caches go here, not in /tmp and ~
    # (a short path: a Unix socket's path is at most 107 bytes long).
    home = tempfile.mkdtemp(prefix="blockws-chromium-")
    env = {**os.environ, "HOME": home, "TMPDIR": home}
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    with open(log, "wb") as output:
        # A process group of its own: the renderers and helpers end with it.
        process = subprocess.Popen([*command, url], stdout=output, stderr=output, env=env, start_new_session=True)
    try:
        # It writes its DevTools port (and the browser's path) here once it listens.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert process.poll() is None, f"chromium exited ({process.returncode}): {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"chromium did not start in 30 s: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        devtools = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        # The page's own DevTools WebSocket, from the list of targets.
        while True:
            status, body = http_get(devtools + "/json/list")
            targets = [t for t in json.loads(body) if t.get("type") == "page" and t.get("url") == url]
            if status == 200 and targets:
                break
            assert time.monotonic() < deadline, f"no page for {url} in {body}"
            time.sleep(0.1)
        with blockws.connect(targets[0]["webSocketDebuggerUrl"], timeout=20, max_size=None) as ws:
            yield Page(ws)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
        process.wait()
        shutil.rmtree(home, ignore_errors=True)


def type_into(page: Page, text: str) -> None:
    """Type ``text`` into the chat page and press its button, as a user would."""
    page.evaluate(
        f"document.getElementById('text').value = {json.dumps(text)}; document.querySelector('button').click()"
    )


def test_flask_chat_in_a_browser(tmp_path: Path) -> None:
    with run_example_server("flask_chat.py") as url, browser(url, tmp_path) as page:
        page.wait_for("document.documentElement.innerText.includes('(connected)')")
        type_into(page, "chromium here")
        page.wait_for("document.documentElement.innerText.includes('chromium here')")  # in the chat now
        with blockws.connect(url.replace("http://", "ws://") + "ws", timeout=10) as other:
            other.sendall("python here")
            assert other.recv() == "python here"  # in the chat too
            type_into(page, "hello from chromium")
            assert other.recv() == "hello from chromium"
            other.sendall("hello browser, ünïcode")
            page.wait_for("document.documentElement.innerText.includes('hello browser, ünïcode')")
        assert page.items() == [
            "(connected)",
            "chromium here",
            "python here",
            "hello from chromium",
            "hello browser, ünïcode",
        ]
        assert page.evaluate("document.getElementById('text').value") == ""  # the page cleared its input


ECHO_PAGE = """<!doctype html>
<meta charset="utf-8">
<ul id="log"></ul>
<script>
  const ws = new WebSocket("ws://" + location.host + "/ws");
  ws.binaryType = "arraybuffer";  // binary messages as ArrayBuffer, not Blob
  const log = (text) => {
    const li = document.createElement("li");
    li.textContent = text;
    document.getElementById("log").append(li);
  };
  ws.onopen = () => ws.send("ping from chromium");
  ws.onmessage = (event) =>
    log(typeof event.data === "string" ? "echo: " + event.data : "bytes: " + new Uint8Array(event.data));
  ws.onclose = (event) => log("closed: " + event.code);
</script>
"""


def test_http_server_in_a_browser(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(ECHO_PAGE, encoding="utf-8")
    with run_example_server("http_server.py", "--directory", str(site)) as url, browser(url, tmp_path) as page:
        page.wait_for("document.querySelectorAll('li').length >= 1")
        assert page.items() == ["echo: ping from chromium"]
        big = "x" * 200_000  # a message of many frames and TCP segments
        page.evaluate(f"ws.send('wörld'); ws.send('{big}'); ws.send(new Uint8Array([0, 1, 2]))")
        page.wait_for("document.querySelectorAll('li').length >= 4")
        page.evaluate("ws.close(1000)")
        page.wait_for("document.documentElement.innerText.includes('closed:')")
        items = page.items()
        assert items[:3] == ["echo: ping from chromium", "echo: wörld", "echo: " + big]
        assert items[3:] == ["bytes: 0,1,2", "closed: 1000"]
