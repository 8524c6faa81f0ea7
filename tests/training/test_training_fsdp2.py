"""FSDP2 (`trainer=fsdp`, `fully_shard` through Lightning's `ModelParallelStrategy`), run on CPU processes (gloo).

Fast: `shard_vlm` on a one-process group — units, DTensor parameters, frozen parts in bf16 next to fp32
trainable ones, and the same loss and gradients as the unsharded model. Slow (2 CPU processes through
`train.py`): a run resumed from a sharded (DTensor) checkpoint, and one resumed from that checkpoint consolidated
to a single file, end identical to an uninterrupted run; rank-0-only loading of a pretrained LLM gives the same
weights as every rank loading it.
"""

from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from dc.export.consolidate import consolidate, save_atomic
from dc.training.fsdp2 import VLMFSDP2Strategy, fsdp_units, shard_vlm
from dc.training.precision import compute_dtype, store_frozen
from dc.utils.instantiate import instantiate

from dc_testing import make_module
from train_helpers import assert_same_tensors, compose_config, flatten_optimizer, load_ckpt, run_train_py, single_thread  # noqa: F401


@pytest.fixture
def one_process_group(tmp_path: Path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def _module(tmp_path: Path, data_dir: Path, *overrides: str):
    cfg = compose_config(
        "train", ["debug=fast", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", "run_name=x", *overrides]
    )
    module = make_module(cfg)
    module.configure_model()
    return cfg, module


def _batch(module, seed: int = 0) -> dict:
    """Two samples with one image each, right-padded, with the host layout the training step adds."""
    from dc.constants import IMAGE_TOKEN_INDEX
    from dc.models.visual import VisualMeta

    vlm = module.vlm
    g = torch.Generator().manual_seed(seed)
    n = vlm.num_visual_tokens
    size = vlm.encoder.layout.image_size
    ids = torch.randint(3, 200, (2, n + 12), generator=g)
    ids[:, 1 : n + 1] = IMAGE_TOKEN_INDEX
    mask = torch.ones_like(ids)
    mask[1, n + 8 :] = 0
    labels = ids.masked_fill((ids == IMAGE_TOKEN_INDEX) | (mask == 0), -100)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": torch.randn(2, 3, size, size, generator=g),
        "visual": [VisualMeta(views=1, tokens=n)] * 2,
    }
    return module.on_before_batch_transfer(batch, 0)


@pytest.mark.parametrize("stage", ["finetune", "lora", "pretrain"])
def test_shard_vlm_units_dtypes_and_same_gradients(
    stage: str, tmp_path: Path, data_dir: Path, one_process_group
) -> None:
    """Frozen and trainable parameters (LoRA adapters on a frozen base too) mixed inside FSDP2 units."""
    no_dropout = ["stage.lora.dropout=0.0"] if stage == "lora" else []  # LoRA dropout would draw different masks
    _, module = _module(tmp_path, data_dir, f"stage={stage}", *no_dropout)
    store_frozen(module.vlm, torch.bfloat16)  # what configure_model does under bf16 compute
    # param_dtype fp32 gathers the bf16-stored encoder as fp32 (a lossless cast): the reference computes the same way
    reference = copy.deepcopy(module.vlm).float()
    batch = _batch(module)
    units = shard_vlm(
        module.vlm,
        mesh=one_process_group,
        param_dtype=torch.float32,
        reduce_dtype=torch.float32,
        wrap_vision_blocks=True,
    )
    vlm = module.vlm
    assert units == [*vlm.encoder.blocks(), vlm.connector, *vlm.llm.decoder_layers(), vlm]
    assert units == fsdp_units(vlm)
    from torch.distributed.fsdp import FSDPModule

    assert all(isinstance(u, FSDPModule) for u in units)
    params = dict(vlm.named_parameters())
    assert all(isinstance(p, DTensor) for p in params.values())
    frozen = {p.dtype for p in params.values() if not p.requires_grad}
    trained = {p.dtype for n, p in params.items() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}  # mixed inside units: fine in FSDP2
    if stage == "lora":
        assert all("lora_" in n for n, p in params.items() if p.requires_grad and ".llm." in n)

    def loss_and_grads(model):
        loss = model(**{k: v for k, v in batch.items()}).loss
        loss.backward()
        return loss.detach(), {
            n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad)
            for n, p in model.named_parameters()
            if p.requires_grad
        }

    want, g_want = loss_and_grads(reference)
    got, g_got = loss_and_grads(vlm)
    torch.testing.assert_close(got, want)
    assert g_got.keys() == g_want.keys()
    for name in g_want:
        torch.testing.assert_close(g_got[name], g_want[name], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("per", ["step", "micro_batch"])
def test_accumulation_reduces_once_per_step_or_every_micro_batch(
    per: str, tmp_path: Path, data_dir: Path, one_process_group
) -> None:
    """`reduce_grads_per`: inside Lightning's `block_backward_sync` (every micro-batch but a window's last) `step`
    leaves the sharded gradients unset (nothing reduced yet); after the window both give the sum of the
    micro-batches' gradients computed on the unsharded model."""
    _, module = _module(tmp_path, data_dir, "stage=finetune")
    reference = copy.deepcopy(module.vlm)
    batches = [_batch(module, seed=0), _batch(module, seed=1)]
    strategy = VLMFSDP2Strategy(reduce_grads_per=per)
    with strategy.block_backward_sync():  # before sharding: no units, nothing to do
        pass
    strategy.units = shard_vlm(
        module.vlm, mesh=one_process_group, param_dtype=torch.float32, reduce_dtype=torch.float32
    )
    vlm = module.vlm
    trained = {n: p for n, p in vlm.named_parameters() if p.requires_grad}
    with strategy.block_backward_sync():
        vlm(**batches[0]).loss.backward()
    reduced = {n for n, p in trained.items() if p.grad is not None}
    assert reduced == (set() if per == "step" else set(trained))
    vlm(**batches[1]).loss.backward()
    for batch in batches:
        reference(**batch).loss.backward()
    want = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert want.keys() == trained.keys()
    for name, param in trained.items():
        torch.testing.assert_close(param.grad.full_tensor(), want[name], msg=lambda m, name=name: f"{name}: {m}")
    groups = [unit._get_fsdp_state()._fsdp_param_group for unit in strategy.units]
    assert all(group.reduce_grads for group in groups if group is not None)  # sync restored after the block
    with pytest.raises(ValueError, match="trainer.strategy.reduce_grads_per='layer'"):
        VLMFSDP2Strategy(reduce_grads_per="layer")


def test_strategy_options(tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(
        "train",
        ["debug=fast", "trainer=fsdp", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", "run_name=x"],
    )
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, VLMFSDP2Strategy)
    assert strategy.sharding_strategy == "FULL_SHARD" and strategy.state_dict_type == "full"
    assert strategy.param_dtype == torch.bfloat16
    stage = OmegaConf.create
    assert strategy.reduce_dtype(stage({"train": ["connector", "llm"]})) == torch.float32  # full fine-tune
    assert strategy.reduce_dtype(stage({"train": ["connector"]})) == torch.bfloat16
    assert strategy.reduce_dtype(stage({"train": ["connector"], "lora": {"r": 8}})) == torch.bfloat16
    assert VLMFSDP2Strategy(reduce_dtype="float32").reduce_dtype(stage({"train": ["connector"]})) == torch.float32
    assert VLMFSDP2Strategy(state_dict_type="sharded")._save_distributed_checkpoint
    with pytest.raises(ValueError, match="stage.sharding='NO_SHARD'"):
        VLMFSDP2Strategy(sharding_strategy="NO_SHARD")
    with pytest.raises(ValueError, match="state_dict_type"):
        VLMFSDP2Strategy(state_dict_type="local")
    with pytest.raises(ValueError, match="param_dtype"):
        VLMFSDP2Strategy(param_dtype="int8")

    class Trainer:  # what `compute_dtype` reads: the strategy's param dtype wins over the precision string
        precision = "32-true"

    trainer = Trainer()
    assert compute_dtype(trainer) == torch.float32
    trainer.strategy = strategy
    assert compute_dtype(trainer) == torch.bfloat16
    trainer.precision, trainer.strategy = "bf16-mixed", None
    assert compute_dtype(trainer) == torch.bfloat16


# --- 2 CPU processes through train.py (slow) --------------------------------------------------------------------
FSDP2 = [
    "debug=fast",
    "stage=finetune",
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.strategy.param_dtype=float32",
    "data.prepare.n_instruct=32",
    "stage.global_batch_size=8",
    "trainer.max_epochs=-1",
    "callbacks.checkpoint.every_n_train_steps=2",
    "logger=[]",
    "trainer.enable_progress_bar=false",
    "run_name=fsdp2",
]


def _run(run_dir: Path, data_dir: Path, *overrides: str, crash_at: int | None = None) -> None:
    crash = ["+callbacks.crash._target_=dc.training.callbacks.CrashAtStep", f"+callbacks.crash.step={crash_at}"]
    done = run_train_py(
        [*FSDP2, f"paths.data_dir={data_dir}", *overrides, *(crash if crash_at else [])], run_dir, timeout=600
    )
    expected = -signal.SIGKILL if crash_at else 0
    assert done.returncode == expected, done.stderr[-4000:]


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly_and_consolidates(tmp_path: Path, data_dir: Path) -> None:
    """Killed right after the step-2 checkpoint (a DTensor folder), resumed from the folder and from its
    consolidated single file: both end identical to the uninterrupted 4-step run."""
    straight, resumed, from_file = tmp_path / "straight", tmp_path / "resumed", tmp_path / "from_file"
    sharded = "trainer.strategy.state_dict_type=sharded"
    _run(straight, data_dir, "trainer.max_steps=4")
    _run(resumed, data_dir, "trainer.max_steps=4", sharded, crash_at=2)
    folder = resumed / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and (folder / "meta.pt").exists()  # written by both ranks
    single = consolidate(folder)
    save_atomic(single, tmp_path / "consolidated.ckpt")
    assert single["global_step"] == 2 and len(single["optimizer_states"]) == 1
    _run(from_file, data_dir, "trainer.max_steps=4", f"ckpt_path={tmp_path / 'consolidated.ckpt'}")
    _run(resumed, data_dir, "trainer.max_steps=4", sharded, "ckpt_path=last")

    want = load_ckpt(straight / "checkpoints" / "last.ckpt")
    got_file = load_ckpt(from_file / "checkpoints" / "last.ckpt")
    got_folder = consolidate(resumed / "checkpoints" / "last.ckpt")
    assert want["global_step"] == got_file["global_step"] == got_folder["global_step"] == 4
    assert_same_tensors(want["state_dict"], got_file["state_dict"])
    # the sharded checkpoint holds every key (the distributed loader needs them); compare the ones a full one keeps
    assert_same_tensors(want["state_dict"], {k: got_folder["state_dict"][k] for k in want["state_dict"]})
    assert_same_tensors(
        flatten_optimizer(want["optimizer_states"][0]), flatten_optimizer(got_file["optimizer_states"][0])
    )
    weights = consolidate(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert weights["state_dict"].keys() == want["state_dict"].keys() and "optimizer_states" not in weights


@pytest.mark.slow
def test_reducing_once_per_step_trains_like_every_micro_batch(tmp_path: Path, data_dir: Path) -> None:
    """2 processes × 2 accumulated micro-batches per step, 3 steps: `reduce_grads_per=step` (which reached the
    strategy: its log line) ends with the weights and optimizer state of the default (fp32: equal up to the
    summation order). That the first micro-batch's reduction is really skipped is the one-process test above."""
    common = ["trainer.max_steps=3", "data.batch_size=2"]  # global 8 = 2 per micro-batch × 2 ranks × 2 accumulated
    _run(tmp_path / "micro", data_dir, *common)
    _run(tmp_path / "step", data_dir, *common, "trainer.strategy.reduce_grads_per=step")
    want, got = (load_ckpt(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("micro", "step"))
    assert want["global_step"] == got["global_step"] == 3
    assert want["state_dict"].keys() == got["state_dict"].keys()
    changed = 0
    for name, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], value, rtol=1e-5, atol=1e-6)
        changed += int(".llm." in name)
    assert changed > 0  # the LLM trains in this stage
    opt_want, opt_got = (flatten_optimizer(c["optimizer_states"][0]) for c in (want, got))
    assert opt_want.keys() == opt_got.keys() and opt_want
    for name, value in opt_want.items():
        torch.testing.assert_close(opt_got[name], value, rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    step_log, micro_log = ((tmp_path / d / "train.log").read_text() for d in ("step", "micro"))
    assert "× 2 per device × 2 accumulation" in step_log
    assert "reduce torch.float32 per step" in step_log and "reduce torch.float32 per micro-batch" in micro_log


@pytest.mark.slow
def test_rank0_only_loading_gives_the_same_weights(tmp_path: Path, data_dir: Path) -> None:
    """`cpu_ram_efficient_loading`: rank 1 builds the pretrained LLM on meta and receives rank 0's weights."""
    from dc.models.builder import build_vlm

    base = compose_config(
        "train", ["debug=fast", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", "run_name=x"]
    )
    torch.manual_seed(0)
    build_vlm(base).llm.model.save_pretrained(tmp_path / "llm")
    common = [f"llm.pretrained={tmp_path / 'llm'}", "llm.config={}", "trainer.max_steps=1"]
    _run(tmp_path / "meta", data_dir, *common, "trainer.strategy.cpu_ram_efficient_loading=true")
    _run(tmp_path / "all", data_dir, *common, "trainer.strategy.cpu_ram_efficient_loading=false")
    log = (tmp_path / "meta" / "train.log").read_text()
    assert "FSDP2 FULL_SHARD" in log
    meta, every = (load_ckpt(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("meta", "all"))
    assert_same_tensors(meta["state_dict"], every["state_dict"])


# --- one GPU (deselected by default: -m gpu) ---------------------------------------------------------------------
GPU_RUN = [
    "debug=fast",
    "stage=finetune",
    "trainer=fsdp",
    "trainer.devices=1",
    "data.prepare.n_instruct=32",
    "stage.global_batch_size=4",
    "trainer.max_epochs=-1",
    "callbacks.checkpoint.every_n_train_steps=2",
    "logger=[]",
    "trainer.enable_progress_bar=false",
    "run_name=fsdp2_gpu",
    "llm.activation_checkpointing=selective",
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp2_one_gpu_bf16_resume(tmp_path: Path, data_dir: Path) -> None:
    """bf16-mixed FSDP2 on one GPU: killed after the step-2 (sharded) checkpoint and resumed, it ends where the
    uninterrupted run ends (to GPU non-determinism), with frozen parts stored in bf16."""
    common = [*GPU_RUN, f"paths.data_dir={data_dir}", "trainer.max_steps=4"]
    sharded = "trainer.strategy.state_dict_type=sharded"
    crash = ["+callbacks.crash._target_=dc.training.callbacks.CrashAtStep", "+callbacks.crash.step=2"]
    straight = run_train_py([*common, sharded], tmp_path / "straight", timeout=300)
    assert straight.returncode == 0, straight.stderr[-4000:]
    killed = run_train_py([*common, sharded, *crash], tmp_path / "resumed", timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    resumed = run_train_py([*common, sharded, "ckpt_path=last"], tmp_path / "resumed", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = (tmp_path / "straight" / "train.log").read_text()
    assert "FSDP2 FULL_SHARD" in log and "stored" in log  # frozen encoder stored in bf16
    a = consolidate(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = consolidate(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    exact = all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    print(f"bit-identical after resume: {exact}")
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k].float(), a["state_dict"][k].float(), rtol=1e-3, atol=1e-5, msg=k)
    assert a["state_dict"]["vlm.encoder.model.embeddings.patch_embedding.weight"].dtype == torch.bfloat16
    assert a["state_dict"]["vlm.connector.projector.0.weight"].dtype == torch.float32
