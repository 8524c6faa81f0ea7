"""Chat templates as objects, one module per family; chosen by config (`configs/llm/template/<name>.yaml`)."""

from dc.models.llms.templates.base import ChatTemplate, Encoded
from dc.models.llms.templates.conversation import GPT, HUMAN, normalize_image_placeholder, validate_conversation

__all__ = ["GPT", "HUMAN", "ChatTemplate", "Encoded", "normalize_image_placeholder", "validate_conversation"]
