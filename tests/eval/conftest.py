"""Fixtures for the benchmark tests: write tiny files in the benchmarks' real formats under tmp_path."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest


class FileMaker:
    """Writes fixture files below one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def jsonl(self, rel: str, rows: Iterable[dict[str, Any]], raw_lines: Iterable[str] = ()) -> Path:
        """JSONL file; ``raw_lines`` are appended verbatim (to plant malformed lines)."""
        p = self.path(rel)
        lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(raw_lines)
        p.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        return p

    def json(self, rel: str, obj: Any) -> Path:
        p = self.path(rel)
        p.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
        return p

    def text(self, rel: str, text: str) -> Path:
        p = self.path(rel)
        p.write_text(text, encoding="utf-8")
        return p

    def image(self, rel: str) -> Path:
        """A stand-in image file (loaders only check that it exists)."""
        p = self.path(rel)
        p.write_bytes(b"\x89PNG\r\n\x1a\nfake")
        return p


@pytest.fixture
def files(tmp_path: Path) -> FileMaker:
    """A :class:`FileMaker` rooted at ``tmp_path``."""
    return FileMaker(tmp_path)
