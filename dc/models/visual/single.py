"""One view per image at the encoder's resolution: `pad` (to a square with the mean colour; stage 2 and eval in the
reference) or `square` (the encoder's processor alone; the reference's stage 1).
"""

from __future__ import annotations

from typing import Any

from dc.models.visual.base import IMAGE, ImageMode, ViewTokens, VisualMeta
from dc.utils.errors import ConfigError

ASPECTS = ("pad", "square")


def check_aspect(value: Any, key: str, *, allowed_null: str | None = None) -> None:
    """`value` is an image aspect ("pad" or "square"); `allowed_null`: what null means, when null is allowed.

    Raises:
        ConfigError: naming `key`.
    """
    if value is None and allowed_null is not None:
        return
    if not isinstance(value, str) or value not in ASPECTS:
        also = f", or null ({allowed_null})" if allowed_null is not None else ""
        raise ConfigError(f"{key}={value!r}: expected one of {ASPECTS}{also}")


class SingleView(ImageMode):
    """Today's behaviour: each image is one view and gets the connector's tokens for the encoder's grid.

    Args:
        aspect: "pad" or "square" (`image.aspect`; by default the stage's `stage.image_aspect`).
    """

    size_dependent = False

    def __init__(self, aspect: str = "pad") -> None:
        check_aspect(aspect, "image.aspect")
        self.aspect = aspect

    def meta(self, size: tuple[int, int], view: ViewTokens, image_size: int) -> VisualMeta:
        return VisualMeta(views=1, tokens=view.total, kind=IMAGE)

    def __repr__(self) -> str:
        return f"SingleView(aspect={self.aspect!r})"
