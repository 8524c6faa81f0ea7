"""dc → stock `LlavaForConditionalGeneration`: the saved directory, reloaded with plain `from_pretrained` /
`AutoProcessor`, computes what dc computes (fp32, 1e-5) for MLP, SCI and DCI on the CLIP and SigLIP layouts
(real depths and grids, tiny widths) and a timm OpenAI-CLIP tower; LoRA is merged into a copy; verification
catches a corrupted export."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoProcessor, LlavaForConditionalGeneration

from dc.constants import IMAGE_TOKEN_INDEX
from dc.data.image import ImagePreprocessor
from dc.export.errors import ExportError
from dc.export.hf_llava import save_hf_llava, to_hf_llava
from dc.export.verify import check_outputs, probe_images
from dc.training.lora import apply_lora
from dc.utils.instantiate import instantiate

from dc_testing import make_template
from export_helpers import QUESTIONS, probe_image, tiny_vlm

# (encoder, connector) -> (vision_feature_layer, strategy, image tokens, exported vision depth), from the spec:
# CLIP-L layout 24 blocks (final = index 23, CLS dropped, 3x3 grid); SigLIP 27 blocks (final = index 26, 7x7 grid).
CASES = {
    ("tiny_clip", "mlp"): (23, "default", 9, 23),
    ("tiny_clip", "sci"): ([23, 7, 15], "default", 9, 23),
    ("tiny_clip", "dci"): (list(range(24)), "default", 9, 23),
    ("tiny_siglip", "mlp"): (26, "full", 49, 26),
    ("tiny_siglip", "sci"): ([26, 7, 15], "full", 49, 26),
    ("tiny_siglip", "dci"): (list(range(27)), "full", 49, 26),
    ("tiny_timm", "dci"): (list(range(24)), "default", 16, 23),
}
IMAGES = [(37, 20), (15, 50), (48, 48)]  # wide, tall, square (w, h)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dc_inputs(vlm, question: str, image_id: int) -> tuple[list[int], list[int]]:
    """dc's prompt ids (one IMAGE_TOKEN_INDEX per visual token) and the same with the exported image id."""
    ids = vlm.llm.template.prompt(f"<image>\n{question}", vlm.llm.tokenizer)
    dc_ids = [t for i in ids for t in ([IMAGE_TOKEN_INDEX] * vlm.num_visual_tokens if i == IMAGE_TOKEN_INDEX else [i])]
    return dc_ids, [image_id if i == IMAGE_TOKEN_INDEX else i for i in dc_ids]


@pytest.mark.parametrize(("encoder", "connector"), sorted(CASES))
def test_exported_model_equals_dc(tmp_path, encoder, connector):
    vlm, cfg = tiny_vlm(f"encoder={encoder}", f"connector={connector}")
    out = save_hf_llava(vlm, cfg.encoder.image, tmp_path / "hf")
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    vocab = vlm.llm.model.get_input_embeddings().num_embeddings

    layer, strategy, tokens, depth = CASES[(encoder, connector)]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config["vision_feature_layer"] == layer
    assert config["vision_feature_select_strategy"] == strategy
    assert config["image_seq_length"] == tokens
    assert config["vision_config"]["num_hidden_layers"] == depth
    assert config["image_token_index"] == len(vlm.llm.tokenizer) == vocab  # a new id, one new row
    assert config["projector_hidden_act"] == "gelu" and config["multimodal_projector_bias"] is True
    assert "auto_map" not in config  # stock classes only, no remote code

    dc_images = ImagePreprocessor(instantiate(cfg.encoder.image), aspect="pad")
    stop = vlm.llm.template.stop_token_ids(vlm.llm.tokenizer)
    for k, (question, (w, h)) in enumerate(zip(QUESTIONS, IMAGES, strict=True)):
        image = probe_image(w, h, seed=k)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=text, images=[image], return_tensors="pt")
        pixels = dc_images(image)[None]
        assert torch.equal(inputs["pixel_values"], pixels)  # the processor's pixels are dc's, exactly
        dc_ids, hf_ids = dc_inputs(vlm, question, config["image_token_index"])
        assert inputs["input_ids"][0].tolist() == hf_ids

        ids = torch.tensor([dc_ids])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ours = vlm(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
            theirs = model(**inputs).logits
        assert theirs.shape[-1] == vocab + 1
        assert (ours - theirs[..., :vocab]).abs().max().item() < 1e-5
        # The added row is the mean row: its logit is the mean of the others, so never the greedy pick.
        torch.testing.assert_close(theirs[..., vocab], theirs[..., :vocab].mean(-1), rtol=0, atol=1e-4)

        ours_gen = vlm.generate(ids, mask, pixels, max_new_tokens=8, stop_token_ids=stop)[0].tolist()
        theirs_gen = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :].tolist()
        assert theirs_gen == ours_gen


def test_lora_is_merged_into_a_copy(tmp_path):
    vlm, cfg = tiny_vlm("encoder=tiny_siglip", "connector=dci")
    apply_lora(vlm.llm, OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0}))
    torch.manual_seed(1)
    with torch.no_grad():  # peft initialises B to zero (a no-op adapter); give the adapters an effect
        for name, p in vlm.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = {k: v.clone() for k, v in vlm.llm.model.state_dict().items()}
    out = save_hf_llava(vlm, cfg.encoder.image, tmp_path / "hf")
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert not any("lora" in k for k in model.state_dict())

    assert type(vlm.llm.model).__name__ == "PeftModelForCausalLM"  # the caller's model is untouched
    after = vlm.llm.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    pixels = torch.stack([t for t in probe_images_tensor(cfg)])[:1]
    dc_ids, hf_ids = dc_inputs(vlm, QUESTIONS[0], model.config.image_token_index)
    with torch.no_grad():
        ours = vlm(
            input_ids=torch.tensor([dc_ids]), attention_mask=torch.ones(1, len(dc_ids)), pixel_values=pixels
        ).logits
        theirs = model(input_ids=torch.tensor([hf_ids]), pixel_values=pixels).logits
    assert (ours - theirs[..., : ours.shape[-1]]).abs().max().item() < 1e-5


def probe_images_tensor(cfg) -> list[torch.Tensor]:
    dc_images = ImagePreprocessor(instantiate(cfg.encoder.image), aspect="pad")
    return [dc_images(probe_image(30, 19, seed=3)), dc_images(probe_image(19, 30, seed=4))]


def test_verification_catches_a_wrong_block_order():
    """Swapping the blocks of index 0 and 23 of the expanded Linear (a wrong order) must fail the export check.

    (Blocks within one group are equal, W_group / 12, so only a swap across taps changes anything.)"""
    vlm, cfg = tiny_vlm("encoder=tiny_clip", "connector=dci")
    model, processor = to_hf_llava(vlm, cfg.encoder.image)
    d = vlm.encoder.layout.hidden_size
    with torch.no_grad():
        w = model.model.multi_modal_projector.linear_1.weight
        first, last = w[:, :d].clone(), w[:, 23 * d : 24 * d].clone()
        w[:, :d], w[:, 23 * d : 24 * d] = last, first
    pixels = torch.stack(probe_images_tensor(cfg))
    with pytest.raises(ExportError, match="image features of the exported model differ"):
        check_outputs(vlm, model, processor, vlm.llm.template, pixels, vocab_size=len(vlm.llm.tokenizer))


def test_stage1_export_square_images_plain_template():
    """A stage-1 model: `image_aspect="square"` (no padding, the encoder processor alone: CLIP centre-crops) and
    the plain template (the image alone; the question is dropped, as in stage-1 captioning)."""
    vlm, cfg = tiny_vlm("encoder=tiny_clip", "connector=mlp")
    _, processor = to_hf_llava(vlm, cfg.encoder.image, image_aspect="square", template=make_template("plain"))
    prompt = [{"role": "user", "content": "<image>\nDescribe it."}]
    assert processor.apply_chat_template(prompt, add_generation_prompt=True) == "<s><image>"
    image = probe_image(70, 30, seed=5)
    ours = ImagePreprocessor(instantiate(cfg.encoder.image), aspect="square")(image)
    assert torch.equal(processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0], ours)
    assert len(probe_images(48)) == 4


def test_tied_head_and_spare_embedding_rows(tmp_path):
    """An LLM with tied embeddings and more rows than tokens: `<image>` takes the first spare row (no resize, no
    suppressed token), the head stays tied, and every one of dc's logit columns matches."""
    vlm, cfg = tiny_vlm(
        "encoder=tiny_clip", "connector=sci", "llm.config.tie_word_embeddings=true", "+llm.config.vocab_size=480"
    )
    out = save_hf_llava(vlm, cfg.encoder.image, tmp_path / "hf")
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert model.config.image_token_index == len(vlm.llm.tokenizer) == 469
    assert model.config.text_config.vocab_size == 480
    assert model.generation_config.suppress_tokens is None
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    pixels = probe_images_tensor(cfg)[0][None]
    dc_ids, hf_ids = dc_inputs(vlm, QUESTIONS[1], model.config.image_token_index)
    with torch.no_grad():
        ours = vlm(
            input_ids=torch.tensor([dc_ids]), attention_mask=torch.ones(1, len(dc_ids)), pixel_values=pixels
        ).logits
        theirs = model(input_ids=torch.tensor([hf_ids]), pixel_values=pixels).logits
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max().item() < 1e-5


def test_bfloat16_export_passes_its_checks():
    vlm, cfg = tiny_vlm("encoder=tiny_siglip", "connector=dci")
    model, _ = to_hf_llava(vlm.to(torch.bfloat16), cfg.encoder.image)  # raises if any check fails
    assert model.dtype == torch.bfloat16
    assert model.model.multi_modal_projector.linear_1.weight.dtype == torch.bfloat16
