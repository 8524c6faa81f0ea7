"""Folders that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def publish_dir(root: Path, *, already_done: Callable[[], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh temp folder beside `root`; when the block ends cleanly, it replaces `root` in one rename.

    A reader never sees a half-written `root`; an exception (or interrupt) in the block removes the temp folder and
    leaves `root` as it was. `already_done`: checked before publishing; true (another process finished the same
    folder first) drops the temp folder and keeps theirs.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    try:
        yield tmp
        if already_done is not None and already_done():
            shutil.rmtree(tmp)
            return
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
