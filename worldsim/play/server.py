"""The web server of ``worldsim play``: one static page, and a WebSocket per browser tab.

Built on ``websockets`` (asyncio): ``GET /`` is the page (``page.html``, no build step), ``/ws`` the tab's
WebSocket and ``GET /files/NAME`` a video the tab asked for, from the output folder and nowhere else. Each
WebSocket owns one :class:`~worldsim.play.session.PlaySession`, created when the tab connects and dropped when
it closes, so tabs never share a game. The model runs in a worker thread, never on the event loop.

Messages are JSON. The tab sends ``{"type": "step", "action": KEY or [a_1, ..., a_A]}``, ``{"type": "reset"}``
or ``{"type": "video"}``; the server answers ``hello`` (the model, its keys, frame size and rate) once, then
``frames`` (each frame's pixels as base64 RGB bytes, the true world's beside them, the position error and the
model's time), ``video`` (the URL of the mp4) or ``error`` (a malformed message or an unknown action: the game
goes on).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from worldsim.errors import WorldsimError
from worldsim.play.session import Frame, PlaySession, PlayWorld

PAGE = Path(__file__).with_name("page.html")
VIDEO_NAME = re.compile(r"play-[0-9]+-[0-9]+-[0-9]+\.mp4")  # the only files the server writes and serves
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def host_warning(host: str) -> str | None:
    """The warning printed when the page is served beyond this machine."""
    if host in LOOPBACK:
        return None
    return (
        f"warning: --host {host} serves the page to anyone on the network who can reach this machine: they can "
        f"play the model and use its CPU; use the default 127.0.0.1 to keep it local"
    )


def _b64(frame: Any) -> str | None:
    return None if frame is None else base64.b64encode(frame.tobytes()).decode("ascii")


def frames_message(frames: list[Frame], episode: int) -> dict[str, Any]:
    """The ``frames`` reply: per frame the model's and the true world's pixels (base64 RGB, row-major)."""
    return {
        "type": "frames",
        "episode": episode,
        "frames": [
            {"model": _b64(f.model), "world": _b64(f.world), "error": f.error, "step": f.step, "ms": round(f.ms, 2)}
            for f in frames
        ],
    }


def _response(status: HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store"})
    for key, value in (extra or {}).items():
        headers[key] = value
    return Response(status.value, status.phrase, headers, body)


class PlayServer:
    """Serves ``world`` to any number of tabs; videos go to ``out`` (created before it serves)."""

    def __init__(self, world: PlayWorld, out: Path, seed: int = 0) -> None:
        self.world, self.out, self.seed = world, Path(out), seed
        self.sessions: dict[int, PlaySession] = {}
        self._ids = itertools.count(1)
        self._videos = itertools.count(1)

    def http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP: the page, a video from the output folder, else 404; ``/ws`` goes on to the WebSocket."""
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None
        if path in ("/", "/index.html"):
            return _response(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        name = path.removeprefix("/files/")
        if path.startswith("/files/") and VIDEO_NAME.fullmatch(name) and (self.out / name).is_file():
            body = (self.out / name).read_bytes()
            return _response(
                HTTPStatus.OK, body, "video/mp4", {"Content-Disposition": f'attachment; filename="{name}"'}
            )
        return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    async def handle(self, websocket: ServerConnection) -> None:
        """One tab's game, from connect to close."""
        sid = next(self._ids)
        session = await asyncio.to_thread(PlaySession, self.world, self.seed + sid)
        self.sessions[sid] = session
        try:
            await websocket.send(json.dumps({"type": "hello", "session": sid, **self.world.describe()}))
            await websocket.send(json.dumps(frames_message([session.start_frame], session.episode)))
            async for message in websocket:
                await websocket.send(json.dumps(await self.reply(sid, session, message)))
        except ConnectionClosed:
            pass
        finally:
            del self.sessions[sid]  # the game goes with its tab

    async def reply(self, sid: int, session: PlaySession, message: str | bytes) -> dict[str, Any]:
        """The answer to one message; bad input is an ``error`` reply, never the end of the game."""
        try:
            msg = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            return {"type": "error", "message": 'message: not JSON; expected {"type": "step", "action": ...}'}
        kind = msg.get("type") if isinstance(msg, dict) else None
        try:
            if kind == "step":
                return frames_message(await asyncio.to_thread(session.step, msg.get("action")), session.episode)
            if kind == "reset":
                return frames_message([await asyncio.to_thread(session.reset)], session.episode)
            if kind == "video":
                name = f"play-{sid}-{session.games}-{next(self._videos)}.mp4"
                await asyncio.to_thread(session.write_video, self.out / name)
                return {"type": "video", "url": f"/files/{name}", "frames": len(session.recorded)}
        except WorldsimError as exc:
            return {"type": "error", "message": str(exc)}
        return {"type": "error", "message": f"message type: got {kind!r}; expected step, reset or video"}

    async def start(self, host: str, port: int) -> Server:
        self.out.mkdir(parents=True, exist_ok=True)
        return await serve(self.handle, host, port, process_request=self.http, max_size=2**16)


def serve_forever(server: PlayServer, host: str, port: int, ready: Callable[[int], None] | None = None) -> None:
    """Serve until interrupted; ``ready(port)`` is called once it listens (port 0 picks a free one)."""

    async def main() -> None:
        srv = await server.start(host, port)
        if ready is not None:
            ready(srv.sockets[0].getsockname()[1] if srv.sockets else port)
        await srv.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("worldsim play: stopped", file=sys.stderr)


class Background:
    """A :class:`PlayServer` on its own thread and event loop (tests, benchmarks, notebooks): ``port`` once
    started, :meth:`stop` to close it."""

    def __init__(self, server: PlayServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server, self._loop = server, asyncio.new_event_loop()
        self._started = threading.Event()
        self._srv: Server | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port), daemon=True)
        self._thread.start()
        if not self._started.wait(60):
            raise RuntimeError("worldsim play: the server did not start within 60 s")

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        self._srv = self._loop.run_until_complete(self.server.start(host, port))
        self.port = self._srv.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    def stop(self) -> None:
        async def close() -> None:
            assert self._srv is not None
            self._srv.close()
            await self._srv.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
