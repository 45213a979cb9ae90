"""User-facing errors, and the integer check every config field uses.

Anything raised as a :class:`WorldsimError` is bad input (a config, a file, a plugin name, a shape):
the CLI prints its message as one line and exits with code 2. Other exceptions are bugs and keep
their traceback.
"""

import numbers


class WorldsimError(Exception):
    """Bad input; the message names what is wrong and what was expected."""


class ConfigError(WorldsimError):
    """A config value, override or composition problem."""


class PluginError(WorldsimError):
    """An unknown, duplicate or broken plugin component."""


class DataError(WorldsimError):
    """A data set or file that cannot be used (missing, malformed, NaN)."""


class CheckpointError(WorldsimError):
    """A checkpoint that is missing, corrupt or incompatible."""


class TrainingDiverged(WorldsimError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def check_int(field: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer (not a bool) >= ``minimum``; else a ConfigError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{field}: got {value!r}; expected {wanted}")
    return int(value)
