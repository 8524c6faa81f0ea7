"""The exported chat template: rendered text is the template's literal, and the exported processor tokenizes it to
dc's `template.prompt` / `encode` ids (images expanded), for vicuna_v1 (tiny byte-level tokenizer, Llama-2-style
SentencePiece with both prefix schemes) and llama_3 / llama_3_dc (Llama-3-style tokenizer that adds BOS)."""

from __future__ import annotations

import pytest
import torch

from dc.constants import IMAGE_TOKEN_INDEX
from dc.export.errors import ExportError
from dc.export.hf_llava import to_hf_llava
from dc.models.llms.templates.llama3 import LLAMA_3_SYSTEM
from dc.models.llms.templates.vicuna import VICUNA_SYSTEM, VicunaV1

from export_helpers import (
    QUESTIONS,
    llama2_tokenizer,
    llama3_tokenizer,
    probe_image,
    saved,
    tiny_vlm,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def expand(ids: list[int], image_id: int, n: int) -> list[int]:
    return [t for i in ids for t in ([image_id] * n if i == IMAGE_TOKEN_INDEX else [i])]


def exported(tmp_path, tokenizer=None, template: str = "vicuna_v1", encoder: str = "tiny_clip"):
    """A tiny VLM whose LLM uses `tokenizer` (saved and reloaded as dc does) and the exported processor."""
    overrides = [f"encoder={encoder}", "connector=sci", f"llm/template={template}"]
    if tokenizer is not None:
        overrides.append(f"llm.tokenizer={saved(tokenizer, tmp_path / 'tok')}")
    vlm, cfg = tiny_vlm(*overrides)
    return vlm, cfg


def assert_same_ids(vlm, processor, image) -> None:
    """Every probe prompt (string and parts content, image first / in the middle / alone) and a two-turn
    conversation: processor ids == dc ids, both through `processor(text=...)` and `apply_chat_template(tokenize)`."""
    tok, template, n = vlm.llm.tokenizer, vlm.llm.template, vlm.num_visual_tokens
    image_id = processor.image_token_id
    for user in [f"<image>\n{QUESTIONS[0]}", f"{QUESTIONS[1]} <image>", "<image>"]:
        expected = expand(template.prompt(user, tok), image_id, n)
        text = processor.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True)
        assert processor(text=text, images=[image])["input_ids"][0] == expected
        before, _, after = user.partition("<image>")
        parts = [{"type": "text", "text": before}, {"type": "image", "image": image}, {"type": "text", "text": after}]
        parts = [p for p in parts if p.get("text", True)]
        got = processor.apply_chat_template(
            [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0]
        assert list(got) == expected
    conversation = [
        {"from": "human", "value": f"{QUESTIONS[2]}\n<image>"},
        {"from": "gpt", "value": "A red square."},
        {"from": "human", "value": QUESTIONS[0]},
        {"from": "gpt", "value": "A red square."},
    ]
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in conversation]
    text = processor.apply_chat_template(messages, add_generation_prompt=False)
    expected = expand(template.encode(conversation, tok).input_ids, image_id, n)
    assert processor(text=text, images=[image])["input_ids"][0] == expected


def test_vicuna_tiny_tokenizer_renders_the_literal_with_bos(tmp_path):
    vlm, cfg = exported(tmp_path)
    _, processor = to_hf_llava(vlm, cfg.encoder.image)
    text = processor.apply_chat_template(
        [{"role": "user", "content": "What is this? <image>"}], add_generation_prompt=True
    )
    # The tiny tokenizer adds no BOS itself, so the template writes it.
    assert text == f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"
    assert_same_ids(vlm, processor, probe_image(30, 20, 0))


@pytest.mark.parametrize("legacy", [False, True])
def test_vicuna_llama2_tokenizer_both_prefix_schemes(tmp_path, legacy):
    """SentencePiece-style tokenizer that adds BOS: no literal BOS; after `<image>` dc (like LLaVA) tokenizes a fresh
    string ("▁" prefix), which prefix scheme "first" only gives with a space written after `<image>`."""
    vlm, cfg = exported(tmp_path, llama2_tokenizer(legacy))
    vlm.llm.tokenizer = llama2_tokenizer(legacy)  # the in-memory tokenizer keeps the legacy scheme a reload drops
    _, processor = to_hf_llava(vlm, cfg.encoder.image)
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nHi"}], add_generation_prompt=True)
    sep = "" if legacy else " "
    assert text == f"{VICUNA_SYSTEM} USER: <image>{sep}\nHi ASSISTANT:"
    assert_same_ids(vlm, processor, probe_image(20, 30, 1))


@pytest.mark.parametrize(("template", "role"), [("llama_3", "assistant"), ("llama_3_dc", "system")])
def test_llama3_templates(tmp_path, template, role):
    vlm, cfg = exported(tmp_path, llama3_tokenizer(), template=template, encoder="tiny_siglip")
    model, processor = to_hf_llava(vlm, cfg.encoder.image)
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nHi"}], add_generation_prompt=True)
    head = "<|start_header_id|>{}<|end_header_id|>\n\n".format
    # The tokenizer prepends <|begin_of_text|> itself, so the template does not write it (one BOS, not two).
    assert text == f"{head('system')}{LLAMA_3_SYSTEM}<|eot_id|>{head('user')}<image>\nHi<|eot_id|>{head(role)}"
    ids = processor(text=text, images=[probe_image(9, 9, 2)])["input_ids"][0]
    assert ids.count(vlm.llm.tokenizer.bos_token_id) == 1 and ids[0] == vlm.llm.tokenizer.bos_token_id
    assert_same_ids(vlm, processor, probe_image(40, 25, 3))
    tok = vlm.llm.tokenizer
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id]


def test_system_messages_are_refused_by_the_template(tmp_path):
    vlm, cfg = exported(tmp_path)
    _, processor = to_hf_llava(vlm, cfg.encoder.image)
    with pytest.raises(Exception, match="only user/assistant messages"):
        processor.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])


class VicunaNoBos(VicunaV1):
    """Vicuna text with Phi-2's BOS policy (never), to meet a tokenizer that adds BOS itself."""

    name = "vicuna_no_bos"
    bos = "never"


def test_prompt_without_bos_on_a_bos_adding_tokenizer_is_refused(tmp_path):
    vlm, cfg = exported(tmp_path, llama2_tokenizer(False))
    with pytest.raises(ExportError, match="builds prompts without BOS"):
        to_hf_llava(vlm, cfg.encoder.image, template=VicunaNoBos())
