"""worldsim: world models and planning with Diffusion Forcing (Chen et al., 2024, arXiv 2407.01392)."""

import pluggy

from worldsim.errors import WorldsimError

__version__ = "0.1.0"

#: Marker for hook implementations in plugins: ``@worldsim.hookimpl``.
hookimpl = pluggy.HookimplMarker("worldsim")

__all__ = ["hookimpl", "WorldsimError", "__version__"]
