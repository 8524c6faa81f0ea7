"""Output folders written through `<out>.tmp` (`dc.export.staging`): renamed when complete, removed on failure, a
leftover of dc replaced, a user's folder of that name refused and kept, `overwrite` losing nothing before the new
folder is complete, files with the umask's modes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from safetensors.torch import save_file

from dc.export.staging import STAGING_MARKER, staged, staging_path


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_complete_folder_is_renamed_into_place_with_umask_modes(tmp_path: Path, umask_027) -> None:
    import torch

    out = tmp_path / "a" / "out"
    with staged(out, "out_dir") as tmp:
        assert tmp == tmp_path / "a" / "out.tmp" and (tmp / STAGING_MARKER).is_file()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
        save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")  # safetensors writes 0600
        assert not out.exists()
    assert sorted(p.name for p in out.rglob("*")) == ["config.json", "model.safetensors", "sub"]
    assert not staging_path(out).exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert modes == {"config.json": 0o640, "model.safetensors": 0o640}  # 0666 & ~027, as open() gives


def test_failure_removes_the_staging_folder_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), staged(out, "out_dir") as tmp:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and not staging_path(out).exists()


def test_a_users_folder_named_like_the_staging_folder_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    staging_path(out).mkdir()
    (staging_path(out) / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=rf"{staging_path(out)} exists and is not a leftover of dc"):
        with staged(out, "out_dir"):
            pytest.fail("must not start writing")
    assert _tree(staging_path(out)) == {"notes.txt": "mine"} and not out.exists()
    staging_path(out).joinpath("notes.txt").unlink()
    staging_path(out).rmdir()
    staging_path(out).write_text("a file of that name")  # a file is refused as well
    with pytest.raises(FileExistsError, match="is not a leftover of dc"), staged(out, "out_dir"):
        pass
    assert staging_path(out).read_text() == "a file of that name"


def test_our_own_leftover_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    leftover = staging_path(out)
    leftover.mkdir()
    (leftover / STAGING_MARKER).write_text("")
    (leftover / "model.safetensors").write_text("half written by a killed run")
    with staged(out, "out_dir") as tmp:
        assert sorted(p.name for p in tmp.iterdir()) == [STAGING_MARKER]
        (tmp / "config.json").write_text("new")
    assert _tree(out) == {"config.json": "new"}


def test_existing_destination_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match=rf"^OUT={out} exists; pass --overwrite$"):
        with staged(out, "OUT", hint="pass --overwrite"):
            pytest.fail("must not start writing")
    with pytest.raises(RuntimeError), staged(out, "OUT", overwrite=True) as tmp:  # a failed overwrite loses nothing
        (tmp / "new.txt").write_text("new")
        raise RuntimeError
    assert _tree(out) == {"old.txt": "old"}
    with staged(out, "OUT", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _tree(out) == {"new.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or replaced folder left beside it
