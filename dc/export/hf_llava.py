"""Export a dc `VLM` to a stock Hugging Face `LlavaForConditionalGeneration` + `LlavaProcessor` (no remote code).

The export is exact or refused: the vision tower and projector follow `dc.export.vision` / `dc.export.projector`,
the LLM's weights are copied unchanged (LoRA merged into a *copy* first), and `<image>` becomes one added token:

* **New token row.** When `<image>` needs a new id beyond the LLM's embedding rows, the input embedding and the
  output head grow by one row, set to the mean of the existing rows (LLaVA's own rule for added tokens). The input
  row is never read (image positions are overwritten by visual tokens); the output row gives the new token the
  mean of the other logits, which is below their maximum, so greedy decoding never picks it, and
  `generation_config.suppress_tokens` removes it from sampling too. dc never had that column, so logits are
  compared on the original vocabulary.
* **Stopping.** `generation_config.eos_token_id` is dc's template stop list (Llama-3: `<|eot_id|>` and EOS).
* **Processor.** `LlavaImageProcessor(do_pad=True)` with the encoder's resize / crop / normalisation is dc's
  pad-to-square with the mean colour followed by the encoder's processor; the chat template is
  `dc.export.chat_template`'s rendering of dc's template, set on both the processor and the tokenizer (lmms-eval's
  `llava_hf` reads the tokenizer's).

`to_hf_llava` checks all of this on probe inputs before returning (`dc.export.verify`) and raises `ExportError`
on any difference. Future image modes (AnyRes with DC, video aggregation) are refused through `image_mode`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tokenizers import AddedToken
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SiglipImageProcessor,
)

from dc.constants import IMAGE_PLACEHOLDER
from dc.export.chat_template import chat_template_jinja, load_template
from dc.export.errors import ExportError
from dc.export.projector import connector_blockers, export_projector, select_strategy
from dc.export.staging import check_destination, staged
from dc.export.verify import verify_numbers, verify_processor
from dc.export.vision import export_vision_tower
from dc.export.weights import assemble
from dc.models.encoders.dual import DualEncoder
from dc.models.llms.templates import ChatTemplate
from dc.models.visual.single import check_aspect
from dc.models.vlm import VLM
from dc.utils.instantiate import instantiate

IMAGE_MODES = ("single", "anyres", "video")
_PROCESSOR_KEYS = (
    "do_resize", "size", "resample", "crop_size", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
    "image_std", "do_convert_rgb",
)  # fmt: skip


def export_blockers(vlm: VLM, *, image_mode: str = "single") -> list[str]:
    """Every reason `vlm` has no exact stock-Llava form (empty when it exports); nothing is copied.

    Args:
        vlm: the model.
        image_mode: how images reach the model: "single" (one image at the encoder's resolution, the only mode a
            stock LlavaForConditionalGeneration has), "anyres" or "video" (refused; the hook for the lead's
            AnyRes-with-DC and video aggregation).
    """
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode={image_mode!r}: expected one of {IMAGE_MODES}")
    reasons = connector_blockers(vlm.connector)
    if isinstance(vlm.encoder, DualEncoder) or getattr(vlm.connector, "mining", None) is not None:
        reasons.append(
            f"encoder '{vlm.encoder.layout.name}' is Mini-Gemini's dual tower (a high-resolution ConvNeXt aux map "
            f"mined by every visual token before the projector); LlavaForConditionalGeneration has one vision tower "
            f"and no patch-info mining, so no stock class reproduces it"
        )
    if image_mode == "anyres":
        reasons.append(
            "image_mode=anyres: LlavaForConditionalGeneration sees one image at the tower's resolution; AnyRes "
            "tiles with a Dense Connector need LlavaNext-style tiling with DC fusion, which no stock class has"
        )
    if image_mode == "video":
        reasons.append("image_mode=video: dc's temporal aggregation of frame tokens has no stock Llava equivalent")
    head = vlm.llm.model.get_output_embeddings()
    if head is not None and getattr(head, "bias", None) is not None:
        reasons.append(
            f"the LLM ({type(vlm.llm.model).__name__}) has a bias on its output head; LlavaForConditionalGeneration's "
            f"lm_head has none (e.g. Phi-2 cannot be exported)"
        )
    return reasons


def llava_image_processor(image_cfg: Any, image_aspect: str = "pad") -> LlavaImageProcessor:
    """The `LlavaImageProcessor` equal to dc's `ImagePreprocessor(instantiate(image_cfg), image_aspect)`.

    Args:
        image_cfg: the encoder config's `image` node (`_target_` CLIPImageProcessor or SiglipImageProcessor).
        image_aspect: "pad" (pad to a square with the mean colour, as in stage 2 and evaluation) or "square".
    """
    check_aspect(image_aspect, "image_aspect")
    source = instantiate(image_cfg)
    if type(source) not in (CLIPImageProcessor, SiglipImageProcessor):
        raise ExportError(
            f"encoder image processor {type(source).__name__}: only CLIPImageProcessor and SiglipImageProcessor "
            f"are known to equal LlavaImageProcessor's resize -> crop -> normalise"
        )
    values = source.to_dict()
    kwargs = {k: values[k] for k in _PROCESSOR_KEYS if k in values}
    # SigLIP resizes straight to a square and has no crop; LlavaImageProcessor crops unless told not to.
    kwargs["do_center_crop"] = bool(values.get("do_center_crop"))
    if not kwargs["do_center_crop"]:
        kwargs.pop("crop_size", None)
    return LlavaImageProcessor(do_pad=image_aspect == "pad", **kwargs)


def _plain_causal_lm(vlm: VLM) -> PreTrainedModel:
    """The LLM as a plain HF causal LM: a merged copy when it carries LoRA adapters, else the model itself."""
    model = vlm.llm.model
    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def _chat_template(vlm: VLM, template: ChatTemplate | str | None) -> ChatTemplate:
    """`template` as an object: a name is built from `configs/llm/template/<name>.yaml`; None is the LLM's own."""
    if template is None:
        return vlm.llm.template
    return load_template(template) if isinstance(template, str) else template


def _tokenizer_with_image(tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedTokenizerBase, int]:
    """A copy of `tokenizer` holding `<image>` as an added special token, and its id."""
    tok = copy.deepcopy(tokenizer)
    if IMAGE_PLACEHOLDER not in tok.get_vocab():
        tok.add_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)], special_tokens=True)
    ids = list(tok.encode(IMAGE_PLACEHOLDER, add_special_tokens=False))
    if len(ids) != 1:
        raise ExportError(f"tokenizer encodes {IMAGE_PLACEHOLDER!r} as {ids}, not as one token")
    return tok, ids[0]


def _llm_state(lm: PreTrainedModel, rows: int) -> dict[str, torch.Tensor]:
    """The causal LM's weights under Llava's names, embedding and head grown to `rows` with mean rows."""
    prefix = lm.base_model_prefix
    head = lm.get_output_embeddings()
    head_name = next(name for name, module in lm.named_modules() if module is head)
    state: dict[str, torch.Tensor] = {}
    for key, value in lm.state_dict().items():
        if key.startswith(prefix + "."):
            state["model.language_model." + key[len(prefix) + 1 :]] = value
        elif key == head_name + ".weight":
            state["lm_head.weight"] = value
        else:
            raise ExportError(f"LLM weight {key!r} is outside {prefix!r} and the output head; no Llava name for it")
    embed_key = (
        "model.language_model."
        + next(name for name, module in getattr(lm, prefix).named_modules() if module is lm.get_input_embeddings())
        + ".weight"
    )
    for key in (embed_key, "lm_head.weight"):
        weight = state[key]
        extra = rows - weight.shape[0]
        if extra > 0:
            mean = weight.detach().to(torch.float64).mean(0, keepdim=True).to(weight.dtype)
            state[key] = torch.cat([weight.detach(), mean.expand(extra, -1)])
    return state


def to_hf_llava(
    vlm: VLM,
    image_cfg: Any,
    *,
    template: ChatTemplate | str | None = None,
    dtype: torch.dtype | None = None,
    image_aspect: str = "pad",
    image_mode: str = "single",
    verify: bool = True,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The exact stock-Hugging-Face form of `vlm` (the caller's model is never modified).

    Args:
        vlm: a dc VLM (its LLM may be a peft `PeftModel`: a merged copy is exported).
        image_cfg: the encoder config's `image` node (`cfg.encoder.image`).
        template: chat template: a name of `configs/llm/template/` or a `ChatTemplate`; defaults to the LLM's own.
        dtype: parameter dtype of the export; defaults to the LLM's.
        image_aspect: the image preprocessing the model expects: "pad" (stage 2 / evaluation) or "square".
        image_mode: "single"; "anyres" and "video" are refused (see `export_blockers`).
        verify: check prompt ids, pixels, image features and logits on probe inputs (`dc.export.verify`).

    Returns:
        (model, processor), the model in eval mode on the LLM's device.

    Raises:
        ExportError: the model (or template / tokenizer behaviour) has no exact stock form, or verification failed.
    """
    reasons = export_blockers(vlm, image_mode=image_mode)
    if reasons:
        raise ExportError("cannot export exactly to LlavaForConditionalGeneration:\n- " + "\n- ".join(reasons))
    chat = _chat_template(vlm, template)
    strategy = select_strategy(vlm.encoder.layout)
    # Cheap checks first: the processor (pixels, chat template, prompt ids) before any weight is copied.
    tokenizer, image_id = _tokenizer_with_image(vlm.llm.tokenizer)
    jinja = chat_template_jinja(chat, tokenizer)
    tokenizer.chat_template = jinja
    processor = LlavaProcessor(
        image_processor=llava_image_processor(image_cfg, image_aspect),
        tokenizer=tokenizer,
        patch_size=vlm.encoder.layout.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=jinja,
        image_token=IMAGE_PLACEHOLDER,
        num_additional_image_tokens=vlm.encoder.layout.num_prefix_tokens,
    )
    pixels = verify_processor(vlm, processor, chat, image_cfg, image_aspect) if verify else []

    lm = _plain_causal_lm(vlm)
    dtype = dtype or lm.dtype
    projector = export_projector(vlm.connector, dtype)
    vision_config, vision_state = export_vision_tower(vlm.encoder, dtype)
    dc_rows = lm.get_input_embeddings().num_embeddings
    rows = max(dc_rows, image_id + 1)
    text_config = copy.deepcopy(lm.config)
    text_config.vocab_size = rows
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_id,
        image_seq_length=projector.image_seq_length,
        vision_feature_layer=projector.vision_feature_layer,
        vision_feature_select_strategy=projector.select_strategy,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    state = {f"model.vision_tower.{k}": v for k, v in vision_state.items()}
    state.update({f"model.multi_modal_projector.{k}": v for k, v in projector.state.items()})
    owned = lm is not vlm.llm.model  # a merged LoRA copy is ours: its tensors move in without another copy
    state.update({k: v.detach().to(dtype=dtype, copy=not owned) for k, v in _llm_state(lm, rows).items()})
    model = assemble(LlavaForConditionalGeneration, config, state, "LlavaForConditionalGeneration export")
    for node in (model.config, model.config.text_config, model.config.vision_config):
        node.dtype = dtype  # the sub-configs too: the LLM's copied config names the LLM's own dtype
    # Only the device moves: the weights already have `dtype`; casting would also round the fp32 buffers (rotary
    # frequencies) that dc's LLM keeps in fp32.
    model = model.to(device=lm.get_input_embeddings().weight.device)

    generation = copy.deepcopy(lm.generation_config)
    generation.eos_token_id = chat.stop_token_ids(vlm.llm.tokenizer)
    generation.pad_token_id = tokenizer.pad_token_id
    if image_id >= dc_rows:  # a row dc never had: keep it out of sampling as well
        generation.suppress_tokens = sorted({*(generation.suppress_tokens or []), image_id})
    model.generation_config = generation
    if verify:
        verify_numbers(vlm, model, processor, chat, pixels, vocab_size=dc_rows)
    return model, processor


def save_hf_llava(
    vlm: VLM, image_cfg: Any, out_dir: str | Path, *, record: Mapping[str, Any] | None = None, **kwargs: Any
) -> Path:
    """`to_hf_llava`, then write `out_dir` for `LlavaForConditionalGeneration.from_pretrained` / `AutoProcessor`.

    Writes safetensors weights, `config.json`, `generation_config.json`, the processor and tokenizer files (with
    the chat template) and `dc_export.json` (what was exported and how, plus the entries of `record`). The
    processor is reloaded from disk and checked again (a tokenizer can lose settings in a save/load round trip);
    the files are written to `<out_dir>.tmp` and moved into place only after that check, so a failed export leaves
    nothing under `out_dir` (`dc.export.staging`: a `<out_dir>.tmp` that dc did not leave is refused, never
    deleted). `kwargs` go to `to_hf_llava`.

    Raises:
        FileExistsError: `out_dir` exists, or a `<out_dir>.tmp` that is not dc's leftover.
    """
    out = Path(out_dir)
    check_destination(out, "out_dir", hint="choose a new directory")
    model, processor = to_hf_llava(vlm, image_cfg, **kwargs)
    chat = _chat_template(vlm, kwargs.get("template"))
    image_aspect = kwargs.get("image_aspect", "pad")
    with staged(out, "out_dir", hint="choose a new directory") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if kwargs.get("verify", True):
            verify_processor(vlm, AutoProcessor.from_pretrained(tmp), chat, image_cfg, image_aspect)
        exported = {
            "connector": type(vlm.connector).__name__,
            "taps": [list(t) for t in vlm.connector.taps],
            "vision_feature_layer": model.config.vision_feature_layer,
            "vision_num_hidden_layers": model.config.vision_config.num_hidden_layers,
            "encoder": vlm.encoder.layout.name,
            "template": chat.name,
            "image_aspect": image_aspect,
            "dtype": str(model.dtype).removeprefix("torch."),
            "image_token_index": model.config.image_token_index,
            "lora_merged": isinstance(vlm.llm.model, PeftModel),
            **(record or {}),
        }
        (tmp / "dc_export.json").write_text(json.dumps(exported, indent=2) + "\n")
    return out
