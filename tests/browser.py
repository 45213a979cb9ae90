"""A headless Chromium driven over the Chrome DevTools Protocol (CDP), for the tests of pages worldsim serves.

Chromium starts with ``--remote-debugging-port=0`` and prints the browser's DevTools WebSocket; the helper opens a
page target there and sends CDP commands to it (``Runtime.evaluate``, ``Input.dispatchKeyEvent``,
``Page.captureScreenshot``) with the ``websockets`` client worldsim already depends on: no driver to install.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

KEY_CODES = {"ArrowUp": 38, "ArrowDown": 40, "ArrowLeft": 37, "ArrowRight": 39, "KeyP": 80, "KeyR": 82}


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or another name a system gives it), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, width: int = 900, height: int = 640) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="worldsim-chromium-")
        args = [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
                f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = self._devtools_url()
        self._connection = connect(url, max_size=2**26, open_timeout=30)
        self._browser = self._connection.__enter__()
        self._ids = itertools.count(1)
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _devtools_url(self) -> str:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            lines.append(line)
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
        raise RuntimeError("chromium did not start its DevTools endpoint:\n" + "".join(lines[-20:]))

    def _call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        """Send one CDP command (to the page with ``session``) and return its result; events are skipped."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self._session
        self._browser.send(json.dumps(msg))
        while True:
            reply = json.loads(self._browser.recv(timeout=120))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call(method, params, session=True)

    def open(self, url: str) -> None:
        self.page("Page.enable")
        self.page("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page: {expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"page: {expression} stayed false for {timeout:g} s")

    def key(self, code: str, down: bool) -> None:
        """A key press (``down``) or release, as a user's keyboard sends it."""
        params = {"type": "keyDown" if down else "keyUp", "code": code, "key": code,
                  "windowsVirtualKeyCode": KEY_CODES[code]}  # fmt: skip
        self.page("Input.dispatchKeyEvent", params)

    def screenshot(self, path: str | os.PathLike) -> Path:
        data = self.page("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
