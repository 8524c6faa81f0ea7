"""The one error type of `dc.export`: a model that a stock class cannot hold exactly, or an import that cannot be
mapped onto dc's configs without guessing.
"""

from __future__ import annotations


class ExportError(ValueError):
    """Raised instead of writing anything approximate; the message names the option and says why."""


def export_user_errors() -> tuple[type[BaseException], ...]:
    """What the `dc.export` commands report as one line: refusals, bad options, missing or existing paths, files
    that are not (safe) checkpoints. `dc.pipeline.user_errors` minus what no export meets (data, resume, answers).
    """
    from dc.models.hub import PretrainedNotFoundError
    from dc.training.checkpoint import NotACheckpointError, UnsafeCheckpointError
    from dc.utils.errors import ConfigError
    from dc.utils.instantiate import UntrustedTargetError

    return (
        ExportError,
        ConfigError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        NotACheckpointError,
        UnsafeCheckpointError,
        UntrustedTargetError,
        PretrainedNotFoundError,
    )
