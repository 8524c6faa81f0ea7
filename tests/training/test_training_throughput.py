"""Analytic FLOPs and MFU against hand computations; the spec's parameter counts against the built tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dc.training.lora import LORA_KEY
from dc.training.throughput import PEAK_BF16_FLOPS, FlopsSpec, VLMThroughput, batch_counts, resolve_peak_flops

from dc_testing import make_module
from train_helpers import compose_config, single_thread  # noqa: F401


def test_stage1_flops_by_hand() -> None:
    # frozen encoder 100 params, 17 tokens/image; trained connector 10 params, 16 visual tokens/image;
    # frozen LLM 1000 params (no input embedding). Batch: 50 non-pad tokens, 2 images.
    spec = FlopsSpec(
        encoder_params=100,
        encoder_trained=False,
        encoder_tokens_per_image=17,
        connector_params=10,
        connector_trained=True,
        visual_tokens_per_image=16,
        llm_params=1000,
        llm_trained_params=0,
    )
    # encoder forward only: 2·100·(2·17) = 6,800; connector fwd + weight grads: 4·10·(2·16) = 1,280
    # (no activation grads: nothing upstream trains); frozen LLM fwd + activation backprop: 4·1000·50 = 200,000
    assert spec.batch_flops(tokens=50, images=2) == 6_800 + 1_280 + 200_000


def test_stage2_and_lora_flops_by_hand() -> None:
    full = FlopsSpec(100, False, 17, 10, True, 16, llm_params=1000, llm_trained_params=1000)
    assert full.batch_flops(tokens=50, images=2) == 6_800 + 1_280 + 6 * 1000 * 50  # 6·N·D for the trained LLM
    # LoRA: base 900 frozen + 100 adapter params: 4·1000·50 (fwd + activation grads) + 2·100·50 (adapter weight grads)
    lora = FlopsSpec(100, False, 17, 10, True, 16, llm_params=1000, llm_trained_params=100)
    assert lora.batch_flops(tokens=50, images=2) == 6_800 + 1_280 + 200_000 + 10_000
    text_only = full.batch_flops(tokens=50, images=0)
    assert text_only == 300_000


def test_window_metrics_and_mfu_by_hand() -> None:
    cb = VLMThroughput(device=None, peak_flops=1e6)
    # 2 decoder layers of attention width 8 (no encoder attention: 0 layers), full activation checkpointing
    cb.spec = FlopsSpec(
        0,
        False,
        1,
        0,
        True,
        1,
        llm_params=1000,
        llm_trained_params=1000,
        llm_layers=2,
        llm_attention_width=8,
        llm_layer_params=900,
        activation_checkpointing="full",
    )
    batch = {
        "input_ids": torch.zeros(4, 10, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 10, [1] * 4 + [0] * 6]),
        "pixel_values": torch.zeros(3, 3, 8, 8),
    }
    assert batch_counts(batch) == (4, 30, 3)
    cb.add(batch)
    m = cb.compute(seconds=2.0, world_size=8)
    assert m["perf/samples_per_s"] == 2.0 and m["perf/samples_per_s_global"] == 16.0
    assert m["perf/tokens_per_s_per_device"] == 15.0
    dense = 6 * 1000 * 30
    squares = 10**2 + 6**2 + 10**2 + 4**2  # 252: attention is per sequence
    attention = 3 * 4 * 2 * 8 * squares  # QK^T + AV, forward x 3 (the backward runs through the LLM)
    recompute = 2 * 900 * 30 + 4 * 2 * 8 * squares  # full checkpointing: one more forward of the layers
    assert m["perf/tflops_no_attention_per_device"] == pytest.approx(dense / 2 / 1e12)
    assert m["perf/tflops_per_device"] == pytest.approx((dense + attention) / 2 / 1e12)
    assert m["perf/mfu_no_attention"] == pytest.approx(dense / 2 / 1e6)  # 0.09
    assert m["perf/mfu"] == pytest.approx((dense + attention) / 2 / 1e6)
    assert m["perf/hfu"] == pytest.approx((dense + attention + recompute) / 2 / 1e6)


def test_encoder_attention_and_stage1_attention_factor() -> None:
    # frozen encoder: 24 blocks of width 1024 over 577 tokens per view, forward only (x1); frozen LLM in stage 1
    # still back-propagates to the connector (x3)
    spec = FlopsSpec(
        100,
        False,
        577,
        10,
        True,
        576,
        llm_params=1000,
        llm_trained_params=0,
        encoder_layers=24,
        encoder_width=1024,
        llm_layers=32,
        llm_attention_width=4096,
    )
    assert spec.attention_flops([700], images=2) == 3 * 4 * 32 * 4096 * 700**2 + 4 * 24 * 1024 * 577**2 * 2
    assert spec.recompute_flops(700, [700]) == 0  # no checkpointing
    selective = FlopsSpec(
        0, False, 1, 0, True, 1, 10, 10, llm_layers=1, llm_attention_width=4, activation_checkpointing="selective"
    )
    assert (
        selective.flops(5, 0, [5])["hardware"] == selective.flops(5, 0, [5])["model"]
    )  # recomputes elementwise ops only


def test_peak_table_is_explicit() -> None:
    assert PEAK_BF16_FLOPS == {"a100": 312e12, "h100_sxm": 989e12, "h200": 989e12}
    assert resolve_peak_flops("h200") == 989e12
    assert resolve_peak_flops(None) is None
    assert resolve_peak_flops("a100", override=1.5e14) == 1.5e14
    with pytest.raises(ValueError, match="callbacks.throughput.device"):
        resolve_peak_flops("NVIDIA H200")


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "lora"])
def test_spec_counts_match_the_tiny_model(stage: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(
        "train",
        ["debug=fast", f"stage={stage}", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", "run_name=x"],
    )
    module = make_module(cfg)
    module.configure_model()
    vlm, spec = module.vlm, module.flops_spec
    config = vlm.llm.model.config
    assert spec.llm_layers == config.num_hidden_layers
    assert spec.llm_attention_width == config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    assert spec.encoder_layers == len(vlm.encoder.blocks()) and spec.encoder_width == cfg.encoder.layout.hidden_size
    layers = [m for m in vlm.llm.modules() if type(m).__name__ == "LlamaDecoderLayer"]
    assert spec.llm_layer_params == sum(p.numel() for m in layers for p in m.parameters())
    embed = vlm.llm.model.get_input_embeddings().weight
    llm_total = sum(p.numel() for p in vlm.llm.parameters()) - embed.numel()
    llm_trained = sum(p.numel() for n, p in vlm.llm.named_parameters() if p.requires_grad and p is not embed)
    layout = cfg.encoder.layout
    assert spec.encoder_tokens_per_image == (layout.image_size // layout.patch_size) ** 2 + layout.num_prefix_tokens
    assert spec.encoder_params == sum(p.numel() for p in vlm.encoder.parameters()) and not spec.encoder_trained
    assert spec.connector_params == sum(p.numel() for p in vlm.connector.parameters()) and spec.connector_trained
    assert spec.llm_params == llm_total
    assert spec.llm_trained_params == llm_trained
    adapters = sum(p.numel() for n, p in vlm.llm.named_parameters() if LORA_KEY in n)
    expected_trained = {"pretrain": 0, "finetune": llm_total, "lora": adapters}[stage]
    assert spec.llm_trained_params == expected_trained


@pytest.mark.parametrize(("position", "tied"), [("pre", False), ("post", True)])
def test_projector_tokens_and_tied_lm_head(position: str, tied: bool, tmp_path: Path, data_dir: Path) -> None:
    """Efficient DC: the projector sees the downsampled grid only when downsampling is `pre`; a tied lm_head counts."""
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            "connector=dci_efficient",
            f"connector.downsample.position={position}",
            f"llm.config.tie_word_embeddings={str(tied).lower()}",
            f"paths.output_dir={tmp_path}",
            f"paths.data_dir={data_dir}",
            "run_name=x",
        ],
    )
    module = make_module(cfg)
    module.configure_model()
    vlm, spec = module.vlm, module.flops_spec
    rows, cols = vlm.encoder.layout.grid
    emitted = vlm.num_visual_tokens  # what reaches the LLM: always the downsampled grid
    assert emitted == ((rows + 1) // 2) * ((cols + 1) // 2)
    assert spec.visual_tokens_per_image == (emitted if position == "pre" else rows * cols)
    embed = vlm.llm.model.get_input_embeddings().weight
    assert (vlm.llm.model.get_output_embeddings().weight is embed) == tied
    non_embed = sum(p.numel() for p in vlm.llm.parameters() if p is not embed)
    assert spec.llm_params == non_embed + (embed.numel() if tied else 0)  # a tied lm_head is still a V x d matmul


def test_forward_flops_by_hand() -> None:
    # prefill: encoder 2·100·17 per view + 4·2·8·17² attention; connector 2·10·16; LLM 2·1000·30 + 4·3·4·(10² + 20²)
    spec = FlopsSpec(
        100, False, 17, 10, True, 16, 1000, 1000, encoder_layers=2, encoder_width=8, llm_layers=3, llm_attention_width=4
    )
    enc = 2 * 100 * 17 + 4 * 2 * 8 * 17**2
    assert spec.forward_flops(30, 1, [10, 20]) == enc + 2 * 10 * 16 + 2 * 1000 * 30 + 4 * 3 * 4 * (100 + 400)
