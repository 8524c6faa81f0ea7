"""Vision encoders that return exactly the hidden states (or group means) a connector asks for."""

from dc.models.encoders.base import EncoderLayout, Tap, VisionEncoder, collect_taps

__all__ = ["EncoderLayout", "Tap", "VisionEncoder", "collect_taps"]
