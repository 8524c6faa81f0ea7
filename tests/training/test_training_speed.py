"""The training step's speed levers through `DCModule`: the host-side layout (packed or padded, sync-free visual
splice) gives HF's loss and gradients on a real VLM batch with images; frozen parts are stored in the compute
dtype (trained ones stay fp32); the throughput callback reads sequence lengths from the layout."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.visual import VisualMeta
from dc.training.optim import adamw_impl_kwargs
from dc.training.throughput import batch_shape

from dc_testing import make_module
from train_helpers import compose_config, single_thread  # noqa: F401


def _module(tmp_path: Path, data_dir: Path, *overrides: str, trainer=None):
    cfg = compose_config(
        "train", ["debug=fast", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", "run_name=x", *overrides]
    )
    module = make_module(cfg)
    if trainer is not None:
        module._trainer = trainer
    module.configure_model()
    return module


def _batch(module, seed: int = 0) -> dict:
    """3 samples, right-padded; samples 0 and 2 carry one image each (after 2 text tokens), sample 1 is text only."""
    vlm = module.vlm
    g = torch.Generator().manual_seed(seed)
    n = vlm.num_visual_tokens
    lens = [n + 9, 7, n + 14]
    width = max(lens)
    ids = torch.randint(3, 200, (3, width), generator=g)
    for row in (0, 2):
        ids[row, 2 : 2 + n] = IMAGE_TOKEN_INDEX
    mask = (torch.arange(width)[None] < torch.tensor(lens)[:, None]).long()
    labels = ids.masked_fill((ids == IMAGE_TOKEN_INDEX) | (mask == 0), -100)
    labels[0, : n + 4] = -100
    size = vlm.encoder.layout.image_size
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": torch.randn(2, 3, size, size, generator=g),
        "visual": [VisualMeta(views=1, tokens=n)] * 2,
    }


def _loss_and_grads(module, batch):
    module.zero_grad(set_to_none=True)
    loss = module._loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["unpadded", "padded"])
def test_layout_step_matches_the_hf_labels_step(attention: str, tmp_path: Path, data_dir: Path) -> None:
    module = _module(tmp_path, data_dir, "stage=finetune", f"llm.attention={attention}")
    batch = _batch(module)
    module.vlm.llm.loss = "dense"  # no layout: masked_scatter splice and HF's own `labels=` loss, the reference
    want, g_want = _loss_and_grads(module, dict(batch))
    module.vlm.llm.loss = "auto"
    with_layout = module.on_before_batch_transfer(dict(batch), 0)
    layout = with_layout["layout"]
    assert layout.packed == (attention == "unpadded")
    assert (
        layout.visual_index.tolist()
        == (batch["input_ids"].reshape(-1) == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    )
    got, g_got = _loss_and_grads(module, with_layout)
    torch.testing.assert_close(got, want)
    assert g_got.keys() == g_want.keys() and any(".connector." in k for k in g_got)
    for name in g_want:
        torch.testing.assert_close(g_got[name], g_want[name], msg=lambda m, name=name: f"{name}: {m}")
    samples, tokens, views, seq_lens = batch_shape(with_layout)
    assert (samples, views, seq_lens) == (3, 2, tuple(int(n) for n in batch["attention_mask"].sum(1)))


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "lora"])
def test_frozen_parts_stored_in_the_compute_dtype(stage: str, tmp_path: Path, data_dir: Path) -> None:
    trainer = SimpleNamespace(precision="bf16-mixed", strategy=None)
    module = _module(tmp_path, data_dir, f"stage={stage}", trainer=trainer)
    params = dict(module.vlm.named_parameters())
    frozen = {p.dtype for p in params.values() if not p.requires_grad}
    trained = {p.dtype for p in params.values() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for p in module.vlm.encoder.parameters())
    if stage == "lora":
        assert all(p.dtype == torch.float32 for n, p in params.items() if "lora_" in n)
    opt_out = _module(tmp_path, data_dir, f"stage={stage}", "stage.frozen_dtype=float32", trainer=trainer)
    assert {p.dtype for p in opt_out.vlm.parameters()} == {torch.float32}
    cpu = _module(tmp_path, data_dir, f"stage={stage}", trainer=SimpleNamespace(precision="32-true", strategy=None))
    assert {p.dtype for p in cpu.vlm.parameters()} == {torch.float32}  # fp32 compute: nothing changes
    with pytest.raises(ValueError, match="stage.frozen_dtype='int8'"):
        _module(tmp_path, data_dir, f"stage={stage}", "stage.frozen_dtype=int8", trainer=trainer)


@pytest.mark.parametrize("attention", ["unpadded", "padded"])
@pytest.mark.parametrize("stage", ["finetune", "pretrain", "lora"])
def test_training_step_reads_nothing_back_from_the_device(stage: str, attention: str, tmp_path, data_dir) -> None:
    """The whole step — encoder, connector, visual splice, decoder, chunked loss, backward, gradient-norm clip and
    the fused AdamW update — on fake tensors (shapes without values): any op that needs device values on the host
    (`.item()`, `.tolist()`, `nonzero`, boolean-mask indexing, `if tensor:`) raises there, so a step that runs
    queues GPU work without waiting on it. The host-side layout is computed before, on the CPU batch, as in
    training."""
    import dataclasses

    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
    from torch.func import functional_call

    module = _module(tmp_path, data_dir, f"stage={stage}", f"llm.attention={attention}")
    batch = module.on_before_batch_transfer(_batch(module), 0)
    mode = FakeTensorMode()

    def fake(value):
        return mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    vlm = module.vlm
    state = {name: fake(t) for name, t in [*vlm.named_parameters(), *vlm.named_buffers()]}
    layout = batch.pop("layout")
    tensors = {f.name: fake(getattr(layout, f.name)) for f in dataclasses.fields(layout)}
    fake_batch = {k: fake(v) for k, v in batch.items()} | {"layout": dataclasses.replace(layout, **tensors)}
    with mode:
        with pytest.raises(DataDependentOutputException):  # the detector: a host read of a fake tensor raises
            fake(torch.ones(3)).sum().item()
        loss = functional_call(vlm, state, (), fake_batch).loss
        trained = [state[name] for name, p in vlm.named_parameters() if p.requires_grad]
        for param, grad in zip(trained, torch.autograd.grad(loss, trained), strict=True):
            param.grad = grad
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        torch.optim.AdamW(trained, lr=1e-3, **adamw_impl_kwargs(trained, "fused")).step()
    assert loss.shape == () and all(p.grad.shape == p.shape for p in trained)


def test_training_loop_reads_the_loss_back_only_every_log_interval(train_cfg) -> None:
    """Through `train`: over 12 optimizer steps (log every 5, progress bar on, CSV logger, fused AdamW) training
    values are read back to the host only on the steps the bar and the loggers refresh (1, 5, 10), not after every
    batch as `self.log(..., prog_bar=True)` makes Lightning do. Reads of host data (records, collate, the layout
    computed before the transfer, the sampler) belong to the data pipeline and are not counted."""
    import sys
    import traceback
    from collections import Counter

    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from torch.utils._python_dispatch import TorchDispatchMode

    from dc.pipeline import train
    from dc.training.callbacks import LossBarRich, LossBarTQDM

    host_side = ("dc/data/", "dc/models/llms/layout.py", "dc/training/data.py", "lightning/pytorch/utilities/data.py")

    def fit_step() -> int | None:
        frame = sys._getframe(2)
        while frame is not None:
            loop = frame.f_locals.get("self")
            if isinstance(loop, _TrainingEpochLoop):
                return loop.trainer.global_step
            frame = frame.f_back
        return None

    reads: Counter[tuple[int | None, str]] = Counter()

    class HostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                files = [f.filename.replace("\\", "/") for f in traceback.extract_stack()[:-1]]
                if not any(part in name for name in files for part in host_side):
                    site = next((name for name in reversed(files) if "/torch/" not in name), files[-1])
                    reads[(fit_step(), site.rsplit("/", 1)[-1])] += 1
            return func(*args, **(kwargs or {}))

    cfg = train_cfg(
        "stage=finetune",
        "stage.optimizer_impl=fused",  # CPU's default AdamW reads its host step counters with .item()
        "trainer.max_steps=12",
        "trainer.max_epochs=-1",
        "trainer.log_every_n_steps=5",
        "trainer.enable_progress_bar=true",
        "data.prepare.n_instruct=64",
    )
    with HostReads():
        _, objects = train(cfg)
    bar = objects["trainer"].progress_bar_callback
    assert isinstance(bar, (LossBarRich, LossBarTQDM)) and bar._loss is not None and bar._loss_step == 10
    in_fit = {step for step, _ in reads if step is not None}
    assert in_fit <= {1, 5, 10}, reads
    assert {1, 5, 10} <= in_fit  # the bar read the loss on those steps


def test_per_step_data_stats_are_logged_as_host_tensors() -> None:
    """`DataStatsCallback` logs each batch's padding fraction as a CPU tensor: given a Python number, Lightning
    would build a tensor on the module's device every step, and a blocking host-to-GPU copy waits for the GPU."""
    import lightning as L

    from dc.data.stats import DataStatsCallback

    class Recorder(L.LightningModule):  # records what the callback hands to `log_dict`
        def __init__(self) -> None:
            super().__init__()
            self.logged: list[dict] = []

        def log_dict(self, dictionary, **kwargs) -> None:
            self.logged.append(dict(dictionary))

    module = Recorder()
    batch = {"input_ids": torch.zeros(4, 10, dtype=torch.long), "num_tokens": 30, "num_padding": 10}
    DataStatsCallback().on_train_batch_start(None, module, batch, 0)
    (logged,) = module.logged
    value = logged["data/padding_frac"]
    assert isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dtype == torch.float32
    assert value.item() == pytest.approx(10 / 40)
