"""``worldsim data NAME [--KEY VALUE ...] [--out FILE]``: make a registered data set's file.

The options are the data set's settings (``configs/dataset/NAME.yaml``, or its factory's keyword defaults): each
``KEY`` is ``--KEY`` with dashes for underscores (``path`` is ``--out``), typed by its default (a flag for a bool,
``N`` values for a list of ``N``); options left out keep their defaults. Errors name the option instead of
``dataset.KEY``. The data set's ``cli_options(registry)`` adds help texts and other option names; a setting it
describes that the defaults lack (one of a component's, as a video task's) is an option too.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from worldsim.data.sources import build_dataset, dataset_settings
from worldsim.errors import ConfigError, WorldsimError


def _scalar(text: str) -> Any:
    """An option value whose setting defaults to None: an int, a float, or the text as it is."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _option_type(default: Any):
    if isinstance(default, bool) or default is None:
        return _scalar
    return type(default) if isinstance(default, (int, float, str)) else _scalar


def option_names(settings: dict[str, Any], aliases: dict[str, str]) -> dict[str, list[str]]:
    """setting -> its option names (the declared other names first: errors use the first)."""
    names = {key: ["--out" if key == "path" else "--" + key.replace("_", "-")] for key in settings}
    for alias, key in aliases.items():
        if key in names:
            names[key].insert(0, alias)
    return names


def data_parser(name: str, registry) -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    """The parser of ``worldsim data NAME`` and the option names of each setting."""
    factory = registry.get("dataset", name)  # unknown names fail with suggestions
    settings = dataset_settings({"name": name}, registry)
    settings.pop("name")
    cli_options = getattr(factory, "cli_options", None)
    helps, aliases = cli_options(registry) if callable(cli_options) else ({}, {})
    extra = [key for key in helps if key not in settings]  # settings of the data set's components (their defaults)
    settings.update(dict.fromkeys(extra))
    names = option_names(settings, dict(aliases))
    parser = argparse.ArgumentParser(
        prog=f"worldsim data {name}",
        description=f"Make the {name} data set's file. Options left out keep the data set's defaults "
        f"(configs/dataset/{name}.yaml, or its factory's).",
    )
    for key, default in settings.items():
        text = helps.get(key, f"dataset.{key}")
        text += "" if "default" in text or key in extra else f" (default: {default!r})"
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": text}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, (list, tuple)):
            kwargs.update(nargs=len(default) or "*", type=_option_type(default[0] if default else None))
            kwargs["metavar"] = ("LO", "HI") if len(default) == 2 else key.upper()
        else:
            kwargs.update(type=_option_type(default), metavar=key.upper())
        parser.add_argument(*names[key], **kwargs)
    return parser, names


def _named_by_options(exc: WorldsimError, names: dict[str, list[str]]) -> WorldsimError:
    """``exc`` with each ``dataset.KEY`` of its message named by the option that sets it."""

    def option(match: re.Match) -> str:
        return names[match.group(1)][0] if match.group(1) in names else match.group(0)

    return type(exc)(re.sub(r"\bdataset\.(\w+)", option, str(exc)))


def build_for_cli(name: str, argv: Sequence[str], registry):
    """The data set of ``worldsim data NAME ARGV``, checked, with a ``generate`` method and a ``path``."""
    parser, names = data_parser(name, registry)
    given = vars(parser.parse_args(list(argv)))
    try:
        dataset = build_dataset({"name": name, **given}, registry)
    except WorldsimError as exc:
        raise _named_by_options(exc, names) from None
    if not callable(getattr(dataset, "generate", None)) or getattr(dataset, "path", None) is None:
        raise ConfigError(f"worldsim data {name}: the {name} data set does not make its own file")
    return dataset, names


def generate(dataset, names: dict[str, list[str]]) -> str:
    """``dataset.generate()``, its errors named by the options."""
    try:
        return str(dataset.generate(progress=True))
    except WorldsimError as exc:
        raise _named_by_options(exc, names) from None
