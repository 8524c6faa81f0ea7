"""Command-line entry points: errors whose message already says what to fix are printed alone, without a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def raised_by_dc(err: BaseException) -> bool:
    """Whether `err` was raised by dc's own code (its innermost frame is in a `dc` module): dc raises a
    `ValueError` only with a message written for the user (the key, the value, what is expected).
    """
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return name == "dc" or name.startswith("dc.")


@contextmanager
def errors_as_messages(errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Inside the block, one of `errors`, or a `ValueError` raised by dc's own code, prints `error: <message>` to
    stderr and exits with status 1. `DC_TRACEBACK=1` shows the traceback of such a `ValueError` instead.
    """
    try:
        yield
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as err:
        if not raised_by_dc(err) or os.environ.get("DC_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"error: {err}\n(DC_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        raise SystemExit(1) from None
