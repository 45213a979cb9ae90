"""`worldsim play` in a real browser: headless Chromium opens the page, presses arrow keys, and the frames that
arrive change with them; the agent the model draws moves the way the pressed key says, as the true world's agent
does. The test also takes the screenshot docs/play.md shows (``WORLDSIM_SCREENSHOT=docs/img/play.png`` writes it
there). Chromium is Debian's ``chromium`` package, which ``make test`` installs where it is missing; without it the
test is skipped, except in CI (``CI=true``), where it must run."""

from __future__ import annotations

import base64
import os
import shutil

import numpy as np
import pytest
from browser import Browser, find_chromium

from worldsim.experiment import load_run
from worldsim.play import Background, PlayServer, PlayWorld

CHROMIUM = find_chromium()
if CHROMIUM is None and os.environ.get("CI", "").lower() not in ("", "0", "false"):
    raise RuntimeError("CI runs the browser test: install Debian's chromium (make test does: make chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make chromium` installs Debian's package")

PHASES = [("ArrowRight", 1, 1), ("ArrowDown", 0, 1), ("ArrowLeft", 1, -1), ("ArrowUp", 0, -1)]  # key, axis, sign
FRAMES_PER_PHASE = 12


def _frame(world, b64):
    h, w = world.frames.shape[2:4]
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(h, w, 3)


def _agent(world, frame):
    found = world.task.find(frame[None])
    return world.task.to_position(found["centroid_px"][0]) if bool(found["found"][0]) else None


def test_the_page_plays_the_model_with_the_arrow_keys(registry, tmp_path):
    world = PlayWorld(load_run("maze-pixels-32", registry), registry, episodes=2)
    server = Background(PlayServer(world, tmp_path / "out"))
    try:
        with Browser(CHROMIUM) as browser:
            browser.open(f"http://127.0.0.1:{server.port}/")
            browser.wait_for("window.play.hello !== null && window.play.frames >= 1")
            assert browser.evaluate("window.play.hello.world") is True

            def now():
                last = browser.evaluate("window.play.last")
                return (
                    browser.evaluate("window.play.frames"),
                    _frame(world, last["model"]),
                    _frame(world, last["world"]),
                )

            _, model, truth = now()
            tested, frames_seen = 0, []
            for code, axis, sign in PHASES:
                before_model, before_truth = _agent(world, model), _agent(world, truth)
                count = browser.evaluate("window.play.frames")
                browser.key(code, down=True)
                browser.wait_for(f"window.play.frames >= {count + FRAMES_PER_PHASE}")
                browser.key(code, down=False)
                count, model, truth = now()
                frames_seen.append(model)
                after_model, after_truth = _agent(world, model), _agent(world, truth)
                true_move = sign * (after_truth[axis] - before_truth[axis])
                if true_move < 0.4 or before_model is None:
                    continue  # a wall stops the true agent (or the model lost it before): nothing to follow
                tested += 1
                assert after_model is not None, code
                assert sign * (after_model[axis] - before_model[axis]) > 0.2, (code, after_model, before_model)
            assert tested >= 2, "at least two of the four directions were open to the true agent"
            assert all(not np.array_equal(a, b) for a, b in zip(frames_seen, frames_seen[1:], strict=False))
            browser.evaluate("document.getElementById('pause').click()")  # hold still for the screenshot
            browser.wait_for("!window.play.running")
            fps = browser.evaluate("document.getElementById('fps').textContent")
            assert fps.endswith("frames/s"), fps
            assert browser.evaluate("window.play.errors.length") == 0
            shot = browser.screenshot(tmp_path / "play.png")
    finally:
        server.stop()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("WORLDSIM_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
