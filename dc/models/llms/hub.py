"""`from_pretrained` with errors that name the config key, and no retry storm when the hub cannot be reached.

Offline (no network, or `HF_HUB_OFFLINE=1`) a hub id that is not in the local cache fails at once with one line
naming the config key, the id and how to point the key at a local directory, instead of a long traceback after
many retried requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class PretrainedNotFoundError(OSError):
    """A `pretrained` source that is neither a local directory nor a reachable (or cached) hub id."""


def check_source(source: str, key: str) -> None:
    """Raise at once for a local-looking path that does not exist (before any hub request)."""
    path = Path(source).expanduser()
    if source.startswith(("/", "./", "../", "~")) and not path.exists():
        raise PretrainedNotFoundError(
            f"{key}={source}: no such directory (a local path must exist; a hub id looks like 'org/name')"
        )


def from_pretrained(load: Callable[..., T], source: str, key: str, **kwargs: Any) -> T:
    """`load(source, **kwargs)`, turning every failure to find `source` into one clear `PretrainedNotFoundError`."""
    check_source(source, key)
    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(source).expanduser().exists():
            raise  # a local directory that exists but is broken: the library's own error says what is wrong
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        how = (
            f"download it where you have a network (`huggingface-cli download {source} --local-dir <dir>`) and set "
            f"{key}=<dir>"
        )
        state = (
            "HF_HUB_OFFLINE=1 and it is not in the local cache"
            if offline
            else "the hub could not be reached or has no such repo"
        )
        raise PretrainedNotFoundError(f"{key}={source}: cannot load it ({state}); {how}") from exc
