"""Config nodes as plain Python data: the one conversion the config (:mod:`worldsim.config`), the typed settings
(:mod:`worldsim.settings`), checkpoints and config.yaml use. A leaf module, so both may import it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from worldsim.errors import ConfigError


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_plain(node: Any) -> dict[str, Any]:
    """A config node (a DictConfig, or a mapping that may hold config nodes and tuples) as plain Python data, fully
    resolved: what checkpoints, config.yaml and the typed settings (:mod:`worldsim.settings`) are built from."""
    from omegaconf.errors import OmegaConfBaseException

    if not OmegaConf.is_config(node) and not isinstance(node, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {node!r}")
    try:
        node = node if OmegaConf.is_config(node) else OmegaConf.create(dict(node))
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)  # type: ignore[return-value]  # a mapping node's container is a dict
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        if "Missing mandatory value" in str(exc) and key:
            raise ConfigError(f"{key}: a value is required (set it with {key}=...)") from None
        raise ConfigError(f"config: {first_line(exc)}") from None
