"""The one error type of `dc.export`: a model that a stock class cannot hold exactly, or an import that cannot be
mapped onto dc's configs without guessing.
"""

from __future__ import annotations


class ExportError(ValueError):
    """Raised instead of writing anything approximate; the message names the option and says why."""


def export_user_errors() -> tuple[type[BaseException], ...]:
    """What the `dc.export` commands report as one line: refusals, missing or existing paths, unsafe checkpoints."""
    from dc.models.hub import PretrainedNotFoundError
    from dc.training.checkpoint import UnsafeCheckpointError
    from dc.utils.instantiate import UntrustedTargetError

    return (
        ExportError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        UnsafeCheckpointError,
        UntrustedTargetError,
        PretrainedNotFoundError,
    )
