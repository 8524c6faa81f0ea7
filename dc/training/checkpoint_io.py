"""Checkpoint files written where they belong and nowhere else.

Lightning's default writer serialises the whole checkpoint into memory and then writes it through an fsspec
transaction that stages a temporary file in `$TMPDIR`: a SIGKILL during the write leaves that file behind (tens of
GB at 7B stage 2), and the in-memory copy doubles the host memory a save needs. `DirectCheckpointIO` writes with
`torch.save` straight to the target's own folder: `StepCheckpoint` already writes to `<name>.partial` and renames
when complete; any other path is written to a hidden temporary name beside it and renamed. A killed write leaves at
most a `.partial` / hidden temporary file in the checkpoint folder, which `clean_partial_files` removes at the next
start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

PARTIAL = ".partial"


class DirectCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose `save_checkpoint` writes in place (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("DirectCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(PARTIAL):
            torch.save(checkpoint, path)
            return
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def clean_partial_files(folder: str | Path) -> list[Path]:
    """Remove the leftovers of a killed checkpoint write in `folder` (`*.partial`, `.*.tmp-*`); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [
        p for p in folder.iterdir() if p.name.endswith(PARTIAL) or (p.name.startswith(".") and ".tmp-" in p.name)
    ]
    for p in removed:
        if p.is_dir():
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        log.warning("removed %s (left by a checkpoint write that was killed)", p)
    return removed
