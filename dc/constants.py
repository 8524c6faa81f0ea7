"""Sentinel ids shared by data, model and evaluation code (LLaVA's conventions)."""

IGNORE_INDEX = -100
"""Label value that the loss ignores (prompt, padding and visual positions)."""

IMAGE_TOKEN_INDEX = -200
"""Placeholder id for one visual token in `input_ids`; the collate expands one `<image>` into N of them."""

IMAGE_PLACEHOLDER = "<image>"
"""The placeholder string in LLaVA conversations."""
