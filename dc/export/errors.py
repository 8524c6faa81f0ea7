"""The one error type of `dc.export`: a model that a stock class cannot hold exactly, or an import that cannot be
mapped onto dc's configs without guessing.
"""

from __future__ import annotations


class ExportError(ValueError):
    """Raised instead of writing anything approximate; the message names the option and says why."""
