"""Output folders written whole or not at all: `<out>.tmp` beside `out`, renamed into place when complete.

The staging folder holds a marker file (`STAGING_MARKER`) from the moment it is created, so a later run tells its
own leftover (an export or import that was killed) from a folder of the user's that happens to have the same name:
the leftover is removed and written again, anything else is refused, naming it. A failed write removes the staging
folder; the marker is removed once the folder is in place. Files get the modes the umask gives (`0666 & ~umask`), as
files written with `open()` do: safetensors writes its files 0600.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_MARKER = ".dc-staging"


def staging_path(out: Path) -> Path:
    """Where `out` is written before it is renamed into place: `<out>.tmp`."""
    return out.with_name(out.name + ".tmp")


def check_destination(out: Path, what: str, *, overwrite: bool = False, hint: str = "choose a new folder") -> None:
    """Refuse an existing `out` (unless `overwrite`) and a `<out>.tmp` that is not a leftover of dc.

    Args:
        out: the folder to write.
        what: how the command names it (`out_dir=...`, the OUT argument), for the messages.
        overwrite: an existing `out` will be replaced.
        hint: what to do about an existing `out`.

    Raises:
        FileExistsError: naming the path in the way.
    """
    if not overwrite and (out.exists() or out.is_symlink()):
        raise FileExistsError(f"{what}={out} exists; {hint}")
    tmp = staging_path(out)
    if tmp.is_symlink() or (tmp.exists() and not (tmp.is_dir() and (tmp / STAGING_MARKER).is_file())):
        raise FileExistsError(
            f"{tmp} exists and is not a leftover of dc (no {STAGING_MARKER} file in it); dc writes {out} there "
            f"first: move or delete it"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_modes(folder: Path) -> None:
    """Give every file under `folder` the mode `0666 & ~umask` (what `open()` gives a new file)."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


@contextmanager
def staged(out: str | Path, what: str, *, overwrite: bool = False, hint: str = "choose a new folder") -> Iterator[Path]:
    """Write `out` through `<out>.tmp`: yields the staging folder (created, with the marker); on success it is
    renamed to `out` (an existing `out` is replaced only when `overwrite`), on any error it is removed.

    Raises:
        FileExistsError: see `check_destination` (checked again just before the rename).
    """
    out = Path(out)
    check_destination(out, what, overwrite=overwrite, hint=hint)
    tmp = staging_path(out)
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover: `check_destination` found the marker in it
    tmp.mkdir(parents=True)
    (tmp / STAGING_MARKER).write_text("dc writes this folder and renames it when complete; safe to delete\n")
    try:
        yield tmp
        umask_modes(tmp)
        check_destination(out, what, overwrite=overwrite, hint=hint)
        _move_into_place(tmp, out, overwrite)
        (out / STAGING_MARKER).unlink()  # after the rename: a kill before it leaves a `.tmp` dc knows as its own
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if not (overwrite and (out.exists() or out.is_symlink())):
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    out.rename(old)  # the old folder stays whole until the new one is in place
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
