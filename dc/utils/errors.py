"""The error a user fixes in their config or command line: the entry points print its message alone."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A value of the config (or of a command's arguments) that cannot work; the message names the key, the value
    and what is expected. Raised before anything is downloaded or read where it can be (`dc.pipeline.validate`),
    else where the value is used. The entry points print it as one line, without a traceback.
    """


def config_number(value: Any, key: str, kind: type[int] | type[float] = float) -> Any:
    """`value` as `kind` (an int must be a whole number; booleans are not numbers).

    Raises:
        ConfigError: naming `key`, for anything else (`generation.temperature=hot`).
    """
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected {expected}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {expected}") from None
    if kind is int:
        if not number.is_integer():
            raise ConfigError(f"{key}={value!r}: expected {expected}")
        return int(number)
    return number
