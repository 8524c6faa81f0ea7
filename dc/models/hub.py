"""`from_pretrained` with errors that name the config key, and no retry storm when the hub cannot be reached.

A source that is not a local directory is a hub id. Before the first hub request the hub is probed once (a TCP
connection with a 3 s timeout); when it is unreachable, or `HF_HUB_OFFLINE=1` is set, every load is cache-only
(`local_files_only=True`), so a missing model fails at once with one line naming the config key, the id and how to
point the key at a local directory, instead of a long traceback after many retried requests.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")


class PretrainedNotFoundError(OSError):
    """A `pretrained` source that is neither a local directory nor a reachable (or cached) hub id."""


class PretrainedUnreadableError(PretrainedNotFoundError):
    """A local model directory whose files the library cannot read (a truncated weight file, a broken config)."""


def offline_requested() -> bool:
    """`HF_HUB_OFFLINE` set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (`HF_ENDPOINT`, default huggingface.co:443) opens within `timeout`."""
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def check_source(source: str, key: str) -> None:
    """Raise at once for a local-looking path that does not exist (before any hub request)."""
    path = Path(source).expanduser()
    if source.startswith(("/", "./", "../", "~")) and not path.exists():
        raise PretrainedNotFoundError(
            f"{key}={source}: no such directory (a local path must exist; a hub id looks like 'org/name')"
        )
    if path.is_file():
        hint = " (a dc checkpoint: model=dc ckpt_path=<file>)" if path.suffix == ".ckpt" else ""
        raise PretrainedNotFoundError(
            f"{key}={source}: a file, not a model directory (config.json and weights) or a hub id 'org/name'{hint}"
        )


def from_pretrained(load: Callable[..., T], source: str, key: str, **kwargs: Any) -> T:
    """`load(source, **kwargs)`, turning every failure to find `source` into one clear `PretrainedNotFoundError`."""
    check_source(source, key)
    local = Path(source).expanduser().exists()
    offline = not local and (offline_requested() or not hub_reachable())
    if offline:
        kwargs["local_files_only"] = True
    from safetensors import SafetensorError

    try:
        return load(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        if local:
            if not isinstance(exc, (OSError, SafetensorError, json.JSONDecodeError)):
                raise  # a setting passed to the loader (e.g. an attention kind) refused: its own message names it
            # a local directory whose files cannot be read (truncated weights, a broken config.json)
            lines = str(exc).strip().splitlines()
            raise PretrainedUnreadableError(
                f"{key}={source}: cannot read its files: {type(exc).__name__}: {lines[0] if lines else 'no message'}"
            ) from exc
        if offline_requested():
            state = "HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache"
        elif offline:
            state = "the hub is unreachable (no network) and it is not in the local Hugging Face cache"
        else:
            state = f"the hub has no such repo or refused it ({type(exc).__name__})"
        raise PretrainedNotFoundError(
            f"{key}={source}: cannot load it: {state}; download it where there is a network "
            f"(`huggingface-cli download {source} --local-dir <dir>`) and set {key}=<dir>"
        ) from None
