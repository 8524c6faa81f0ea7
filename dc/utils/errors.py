"""The error a user fixes in their config or command line: the entry points print its message alone."""

from __future__ import annotations


class ConfigError(ValueError):
    """A value of the config (or of a command's arguments) that cannot work; the message names the key, the value
    and what is expected. Raised before anything is downloaded or read where it can be (`dc.pipeline.validate`),
    else where the value is used. The entry points print it as one line, without a traceback.
    """
