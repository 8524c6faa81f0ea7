"""Taking a trained model out of dc: exact export to stock Hugging Face Llava, import of the reference's checkpoints,
consolidation of sharded checkpoints and LoRA export.

hf_llava (`to_hf_llava`, `save_hf_llava`) · projector (connector → `vision_feature_layer` + projector weights) ·
vision (encoder → stock vision tower) · chat_template (dc template → Jinja) · verify (checks run on every export) ·
weights (assemble a stock model from a state dict) · reference (LLaVA-layout reference directories → dc config
choices + connector weights) · reference_io (reading them, writing their LLM) · reference_writer (tiny
reference-layout directories for tests) · consolidate (sharded FSDP checkpoint → one file) · lora (LoRA export).
See docs/export.md.
"""

from dc.export.errors import ExportError

__all__ = ["ExportError"]
