"""publish_dir: a folder appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from dc.utils.files import publish_dir


def test_publishes_replaces_and_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "sub" / "data"
    with publish_dir(root) as tmp:
        assert not root.exists() and tmp.parent == root.parent
        (tmp / "a.txt").write_text("one")
    assert (root / "a.txt").read_text() == "one"
    with publish_dir(root) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in root.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in root.parent.iterdir()) == ["data"]  # no temp folder left


def test_failure_keeps_the_old_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "old.txt").write_text("kept")
    with pytest.raises(KeyboardInterrupt), publish_dir(root) as tmp:
        (tmp / "half.txt").write_text("x")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in root.iterdir()) == ["old.txt"]


def test_someone_else_finished_first(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with publish_dir(root, already_done=lambda: (root / "DONE").exists()) as tmp:
        (tmp / "mine.txt").write_text("mine")
        root.mkdir()  # another process publishes meanwhile
        (root / "DONE").write_text("theirs")
    assert sorted(p.name for p in root.iterdir()) == ["DONE"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
