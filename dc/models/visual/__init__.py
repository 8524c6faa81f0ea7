"""Visual inputs: how one `<image>` (a single view, an AnyRes layout, a video) maps to encoder views and LLM tokens."""

from dc.models.visual.base import ImageMode, ViewTokens, VisualMeta
from dc.models.visual.single import SingleView

__all__ = ["ImageMode", "SingleView", "ViewTokens", "VisualMeta"]
