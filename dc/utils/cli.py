"""Command-line entry points: errors whose message already says what to fix are printed alone, without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def errors_as_messages(errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Inside the block, one of `errors` prints `error: <message>` to stderr and exits with status 1."""
    try:
        yield
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
