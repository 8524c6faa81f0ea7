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
    cb.spec = FlopsSpec(0, False, 1, 0, True, 1, llm_params=1000, llm_trained_params=1000)
    batch = {
        "input_ids": torch.zeros(4, 10, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 10, [1] * 4 + [0] * 6]),
        "pixel_values": torch.zeros(3, 3, 8, 8),
    }
    assert batch_counts(batch) == (4, 30, 3)
    samples, tokens, images = batch_counts(batch)
    cb.samples, cb.tokens, cb.images, cb.flops = samples, tokens, images, cb.spec.batch_flops(tokens, images)
    m = cb.compute(seconds=2.0, world_size=8)
    assert m["perf/samples_per_s"] == 2.0 and m["perf/samples_per_s_global"] == 16.0
    assert m["perf/tokens_per_s_per_device"] == 15.0
    assert m["perf/tflops_per_device"] == pytest.approx(6 * 1000 * 30 / 2 / 1e12)
    assert m["perf/mfu"] == pytest.approx(6 * 1000 * 30 / 2 / 1e6)  # 0.09


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
