"""Crash-safe, resumable JSONL answer files.

One answer per line: ``{"id": ..., "text": ..., **extra}``. The writer appends and flushes each line
as soon as it is produced, so a killed run loses at most the line being written. That partial last
line is ignored by the reader and cut off by the next writer before it appends (otherwise the next
record would be glued onto the fragment and both would be lost). A re-run asks
:func:`answered_ids` which records are already done and skips them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


def truncate_partial_tail(path: Path) -> int:
    """Cut a trailing line that lacks its newline (a write interrupted by a crash).

    Returns:
        The number of bytes removed.
    """
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Scan backwards in blocks for the last complete line's newline.
        pos, block = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx != -1:
                keep = start + idx + 1
                break
            pos = start
        f.truncate(keep)
        return size - keep


class AnswerWriter:
    """Append-only JSONL writer that flushes every line.

    Use as a context manager::

        with AnswerWriter(path) as w:
            for rec in todo:
                w.write(rec.id, generate(rec))

    One writer per file: with several ranks, give each rank its own file and merge the readers' maps.

    Args:
        path: Answer file; created (with parent folders) if needed.
        fsync: Also ``os.fsync`` after each line (survives power loss, slower on network disks).
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            cut = truncate_partial_tail(self.path)
            if cut:
                log.warning("dropped a partial last line (%d bytes) from %s", cut, self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, id: str, text: str, **extra: Any) -> None:
        """Append one answer and flush it to the OS.

        Args:
            id: The record id.
            text: Raw model output.
            **extra: Additional JSON-serialisable fields (prompt, model name, timings, ...).
        """
        line = json.dumps({"id": str(id), "text": text, **extra}, ensure_ascii=False)
        # One write call per line keeps the line contiguous even if the process dies mid-way.
        self._f.write(line + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the file."""
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_answer_records(path: str | Path) -> list[dict[str, Any]]:
    """Read all complete answer lines.

    Unparsable lines (the partial last line of a killed run, or damage elsewhere) are skipped with
    a warning. Lines written by LLaVA's scripts (``question_id`` instead of ``id``) are accepted.

    Returns:
        The decoded objects, in file order, each with a string ``id``.
    """
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: ignoring an incomplete/unparsable answer line", path, line_no)
                continue
            if not isinstance(obj, dict):
                continue
            rid = obj.get("id", obj.get("question_id"))
            if rid is None or not isinstance(obj.get("text"), str):
                log.warning("%s:%d: answer line without id/text ignored", path, line_no)
                continue
            obj["id"] = str(rid)
            out.append(obj)
    return out


def read_answers(path: str | Path) -> dict[str, str]:
    """Map ``id -> text`` (a later line for the same id wins)."""
    return {obj["id"]: obj["text"] for obj in read_answer_records(path)}


def answered_ids(path: str | Path) -> set[str]:
    """Ids already answered in ``path`` (empty if it does not exist): the resume set."""
    return {obj["id"] for obj in read_answer_records(path)}
