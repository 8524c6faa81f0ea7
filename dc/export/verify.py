"""Checks run on every export before it is returned: the stock model must see and compute what dc does.

* **Prompt ids**: for probe messages (string content and image/text parts, image in front, in the middle and alone,
  and a two-turn conversation with replies), the exported chat template tokenized by the exported processor gives
  dc's ids with each image expanded to `image_seq_length` `<image>` ids.
* **Pixels**: `LlavaImageProcessor` equals dc's `ImagePreprocessor` exactly on non-square, square and greyscale
  probe images.
* **Numbers**: image features (`get_image_features`) and logits on the dc vocabulary match dc's within the export
  dtype's tolerance. These catch structural mistakes (a wrong index, order or block), which change outputs at
  order one; exactness itself is the algebra in `dc.export.projector`, tested in fp32 to 1e-5.

Probe images are deterministic (seeded), so an export is reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from dc.constants import IMAGE_TOKEN_INDEX
from dc.data.image import ImagePreprocessor
from dc.export.errors import ExportError
from dc.models.llms.templates import ChatTemplate
from dc.models.vlm import VLM
from dc.utils.instantiate import instantiate

PROBE_TEXTS = ("<image>\nWhat is in the image?", "Describe the picture <image> in one word.", "<image>")
_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # relative to the largest reference magnitude
_LOW_PRECISION_TOLERANCE = 5e-2


def probe_images(image_size: int) -> list[Image.Image]:
    """Deterministic probe images: wide, tall, square and greyscale, smaller and larger than the tower input."""
    gen = torch.Generator().manual_seed(0)
    sizes = [(image_size + image_size // 2 + 3, image_size // 2 + 1), (image_size // 3 + 2, image_size + 5),
             (image_size, image_size), (2 * image_size + 1, image_size + 7)]  # fmt: skip
    images = []
    for k, (w, h) in enumerate(sizes):
        pixels = torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()
        image = Image.fromarray(pixels, "RGB")
        images.append(image.convert("L") if k == len(sizes) - 1 else image)
    return images


def expand_image_ids(ids: list[int], image_id: int, count: int) -> list[int]:
    """Dc ids with each `IMAGE_TOKEN_INDEX` replaced by `count` copies of `image_id` (what a processor emits)."""
    out: list[int] = []
    for i in ids:
        out.extend([image_id] * count if i == IMAGE_TOKEN_INDEX else [i])
    return out


def _messages(text: str, parts: bool) -> list[dict[str, Any]]:
    if not parts:
        return [{"role": "user", "content": text}]
    before, _, after = text.partition("<image>")
    content = [{"type": "text", "text": before}, {"type": "image"}, {"type": "text", "text": after}]
    return [{"role": "user", "content": [c for c in content if c.get("text", True)]}]


def check_prompt_ids(vlm: VLM, processor: LlavaProcessor, template: ChatTemplate, image: Image.Image) -> None:
    """Exported chat template + processor ids == dc's template ids (see the module docstring)."""
    tokenizer = vlm.llm.tokenizer
    n = vlm.num_visual_tokens
    image_id = processor.image_token_id
    cases: list[tuple[str, list[dict[str, Any]], list[int], bool]] = []
    for text in PROBE_TEXTS:
        ids = template.prompt(text, tokenizer)
        for parts in (False, True):
            cases.append((f"prompt {text!r} (parts={parts})", _messages(text, parts), ids, True))
    conversation = [
        {"from": "human", "value": "<image>\nWhat is in the image?"},
        {"from": "gpt", "value": "A red square."},
        {"from": "human", "value": "And the colour of the circle?"},
        {"from": "gpt", "value": "Blue."},
    ]
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in conversation]
    cases.append(("two-turn conversation", messages, template.encode(conversation, tokenizer).input_ids, False))
    for name, msgs, dc_ids, generation in cases:
        expected = expand_image_ids(list(dc_ids), image_id, n)
        rendered = processor.apply_chat_template(msgs, add_generation_prompt=generation, tokenize=False)
        images = [image] if "<image>" in rendered else None
        got = processor(text=rendered, images=images, return_tensors="pt")["input_ids"][0].tolist()
        if got != expected:
            raise ExportError(
                f"chat template {template.name!r}: {name} renders as {rendered!r}, which the exported processor "
                f"tokenizes to ids that differ from dc's at position "
                f"{next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))}"
                f" (lengths {len(got)} vs {len(expected)})"
            )


def check_pixels(vlm: VLM, processor: LlavaProcessor, image_cfg: Any, image_aspect: str) -> list[torch.Tensor]:
    """LlavaImageProcessor pixels == dc's ImagePreprocessor pixels, exactly; returns dc's pixels of the probes."""
    dc_images = ImagePreprocessor(instantiate(image_cfg), aspect=image_aspect)
    pixels = []
    for k, image in enumerate(probe_images(vlm.encoder.layout.image_size)):
        ours = dc_images(image)
        theirs = processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        if ours.shape != theirs.shape or not torch.equal(ours, theirs):
            diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else "shape"
            raise ExportError(
                f"LlavaImageProcessor differs from dc's preprocessing (image_aspect={image_aspect}) on probe image "
                f"{k} ({image.size[0]}x{image.size[1]} {image.mode}): max |diff| {diff}"
            )
        pixels.append(ours)
    return pixels


def _close(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype) -> tuple[bool, float]:
    tol = _TOLERANCE.get(dtype, _LOW_PRECISION_TOLERANCE)
    ref = ours.double()
    diff = (ref - theirs.double()).abs().max().item()
    return diff <= tol * max(1.0, ref.abs().max().item()), diff


@torch.no_grad()
def check_outputs(
    vlm: VLM, model: LlavaForConditionalGeneration, processor: LlavaProcessor, template: ChatTemplate,
    pixels: torch.Tensor, vocab_size: int,
) -> None:  # fmt: skip
    """Image features and logits (dc vocabulary) of the stock model == dc's, within the dtype's tolerance."""
    dtype = model.dtype
    device = next(model.parameters()).device
    px = pixels.to(device)
    ours = vlm.encode_images(px.to(vlm.encoder.dtype))
    theirs = torch.stack(list(model.model.get_image_features(pixel_values=px.to(dtype)).pooler_output))
    ok, diff = _close(ours, theirs, dtype)
    if not ok:
        raise ExportError(f"image features of the exported model differ from dc's: max |diff| {diff:.3g}")
    ids = expand_image_ids(
        template.prompt("<image>\nWhat is in the image?", vlm.llm.tokenizer),
        processor.image_token_id,
        vlm.num_visual_tokens,
    )
    input_ids = torch.tensor([ids], device=device)
    mask = torch.ones_like(input_ids)
    dc_ids = input_ids.masked_fill(input_ids == processor.image_token_id, IMAGE_TOKEN_INDEX)
    logits_dc = vlm(input_ids=dc_ids, attention_mask=mask, pixel_values=px[:1]).logits
    logits_hf = model(input_ids=input_ids, attention_mask=mask, pixel_values=px[:1].to(dtype)).logits
    ok, diff = _close(logits_dc, logits_hf[..., :vocab_size], dtype)
    if not ok:
        raise ExportError(f"logits of the exported model differ from dc's: max |diff| {diff:.3g}")


def verify_processor(
    vlm: VLM, processor: LlavaProcessor, template: ChatTemplate, image_cfg: Any, image_aspect: str
) -> list[torch.Tensor]:
    """Pixels and prompt ids of `processor` (in memory or reloaded from disk) == dc's; returns dc's probe pixels."""
    pixels = check_pixels(vlm, processor, image_cfg, image_aspect)
    check_prompt_ids(vlm, processor, template, probe_images(vlm.encoder.layout.image_size)[0])
    return pixels


def verify_numbers(
    vlm: VLM,
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    template: ChatTemplate,
    pixels: list[torch.Tensor],
    *,
    vocab_size: int,
) -> None:
    """`check_outputs` with `vlm` in eval mode (its mode is restored)."""
    was_training = vlm.training
    vlm.eval()
    try:
        check_outputs(vlm, model, processor, template, torch.stack(pixels), vocab_size)
    finally:
        vlm.train(was_training)
