"""`worldsim play`: the stream it generates with (the same tokens as `sample`), the game of one player, and the server
that keeps players apart, answers bad messages with an error, frees a closed tab's game and writes only to its
output folder. The browser drives it in tests/test_play_browser.py."""

from __future__ import annotations

import base64
import gc
import json
import time
import urllib.error
import urllib.request
import weakref
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from worldsim.cli import main
from worldsim.config import apply_overrides
from worldsim.diffusion.sampling import sample
from worldsim.diffusion.stream import Stream
from worldsim.errors import ConfigError
from worldsim.experiment import load_run
from worldsim.play import Background, PlayServer, PlaySession, PlayWorld, default_action_keys, host_warning
from worldsim.settings import SamplingSettings

MODEL = "maze-pixels-32"  # the shipped video world model and its VAE
FAST = ["sampling.steps=2"]  # the tests of the server's bookkeeping need no good frames


@pytest.fixture(scope="module")
def world(registry_module):
    run = load_run(MODEL, registry_module)
    return PlayWorld(run, registry_module, episodes=3)


@pytest.fixture(scope="module")
def fast_world(registry_module):
    run = load_run(MODEL, registry_module)
    run.cfg = apply_overrides(run.cfg, FAST, allowed=("sampling",))
    return PlayWorld(run, registry_module, episodes=3)


@pytest.fixture(scope="module")
def registry_module():
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    return build_registry(get_plugin_manager())


# -- the stream ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "window", "capacity"),
    [({}, None, 6), ({"history_guidance": 1.5}, 5, 7), ({"use_cache": False}, 4, 5), ({"use_cache": False}, None, 5)],
    ids=["cache", "window-history-guidance", "uncached-window", "uncached-unlimited"],
)
def test_a_stream_makes_the_tokens_sample_makes_bit_for_bit(world, overrides, window, capacity):
    """Chunk by chunk, with the conditions given one chunk at a time and a buffer that drops (or, unlimited and
    uncached, grows past) what the model no longer sees, the tokens equal one call of sample()."""
    model = world.run.model
    settings = SamplingSettings.from_config({**dict(world.run.cfg.sampling), "steps": 3, **overrides})
    g = torch.Generator().manual_seed(0)
    context, cond = torch.randn(2, 4, 4, 8, 8, generator=g), torch.randn(2, 12, 2, generator=g)
    whole = sample(model, settings, horizon=8, context=context, cond=cond, window=window,
                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    stream = Stream(model, settings, context, cond[:, :4], torch.Generator().manual_seed(1), window, capacity)
    steps = torch.cat([stream.step(cond[:, 4 + i : 5 + i]) for i in range(8)], dim=1)
    assert torch.equal(steps, whole) and stream.generated == 8


def test_a_stream_refuses_conditions_it_was_not_started_with(world):
    settings = SamplingSettings.from_config({**dict(world.run.cfg.sampling), "cfg_scale": 1.0})
    stream = Stream(world.run.model, settings, torch.zeros(1, 2, 4, 8, 8), torch.zeros(1, 2, 2))
    with pytest.raises(ConfigError, match="each step needs its conditions"):
        stream.step(None)
    with pytest.raises(ConfigError, match=r"expected \(1, tokens, 2\)"):
        stream.step(torch.zeros(1, 1, 3))


# -- the game -----------------------------------------------------------------------------------------------


def test_default_keys_move_along_rows_and_columns():
    keys = default_action_keys(2)
    assert keys["up"] == [-1.0, 0.0] and keys["right"] == [0.0, 1.0] and keys["none"] == [0.0, 0.0]
    assert set(default_action_keys(1)) == {"none", "up", "down"}


def _agent_at(world, frame):
    found = world.task.find(frame[None])
    assert bool(found["found"][0]), "the agent is in the model's frame"
    return world.task.to_position(found["centroid_px"][0])


def test_the_agent_in_the_models_frames_moves_the_way_the_keys_say(world):
    """From one held-out context and seed, 10 frames of a key against 10 of the opposite key: the agent the model
    draws ends further that way (maze rows grow downwards), as the true world's agent does, wherever a wall does
    not stop the true one; and the model keeps drawing the agent."""
    ends, found = {}, []
    for key in ["up", "down", "left", "right"]:
        session = PlaySession(world, seed=0)
        frames = [f for _ in range(10) for f in session.step(key)]
        found += [f.error is not None for f in frames]
        ends[key] = (_agent_at(world, frames[-1].model), np.array(session.true_world.env.state()[:2]))
    tested = 0
    for axis, (minus, plus) in enumerate([("up", "down"), ("left", "right")]):
        true_gap = ends[plus][1][axis] - ends[minus][1][axis]
        if true_gap < 0.5:
            continue  # a wall stops the true agent along this axis
        tested += 1
        model_gap = ends[plus][0][axis] - ends[minus][0][axis]
        assert model_gap > 0.5, (minus, plus, model_gap, true_gap)
    assert tested >= 1 and np.mean(found) > 0.9


def test_the_true_world_follows_the_data_when_driven_by_its_actions(world):
    """maze-pixels' world, started from a 4-frame context of each held-out episode and stepped by the episode's own
    actions, stays within 0.3 cells of the recorded positions for 16 frames (it leaves out the unrecorded initial
    velocity)."""
    data = world.task.generate(600, 20, 0, only=range(584, 600), progress=False)
    worst = []
    for positions, actions in zip(data["positions"], data["actions"], strict=True):
        true_world = world.task.world(positions[:4], actions[:4])
        worst.append(max(np.linalg.norm(true_world.step(actions[t])[1] - positions[t]) for t in range(4, 20)))
    assert max(worst) < 0.3 and np.median(worst) < 0.15, worst


def test_a_state_model_is_refused_in_one_line(capsys):
    assert main(["play", "maze2d-umaze", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "play needs a video world model" in err


def test_unknown_actions_are_config_errors(fast_world):
    session = PlaySession(fast_world)
    for bad in ["jump", [1.0], [1.0, float("nan")], [True, 0.0], {"a": 1}, None]:
        with pytest.raises(ConfigError, match="action"):
            session.step(bad)
    assert len(session.step([0.5, -0.5])) == 1  # still playing


def test_wide_hosts_are_warned_about():
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert "anyone on the network" in host_warning("0.0.0.0")


def test_the_cli_warns_for_0_0_0_0_and_serves_on_the_host_and_port_given(monkeypatch, tmp_path, capsys):
    served = {}

    def fake_serve(server, host, port, ready):
        served.update(host=host, port=port, out=server.out)
        ready(port)

    monkeypatch.setattr("worldsim.play.serve_forever", fake_serve)
    out = tmp_path / "videos"
    assert main(["play", MODEL, "--host", "0.0.0.0", "--port", "9999", "--out", str(out), "--episodes", "1",
                 "sampling.steps=2"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "anyone on the network" in captured.err and "http://0.0.0.0:9999/" in captured.out
    assert served == {"host": "0.0.0.0", "port": 9999, "out": out}


# -- the server ---------------------------------------------------------------------------------------------


@pytest.fixture()
def server(fast_world, tmp_path):
    out = tmp_path / "out"
    bg = Background(PlayServer(fast_world, out))
    yield bg, out
    bg.stop()


@contextmanager
def _tab(bg):
    """A browser tab's WebSocket, after the server's hello and first frame."""
    with connect(f"ws://127.0.0.1:{bg.port}/ws") as ws:
        hello, first = json.loads(ws.recv()), json.loads(ws.recv())
        assert hello["type"] == "hello" and first["type"] == "frames"
        yield ws, hello


def _ask(ws, message):
    ws.send(message if isinstance(message, str) else json.dumps(message))
    return json.loads(ws.recv())


def test_bad_messages_get_an_error_reply_and_play_goes_on(server):
    bg, _ = server
    with _tab(bg) as (ws, hello):
        _check_bad_messages(ws, hello)


def _check_bad_messages(ws, hello):
    assert hello["world"] and set(hello["keys"]) == {"none", "up", "down", "left", "right"}
    for bad in ["{not json", json.dumps([1, 2]), {"type": "fly"}, {"type": "step", "action": "jump"},
                {"type": "step", "action": [1, 2, 3]}, {"type": "step"}]:  # fmt: skip
        reply = _ask(ws, bad)
        assert reply["type"] == "error" and reply["message"], (bad, reply)
    reply = _ask(ws, {"type": "step", "action": "up"})
    assert reply["type"] == "frames" and reply["frames"][0]["step"] == 1


def test_two_tabs_play_at_once_without_mixing_their_games(server, fast_world):
    """Interleaved, two tabs get exactly the frames each would get alone (a session seeded as the server seeds it)."""
    bg, _ = server
    got = {"a": [], "b": []}
    with _tab(bg) as (a, _), _tab(bg) as (b, _):
        for i in range(4):
            got["a"].append(_ask(a, {"type": "step", "action": "right"})["frames"][0]["model"])
            got["b"].append(_ask(b, {"type": "step", "action": "up" if i % 2 else "left"})["frames"][0]["model"])

    for name, seed, keys in [("a", 1, ["right"] * 4), ("b", 2, ["left", "up", "left", "up"])]:
        alone = PlaySession(fast_world, seed=seed)
        expected = [base64.b64encode(alone.step(k)[0].model.tobytes()).decode() for k in keys]
        assert got[name] == expected, name


def test_closed_tabs_free_their_games_over_50_open_close_cycles(server):
    bg, _ = server
    refs = []

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    for cycle in range(50):
        with _tab(bg) as (ws, _):
            _ask(ws, {"type": "step", "action": "down"})
            refs += [weakref.ref(s) for s in bg.server.sessions.values()]
        if cycle == 9:
            gc.collect()
            warm = rss_mb()
    for _ in range(100):  # the server drops a game when its handler ends, just after the close
        if not bg.server.sessions:
            break
        time.sleep(0.05)
    gc.collect()
    assert bg.server.sessions == {}
    assert all(r() is None for r in refs), "a closed tab's game is still alive"
    assert rss_mb() - warm < 50, f"memory grew by {rss_mb() - warm:.0f} MB over 40 open/close cycles"


def test_videos_are_written_to_the_output_folder_only_and_served_from_it(server, tmp_path):
    bg, out = server
    with _tab(bg) as (ws, _):
        for _ in range(3):
            _ask(ws, {"type": "step", "action": "left"})
        reply = _ask(ws, {"type": "video"})
    assert reply["type"] == "video" and reply["frames"] == 4
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [str(p) for p in written] == [f"out/{reply['url'].split('/')[-1]}"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{bg.port}{reply['url']}").read()
    assert body == (out / reply["url"].split("/")[-1]).read_bytes() and body[4:8] == b"ftyp"
    for path in ["/files/../test_play.py", "/files/%2e%2e/x.mp4", "/files/play-1-1-99.mp4", "/config.yaml", "/ws/../"]:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{bg.port}{path}")
        assert err.value.code in (400, 404), path
    page = urllib.request.urlopen(f"http://127.0.0.1:{bg.port}/").read().decode()
    assert "<canvas" in page and "/ws" in page
