"""Training-step figures: P1 (connector overhead vs the mlp baseline), P4 (ours vs HF Llava) and P7 (the
per-input visual path vs the fixed-count splice it replaced).

A training step is forward + backward + `AdamW.step()` with the vision tower frozen and the LLM + connector
trainable, on one fixed batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dc.bench.build import build_vlm, make_batch, share_llm
from dc.bench.shapes import FigureShape
from dc.bench.timing import interleaved, profile_top, ratio

P1_SIDES = ("mlp", "sci", "dci", "sti")
P1_GOAL = 1.03
P4_GOAL = 1.0


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], lr: float = 1e-5) -> Callable[[], None]:
    """A closure running one fwd + bwd + AdamW step of `model` on `batch` (only params that require grad)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError("non-finite loss in benchmark step")
        loss.backward()
        opt.step()

    return step


def run_p1(shape: FigureShape, device: torch.device, dtype: str, warmup: int, repeats: int) -> dict[str, Any]:
    """P1: step time of SCI, DCI, STI vs mlp, same encoder shape and identical LLM weights."""
    vlms = {kind: build_vlm(kind, shape.vit, shape.llm, dtype) for kind in P1_SIDES}
    share_llm(list(vlms.values()))
    steps, info = {}, {}
    for kind, vlm in vlms.items():
        vlm = vlm.to(device)
        vlm.train()
        text = shape.seq - shape.vit.grid_tokens  # the mlp baseline fills exactly `seq`
        batch = make_batch(vlm, shape.batch, text, device)
        steps[kind] = train_step(vlm, batch)
        info[kind] = {"visual_tokens": vlm.num_visual_tokens, "seq": int(batch["input_ids"].shape[1])}
    times = interleaved(steps, warmup, repeats, device)
    ratios = {k: ratio(times[k], times["mlp"]) for k in P1_SIDES if k != "mlp"}
    result: dict[str, Any] = {
        "figure": "P1",
        "title": "Connector overhead: training-step time vs the mlp baseline",
        "baseline": "mlp",
        "clock": times["mlp"]["clock"],
        "times_s": times,
        "sides": info,
        "ratios": ratios,
        "goal": {"sci": f"<= {P1_GOAL}", "dci": f"<= {P1_GOAL}", "sti": "report"},
        "profiles": {},
    }
    missed = [k for k in ("sci", "dci") if ratios[k]["median"] > P1_GOAL]
    result["goal_met"] = not missed
    for k in missed + (["mlp"] if missed else []):
        result["profiles"][k] = profile_top(steps[k])
    return result


def _hf_llava(ours: nn.Module, shape: FigureShape, dtype: str) -> tuple[nn.Module, int]:
    """`LlavaForConditionalGeneration` with our SCI model's configuration and a copy of its weights."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vit = shape.vit
    vocab = ours.llm.model.get_input_embeddings().num_embeddings
    vision = CLIPVisionConfig(
        hidden_size=vit.hidden_size,
        image_size=vit.image_size,
        patch_size=vit.patch_size,
        num_hidden_layers=vit.num_layers,
        intermediate_size=vit.mlp,
        num_attention_heads=vit.heads,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=copy.deepcopy(ours.llm.model.config),
        image_token_id=vocab - 1,
        vision_feature_layer=[-2, *vit.layers],
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
    )
    config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    hf = LlavaForConditionalGeneration(config).to(getattr(torch, dtype))
    _copy_weights(ours, hf)
    hf.model.vision_tower.requires_grad_(False)
    hf.model.vision_tower.eval()
    return hf, vocab - 1


def _copy_weights(ours: nn.Module, hf: nn.Module) -> None:
    """Copy the tower (all but its unused last block), projector and LLM; every HF weight but those is set."""
    tower = hf.model.vision_tower
    missing, unexpected = tower.load_state_dict(ours.encoder.model.state_dict(), strict=False)
    if unexpected or any(".layers." not in m and "post_layernorm" not in m for m in missing):
        raise RuntimeError(f"tower weight copy: missing {missing}, unexpected {unexpected}")
    proj = ours.connector.projector
    hf.model.multi_modal_projector.linear_1.load_state_dict(proj[0].state_dict())
    hf.model.multi_modal_projector.linear_2.load_state_dict(proj[2].state_dict())
    hf.model.language_model.load_state_dict(ours.llm.model.model.state_dict())
    hf.lm_head.load_state_dict(ours.llm.model.lm_head.state_dict())


def run_p4(shape: FigureShape, device: torch.device, dtype: str, warmup: int, repeats: int) -> dict[str, Any]:
    """P4: our SCI training step vs HF Llava (`vision_feature_layer=[-2, *layers]`) with identical weights."""
    from dc.constants import IMAGE_TOKEN_INDEX

    ours = build_vlm("sci", shape.vit, shape.llm, dtype)
    hf, image_token = _hf_llava(ours, shape, dtype)
    ours, hf = ours.to(device).train(), hf.to(device).train()
    hf.model.vision_tower.eval()
    batch = make_batch(ours, shape.batch, shape.seq - ours.num_visual_tokens, device)
    hf_batch = {k: v for k, v in batch.items() if k != "visual"}
    hf_batch["input_ids"] = batch["input_ids"].masked_fill(batch["input_ids"] == IMAGE_TOKEN_INDEX, image_token)
    with torch.no_grad():
        loss_diff = abs(float(ours(**batch).loss) - float(hf(**hf_batch).loss))
    steps = {"ours": train_step(ours, batch), "hf_llava": train_step(hf, hf_batch)}
    times = interleaved(steps, warmup, repeats, device)
    r = ratio(times["ours"], times["hf_llava"])
    result: dict[str, Any] = {
        "figure": "P4",
        "title": "Ours vs transformers.LlavaForConditionalGeneration: training-step time (SCI)",
        "baseline": "hf_llava",
        "clock": times["ours"]["clock"],
        "times_s": times,
        "sides": {"ours": {"seq": int(batch["input_ids"].shape[1]), "visual_tokens": ours.num_visual_tokens}},
        "ratios": {"ours": r},
        "loss_abs_diff_before_training": loss_diff,
        "goal": {"ours": f"<= {P4_GOAL}"},
        "goal_met": r["median"] <= P4_GOAL,
        "profiles": {},
    }
    if not result["goal_met"]:
        result["profiles"] = {"ours": profile_top(steps["ours"]), "hf_llava": profile_top(steps["hf_llava"])}
    return result


P7_GOAL = 1.02


class FixedCountSplice(nn.Module):
    """The visual path before per-input counts: every image the same number of tokens, one masked scatter.

    Kept here only as the baseline of P7 (same encoder, connector and LLM objects as the VLM it wraps).
    """

    def __init__(self, vlm: nn.Module) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        labels: torch.Tensor,
        **_: Any,
    ) -> Any:
        from dc.constants import IMAGE_TOKEN_INDEX

        vlm = self.vlm
        is_visual = input_ids == IMAGE_TOKEN_INDEX
        embeds = vlm.llm.embed(input_ids.masked_fill(is_visual, 0))
        visual = vlm.connector(vlm.encoder(pixel_values))
        if int(is_visual.sum()) != visual.shape[0] * visual.shape[1]:
            raise ValueError("slot count mismatch")
        embeds = embeds.masked_scatter(is_visual.unsqueeze(-1), visual.to(embeds.dtype))
        return vlm.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)


def run_p7(shape: FigureShape, device: torch.device, dtype: str, warmup: int, repeats: int) -> dict[str, Any]:
    """P7: DCI training step through the per-input visual path vs the fixed-count splice, same model and batch."""
    vlm = build_vlm("dci", shape.vit, shape.llm, dtype).to(device).train()
    text = shape.seq - shape.vit.grid_tokens
    batch = make_batch(vlm, shape.batch, text, device)
    before = FixedCountSplice(vlm)
    with torch.no_grad():
        diff = abs(float(vlm(**batch).loss) - float(before(**batch).loss))
    steps = {"per_input": train_step(vlm, batch), "fixed_count": train_step(before, batch)}
    times = interleaved(steps, warmup, repeats, device)
    r = ratio(times["per_input"], times["fixed_count"])
    return {
        "figure": "P7",
        "title": "Plain-image path: per-input visual tokens (now) vs the fixed-count splice (before)",
        "baseline": "fixed_count",
        "clock": times["per_input"]["clock"],
        "times_s": times,
        "sides": {"per_input": {"seq": int(batch["input_ids"].shape[1]), "visual_tokens": vlm.num_visual_tokens}},
        "ratios": {"per_input": r},
        "loss_abs_diff": diff,
        "goal": {"per_input": f"<= {P7_GOAL}"},
        "goal_met": r["median"] <= P7_GOAL,
        "profiles": {},
    }
