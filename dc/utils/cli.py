"""Command-line entry points: errors whose message already says what to fix are printed alone, without a traceback."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

log = logging.getLogger("dc")


def report(text: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Print `text` as it is (stdout, or `stream`) and write it to the run's log files (Hydra's `<job>.log`) too,
    so the log keeps the results and the reason a run stopped; consoles get it once, without a log prefix.
    """
    print(text, file=stream or sys.stdout)
    record = log.makeRecord(log.name, level, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


@contextmanager
def errors_as_messages(errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Inside the block, one of `errors` prints `error: <message>` to stderr and exits with status 1.

    In a Hydra multirun (`-m`) the message is printed and the error re-raised instead: Hydra records it as that
    point's failure and runs the other points, then exits non-zero naming the first failed point (a `SystemExit`
    would end the whole sweep at the failed point).
    """
    try:
        yield
    except errors as err:
        report(f"error: {user_message(err)}", logging.ERROR, sys.stderr)
        if in_hydra_sweep():
            raise
        raise SystemExit(1) from None


def in_hydra_sweep() -> bool:
    """Whether this process is running a point of a Hydra multirun (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_message(err: BaseException) -> str:
    """The message of `err`. One re-raised by a DataLoader worker carries the worker's whole traceback (PyTorch
    builds it as "Caught <name> in DataLoader worker process <n>. Original Traceback ..."): its original message
    is kept, with where it was raised.
    """
    text, name = str(err), type(err).__name__
    caught = f"Caught {name} "
    if not text.startswith(caught) or "\nOriginal Traceback" not in text:
        return text
    where = text.split("\n", 1)[0][len(caught) :].rstrip(".")
    starts = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", text, re.M))
    if not starts:
        return text
    return f"{text[starts[-1].end() :].strip()} ({where})"
