"""``worldsim play``: a video world model played live in the browser (see docs/play.md).

:class:`PlayWorld` and :class:`PlaySession` are the game, free of any web code; :class:`PlayServer` serves it.
"""

from worldsim.play.server import Background, PlayServer, host_warning, serve_forever
from worldsim.play.session import Frame, PlaySession, PlayWorld, default_action_keys

__all__ = [
    "Background",
    "Frame",
    "PlaySession",
    "PlayServer",
    "PlayWorld",
    "default_action_keys",
    "host_warning",
    "serve_forever",
]
