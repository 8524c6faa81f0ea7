"""Throughput, MFU (both conventions) and hardware-FLOPs utilisation from analytic FLOPs.

Dense FLOPs per training batch, per part (N = parameter count of the part, counted before any sharding):

* forward: 2·N per token the part processes;
* backward to activations: another 2·N per token when anything *upstream* of the part trains (the frozen LLM
  of stage 1 still back-propagates to the connector: 2 + 2 = 4·N);
* backward to weights: another 2·N per token for the trained parameters (a fully trained part: 6·N).

Tokens per part, from each batch's real counts: the vision encoder sees `encoder_tokens_per_image` per *view*
(patches + CLS; an AnyRes image has 1 + crops views, a video one per frame); the projector runs on
`visual_tokens_per_image` tokens per view — the tokens it actually sees, i.e. *before* a post-projector
downsampling (Efficient DC's `position: post`) and after a pre-projector one; the LLM processes the batch's
non-pad tokens (text + merged visual tokens). The LLM's input embedding is a lookup and is not counted; `lm_head`
is, also when it is tied to the input embedding.

Three figures, each over the same wall time and peak:

* `mfu` (torchtitan's convention, the one quoted for LLM training): dense FLOPs + attention-score FLOPs. Per
  sequence of S tokens and per layer, QKᵀ and AV cost 4·S²·(heads·head_dim) forward (causality not halved,
  as torchtitan counts it), ×3 when the backward runs through the part — 12·L·H·D_h·S per token for the
  LLM; the frozen encoder's forward adds 4·L_enc·D_enc·S_enc² per view.
* `mfu_no_attention`: the 6·N·D convention (dense only): 7–13 % below `mfu` at sequence 2048.
* `hfu`: hardware FLOPs: `mfu`'s FLOPs + what activation checkpointing recomputes (`full`: one more forward of
  every decoder layer, attention included; `selective` recomputes only elementwise ops: counted as 0).

Mini-Gemini (`mgm_flops`): the ConvNeXt aux tower and the patch-info mining do not run once per token, so their
parameters are left out of the encoder / connector counts and added per view as Σ parameters × positions (the aux
tower at each stage's resolution, forward only while frozen; the mining's query projector over the patch tokens,
its key/value projectors over every aux position, with the connector's factor).

The peak comes from an explicit table selected by config (`callbacks.throughput.device`), never from the
device name (Lightning's table misses "NVIDIA H200" and lists sparsity peaks for some parts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn

from dc.models.encoders.dual import DualEncoder
from dc.utils.errors import ConfigError

# Dense bf16 tensor-core peak per device, FLOP/s.
PEAK_BF16_FLOPS: dict[str, float] = {
    "a100": 312e12,
    "h100_sxm": 989e12,
    "h200": 989e12,
}


def resolve_peak_flops(device: str | None, override: float | None = None) -> float | None:
    """Peak FLOP/s for `callbacks.throughput.device` (or the explicit `peak_flops` override); None: no MFU."""
    if override is not None:
        return float(override)
    if device is None:
        return None
    if device not in PEAK_BF16_FLOPS:
        raise ConfigError(f"callbacks.throughput.device={device!r}: expected one of {sorted(PEAK_BF16_FLOPS)} or null")
    return PEAK_BF16_FLOPS[device]


@dataclass(frozen=True)
class FlopsSpec:
    """What the FLOPs formulas need to know about a VLM and its stage ("image" = one view)."""

    encoder_params: int
    encoder_trained: bool
    encoder_tokens_per_image: int
    connector_params: int
    connector_trained: bool
    visual_tokens_per_image: int  # tokens the projector runs on, per view
    llm_params: int  # all LLM parameters except the input embedding (lm_head counted, tied or not)
    llm_trained_params: int  # those of them that train (full fine-tune: all; LoRA: the adapters)
    encoder_layers: int = 0  # blocks that run
    encoder_width: int = 0  # attention width (heads · head_dim)
    llm_layers: int = 0
    llm_attention_width: int = 0  # heads · head_dim of the query
    llm_layer_params: int = 0  # parameters inside the decoder layers (what `full` checkpointing recomputes)
    activation_checkpointing: str = "none"
    aux_flops_per_image: float = 0.0  # Mini-Gemini aux tower + mining, per view (`mgm_flops`)

    @property
    def _llm_backward(self) -> bool:
        return self.encoder_trained or self.connector_trained or self.llm_trained_params > 0

    def batch_flops(self, tokens: int, images: int) -> float:
        """Dense model FLOPs (the 6·N·D convention) of one micro-batch: `tokens` non-pad LLM tokens, `images` views."""
        enc_tokens = images * self.encoder_tokens_per_image
        vis_tokens = images * self.visual_tokens_per_image
        enc = (6 if self.encoder_trained else 2) * self.encoder_params * enc_tokens
        conn_factor = 2 + (2 if self.connector_trained else 0) + (2 if self.encoder_trained else 0)
        conn = conn_factor * self.connector_params * vis_tokens
        llm = (2 + (2 if self._llm_backward else 0)) * self.llm_params * tokens + 2 * self.llm_trained_params * tokens
        return float(enc + conn + llm + images * self.aux_flops_per_image)

    def attention_flops(self, seq_lens: Sequence[int], images: int) -> float:
        """Attention-score FLOPs (QKᵀ and AV, torchtitan's convention) of one micro-batch."""
        squares = sum(int(n) ** 2 for n in seq_lens)
        llm = (3 if self._llm_backward else 1) * 4 * self.llm_layers * self.llm_attention_width * squares
        enc_fwd = 4 * self.encoder_layers * self.encoder_width * self.encoder_tokens_per_image**2 * images
        return float(llm + (3 if self.encoder_trained else 1) * enc_fwd)

    def recompute_flops(self, tokens: int, seq_lens: Sequence[int]) -> float:
        """FLOPs activation checkpointing adds (`full`: one forward of the decoder layers; else 0)."""
        if self.activation_checkpointing != "full":
            return 0.0
        squares = sum(int(n) ** 2 for n in seq_lens)
        return float(2 * self.llm_layer_params * tokens + 4 * self.llm_layers * self.llm_attention_width * squares)

    def forward_flops(self, tokens: int, images: int, seq_lens: Sequence[int]) -> float:
        """Inference (prefill) FLOPs: one forward of every part, attention included."""
        squares = sum(int(n) ** 2 for n in seq_lens)
        enc = 2 * self.encoder_params * self.encoder_tokens_per_image * images
        enc += 4 * self.encoder_layers * self.encoder_width * self.encoder_tokens_per_image**2 * images
        conn = 2 * self.connector_params * self.visual_tokens_per_image * images
        llm = 2 * self.llm_params * tokens + 4 * self.llm_layers * self.llm_attention_width * squares
        return float(enc + conn + llm)

    def flops(self, tokens: int, images: int, seq_lens: Sequence[int]) -> dict[str, float]:
        """{"no_attention", "model", "hardware"} FLOPs of one micro-batch (see the module docstring)."""
        dense = self.batch_flops(tokens, images)
        model = dense + self.attention_flops(seq_lens, images)
        return {"no_attention": dense, "model": model, "hardware": model + self.recompute_flops(tokens, seq_lens)}


def _count(params: Any, trained: bool | None = None) -> int:
    return sum(p.numel() for p in params if trained is None or p.requires_grad == trained)


def _projector_tokens(connector: nn.Module) -> int:
    """Tokens the projector runs on per view: the fused tokens, downsampled first when downsampling is `pre`."""
    downsample = getattr(connector, "downsample", None)
    if downsample is not None and getattr(downsample, "position", "post") == "pre":
        return int(connector.num_visual_tokens())
    fused = getattr(connector, "fused_tokens", None)
    layout = getattr(connector, "layout", None)
    if fused is None or layout is None:
        return int(connector.num_visual_tokens())
    return int(fused(layout.num_patches))


def _hf_config(llm: nn.Module) -> Any:
    model = getattr(llm, "model", None)
    return getattr(model, "config", None)


def mgm_flops(vlm: nn.Module) -> tuple[set[int], float]:
    """(ids of the parameters counted here, FLOPs per view) of a Mini-Gemini VLM's aux tower and mining; ((), 0)
    for any other VLM.

    Aux tower: (2, or 6 when it trains) × `ConvNeXtEncoder.param_positions()`. Mining: `param_positions(patch
    tokens, aux positions)` × the connector's factor (2 forward + 2 when it trains + 2 when the encoder trains).
    """
    encoder, mining = vlm.encoder, getattr(vlm.connector, "mining", None)
    if mining is None or not isinstance(encoder, DualEncoder):
        return set(), 0.0
    aux = encoder.aux
    aux_ids = {id(p) for p in aux.parameters()}
    clip_trained = any(p.requires_grad for p in encoder.parameters() if id(p) not in aux_ids)
    aux_trained = any(p.requires_grad for p in aux.parameters())
    mining_trained = any(p.requires_grad for p in mining.parameters())
    height, width = aux.feature_size()
    mining_factor = 2 + (2 if mining_trained else 0) + (2 if clip_trained or aux_trained else 0)
    flops = (6 if aux_trained else 2) * aux.param_positions() + mining_factor * mining.param_positions(
        encoder.layout.num_patches, height * width
    )
    return aux_ids | {id(p) for p in mining.parameters()}, float(flops)


def flops_spec(vlm: nn.Module) -> FlopsSpec:
    """The `FlopsSpec` of a built (unsharded; meta is fine) VLM with its stage's freezing applied."""
    layout = vlm.encoder.layout
    enc_tokens = (layout.image_size // layout.patch_size) ** 2 + layout.num_prefix_tokens
    input_embed = vlm.llm.model.get_input_embeddings()
    embed = {id(p) for p in input_embed.parameters()}
    llm_params = [p for p in vlm.llm.parameters() if id(p) not in embed]
    output = vlm.llm.model.get_output_embeddings()
    tied = [p for p in (output.parameters() if output is not None else []) if id(p) in embed]
    llm_params += tied  # a tied lm_head is the embedding matrix, and it is a real matmul
    config = _hf_config(vlm.llm)
    heads = getattr(config, "num_attention_heads", 0) or 0
    head_dim = getattr(config, "head_dim", None) or ((config.hidden_size // heads) if heads else 0)
    layer_classes = tuple(vlm.llm.decoder_layer_classes())
    layer_params = [p for m in vlm.llm.modules() if isinstance(m, layer_classes) for p in m.parameters()]
    blocks = list(vlm.encoder.blocks())
    skip, aux_flops = mgm_flops(vlm)
    encoder_params = [p for p in vlm.encoder.parameters() if id(p) not in skip]
    connector_params = [p for p in vlm.connector.parameters() if id(p) not in skip]
    return FlopsSpec(
        encoder_params=_count(encoder_params),
        encoder_trained=_count(encoder_params, True) > 0,
        encoder_tokens_per_image=enc_tokens,
        connector_params=_count(connector_params),
        connector_trained=_count(vlm.connector.parameters(), True) > 0,
        visual_tokens_per_image=_projector_tokens(vlm.connector),
        llm_params=_count(llm_params),
        llm_trained_params=_count(llm_params, True),
        encoder_layers=len(blocks),
        encoder_width=int(layout.hidden_size),
        llm_layers=int(getattr(config, "num_hidden_layers", 0) or 0),
        llm_attention_width=int(heads * head_dim),
        llm_layer_params=_count(layer_params),
        activation_checkpointing=str(getattr(vlm.llm, "activation_checkpointing", "none")),
        aux_flops_per_image=aux_flops,
    )


def batch_counts(batch: dict[str, Any]) -> tuple[int, int, int]:
    """(samples, non-pad tokens, views) of a collated batch (host counts when the batch carries them)."""
    samples, tokens, images, _ = batch_shape(batch)
    return samples, tokens, images


def batch_shape(batch: dict[str, Any]) -> tuple[int, int, int, tuple[int, ...]]:
    """(samples, non-pad tokens, views, tokens per sequence), from the batch's host-side `layout` when present.

    Without a layout the per-row lengths are read from the attention mask (one device sync).
    """
    pixels = batch.get("pixel_values")
    images = 0 if pixels is None else int(pixels.shape[0])
    layout = batch.get("layout")
    seq_lens = getattr(layout, "seq_lens", None)
    if seq_lens is None:
        seq_lens = tuple(int(n) for n in batch["attention_mask"].sum(1).tolist())
    return int(batch["input_ids"].shape[0]), int(sum(seq_lens)), images, tuple(seq_lens)


class VLMThroughput(L.Callback):
    """Logs per-device samples/s, tokens/s, TFLOP/s, MFU (both conventions) and HFU every `log_every_n_steps` steps.

    Counts are this rank's micro-batches since the last log; time is wall clock between two synchronised log
    points, so the window covers data loading, forward/backward, communication and the optimizer step.
    Metrics: `perf/samples_per_s` and `perf/samples_per_s_global` (× world size), `perf/tokens_per_s_per_device`,
    `perf/tflops_per_device` (attention included), `perf/tflops_no_attention_per_device`,
    `perf/hardware_tflops_per_device`, and with a peak `perf/mfu`, `perf/mfu_no_attention`, `perf/hfu`.

    Args:
        device: key of `PEAK_BF16_FLOPS` ("a100", "h100_sxm", "h200") or None (no MFU).
        peak_flops: explicit peak FLOP/s per device, overriding `device`.
        log_every_n_steps: optimizer steps per measurement window.
    """

    def __init__(self, device: str | None = None, peak_flops: float | None = None, log_every_n_steps: int = 10) -> None:
        self.peak = resolve_peak_flops(device, peak_flops)
        self.every = max(1, int(log_every_n_steps))
        self.spec: FlopsSpec | None = None
        self._reset()

    def _reset(self) -> None:
        self.samples = self.tokens = self.images = 0
        self.flops = {"no_attention": 0.0, "model": 0.0, "hardware": 0.0}
        self.t0: float | None = None

    @staticmethod
    def _sync(trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.spec = getattr(pl_module, "flops_spec", None)
        self._reset()
        self._sync(trainer)
        self.t0 = time.perf_counter()
        self._last_step = trainer.global_step

    def add(self, batch: dict[str, Any]) -> None:
        """Count one micro-batch."""
        samples, tokens, images, seq_lens = batch_shape(batch)
        self.samples += samples
        self.tokens += tokens
        self.images += images
        if self.spec is not None:
            for key, value in self.spec.flops(tokens, images, seq_lens).items():
                self.flops[key] += value

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.add(batch)
        step = trainer.global_step
        if step == self._last_step or step % self.every:
            return
        self._last_step = step
        self._sync(trainer)
        now = time.perf_counter()
        metrics = self.compute(now - (self.t0 or now), trainer.world_size)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        pl_module.perf_metrics = metrics  # the latest window, for tests and the final summary
        self._reset()
        self.t0 = now

    def compute(self, seconds: float, world_size: int = 1) -> dict[str, float]:
        """Metrics for the current window lasting `seconds`."""
        seconds = max(seconds, 1e-9)
        out = {
            "perf/samples_per_s": self.samples / seconds,
            "perf/samples_per_s_global": self.samples * world_size / seconds,
            "perf/tokens_per_s_per_device": self.tokens / seconds,
        }
        if self.spec is None:
            return out
        names = {
            "model": ("tflops_per_device", "mfu"),
            "no_attention": ("tflops_no_attention_per_device", "mfu_no_attention"),
            "hardware": ("hardware_tflops_per_device", "hfu"),
        }
        for key, (tflops, ratio) in names.items():
            out[f"perf/{tflops}"] = self.flops[key] / seconds / 1e12
            if self.peak:
                out[f"perf/{ratio}"] = self.flops[key] / seconds / self.peak
        return out
