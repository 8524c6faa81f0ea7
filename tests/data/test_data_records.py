"""Record → sample: `<image>` placement and label masking through the template, visual-token expansion,
truncation that never cuts visual tokens (counted), text-only samples with zero images."""

from __future__ import annotations

import pytest

from dc.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dc.data.collate import Collator
from dc.data.records import BadRecord, SampleBuilder
from dc.models.llms.templates.vicuna import VICUNA_SYSTEM

from data_helpers import image_bytes, qa

N = 16


def build(tokenizer, template, visual, record, n_images, max_length=256, overlength="truncate"):
    builder = SampleBuilder(tokenizer, template, visual, max_length, overlength)
    return builder(record, lambda rid, paths: [lambda: image_bytes(1) for _ in range(n_images)])


def test_image_moved_to_front_and_expanded(tokenizer, template, visual):
    rec = {"id": "a", "image": "x.jpg", "conversations": qa("What colour is it?", "red", False)}
    rec["conversations"][0]["value"] = "What colour is it?\n<image>"  # tag at the end of the turn
    s = build(tokenizer, template, visual, rec, 1)
    ids, labels = s["input_ids"].tolist(), s["labels"].tolist()
    first = ids.index(IMAGE_TOKEN_INDEX)
    # Independently: BOS, the system prompt and " USER: " come before the image, then N visual tokens.
    assert ids[:first] == [tokenizer.bos_token_id] + tokenizer.encode(
        VICUNA_SYSTEM + " USER: ", add_special_tokens=False
    )
    assert ids[first : first + N] == [IMAGE_TOKEN_INDEX] * N and ids.count(IMAGE_TOKEN_INDEX) == N
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == " red</s>"
    assert s["pixel_values"].shape == (1, 3, 32, 32) and not s["truncated"]


def test_text_only_sample_has_zero_images(tokenizer, template, visual):
    s = build(tokenizer, template, visual, {"id": "t", "conversations": qa("Hi?", "hello", False)}, 0)
    assert s["pixel_values"].shape == (0, 3, 32, 32) and IMAGE_TOKEN_INDEX not in s["input_ids"].tolist()
    assert Collator(0)([s])["pixel_values"] is None


def test_truncation_keeps_visual_tokens_and_is_counted(tokenizer, template, visual):
    conv = qa("What colour is it?", "red", True) + qa("Describe it." * 3, " ".join(["blue circle"] * 60), False)
    rec = {"id": "long", "image": "x.jpg", "conversations": conv}
    full = build(tokenizer, template, visual, rec, 1, max_length=1000)
    cut = build(tokenizer, template, visual, rec, 1, max_length=len(full["input_ids"]) - 20)
    assert cut["truncated"] and cut["input_ids"].tolist() == full["input_ids"].tolist()[:-20]
    assert cut["input_ids"].tolist().count(IMAGE_TOKEN_INDEX) == N
    assert cut["labels"].tolist() == full["labels"].tolist()[:-20]
    assert Collator(0)([cut, full])["truncated"] == 1
    with pytest.raises(BadRecord, match="too_long"):
        build(tokenizer, template, visual, rec, 1, max_length=len(full["input_ids"]) - 20, overlength="skip")


def test_cut_through_visual_tokens_is_too_long(tokenizer, template, visual):
    rec = {"id": "v", "image": "x.jpg", "conversations": qa("What?", "red", True)}
    full = build(tokenizer, template, visual, rec, 1)
    first = full["input_ids"].tolist().index(IMAGE_TOKEN_INDEX)
    with pytest.raises(BadRecord) as err:
        build(tokenizer, template, visual, rec, 1, max_length=first + N // 2)
    assert err.value.reason == "too_long" and err.value.record_id == "v"


def test_wrong_option_is_a_config_error(tokenizer, template, visual):
    with pytest.raises(ValueError, match="data.overlength"):
        SampleBuilder(tokenizer, template, visual, 128, overlength="cut")


def test_a_leading_gpt_turn_is_dropped_and_said_once(tokenizer, template, visual, caplog):
    """LLaVA drops a conversation's leading `gpt` turn; dc does the same and names the first such record."""
    builder = SampleBuilder(tokenizer, template, visual, 256)
    plain = {"id": "plain", "conversations": qa("Hi?", "hello", False)}

    def leading(rid: str, text: str) -> dict:
        return {"id": rid, "conversations": [{"from": "gpt", "value": text}, *plain["conversations"]]}

    with caplog.at_level("WARNING", logger="dc.data.records"):
        with pytest.raises(BadRecord, match="bad_conversation|no human turn"):  # refused, so not the one named
            builder({"id": "only-gpt", "conversations": [{"from": "gpt", "value": "Hi."}]}, lambda rid, paths: [])
        first = builder(leading("lead-1", "Welcome."), lambda rid, paths: [])
        second = builder(leading("lead-2", "Hello."), lambda rid, paths: [])
        reference = builder(plain, lambda rid, paths: [])
    assert first["input_ids"].tolist() == second["input_ids"].tolist() == reference["input_ids"].tolist()
    assert first["labels"].tolist() == reference["labels"].tolist()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'lead-1' starts with a 'gpt' turn: that turn is dropped" in warnings[0]
