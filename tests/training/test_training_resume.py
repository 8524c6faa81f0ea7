"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed with `ckpt_path=last` ends bit-identical
to an uninterrupted run (weights and optimizer state), across gradient accumulation and an epoch boundary."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from dc.pipeline import train
from dc.training.callbacks import StepCheckpoint
from dc.training.checkpoint import resolve_ckpt_path
from dc.training.data import ResumableDataLoader, SkipSampler, resumable_loader

from dc_testing import make_module
from train_helpers import (  # noqa: F401 - single_thread is an autouse fixture
    assert_same_tensors,
    compose_config,
    flatten_optimizer,
    load_ckpt,
    run_train_py,
    single_thread,
)

# 16 instruct records in micro-batches of 4 → 4 batches per epoch; global batch 8 → accumulation 2 → 2 optimizer
# steps per epoch; 3 steps cross into epoch 1. A checkpoint every step; the crash comes right after the step-1
# checkpoint (epoch 0, 2 batches consumed). The straight and the resumed runs run in this process (imports are
# the slow part on a shared 2-core box); the killed one in a subprocess.
RUN = [
    "debug=fast",
    "stage=finetune",
    "data.prepare.n_instruct=16",
    "data.batch_size=4",
    "stage.global_batch_size=8",
    "trainer.max_steps=3",
    "trainer.max_epochs=-1",
    "callbacks.checkpoint.every_n_train_steps=1",
    "trainer.deterministic=true",
    "logger=[]",
    "trainer.enable_progress_bar=false",
    "run_name=resume",
]


# how the instruct loader (GroupedBatchSampler) forms its batches under RUN, recorded with the data position
BATCHING = {"batch_size": 4, "max_tokens": None, "group_by_modality_length": False, "megabatch_factor": 8}


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)  # trainer.deterministic=true sets it process-wide


def test_killed_and_resumed_run_is_bit_identical(tmp_path: Path, data_dir: Path, restore_determinism) -> None:
    common = [*RUN, f"paths.data_dir={data_dir}"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"

    train(compose_config("train", [*common, f"paths.output_dir={straight}"]))

    killed = run_train_py(
        [*common, "+callbacks.crash._target_=dc.training.callbacks.CrashAtStep", "+callbacks.crash.step=1"], crashed
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    mid = load_ckpt(crashed / "checkpoints" / "last.ckpt")
    assert mid["global_step"] == 1
    assert mid["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": 2, "items_per_batch": 1, "world_size": 1, "batching": BATCHING}
    ]

    _, objects = train(compose_config("train", [*common, f"paths.output_dir={crashed}", "ckpt_path=last"]))
    loader = objects["trainer"].train_dataloader
    assert loader.state_dict()["epoch"] == 1

    a = load_ckpt(straight / "checkpoints" / "last.ckpt")
    b = load_ckpt(crashed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 3
    assert a["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 2, "items_per_batch": 1, "world_size": 1, "batching": BATCHING}
    ]
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(flatten_optimizer(a["optimizer_states"][0]), flatten_optimizer(b["optimizer_states"][0]))
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 3
    init = make_module(compose_config("train", [*common, f"paths.output_dir={tmp_path / 'init'}"]))
    init.configure_model()
    changed = [
        k for k, v in init.state_dict().items() if k.startswith("vlm.llm.") and not torch.equal(v, a["state_dict"][k])
    ]
    assert changed  # the LLM did train: equality above is not vacuous


def _batches(loader: DataLoader) -> list[list[int]]:
    return [b.tolist() for b in loader]


def test_loader_state_skips_consumed_batches_and_keeps_epoch_order() -> None:
    data = list(range(20))
    plain = DataLoader(data, batch_size=3, shuffle=True, drop_last=True)
    loader = resumable_loader(plain, seed=7, num_replicas=1, rank=0)
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, SkipSampler)
    loader.sampler.set_epoch(1)
    full = _batches(loader)
    expected = torch.randperm(20, generator=torch.Generator().manual_seed(7 + 1)).tolist()  # DistributedSampler's rule
    assert full == [expected[i : i + 3] for i in range(0, 18, 3)]

    it = iter(loader)
    consumed = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2, "items_per_batch": 3, "world_size": 1}

    fresh = resumable_loader(
        DataLoader(data, batch_size=3, shuffle=True, drop_last=True), seed=7, num_replicas=1, rank=0
    )
    fresh.load_state_dict(state)
    rest = _batches(fresh)
    assert consumed + rest == full
    assert len(fresh) == len(full)  # Lightning counts the restored batches towards the epoch length
    fresh.sampler.set_epoch(2)  # the skip applied once: the next epoch is whole
    assert len(_batches(fresh)) == 6


def test_batch_sampler_loader_skips_whole_batches() -> None:
    """The data layer's loaders sample batches (`batch_size=None`, a DistributedSampler yielding index lists)."""

    class BatchIndices(DistributedSampler):
        def __iter__(self):
            perm = torch.randperm(12, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
            return iter([perm[i : i + 4] for i in range(0, 12, 4)])

        def __len__(self) -> int:
            return 3

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 12

        def __getitem__(self, idx):
            return torch.tensor(idx)

    make = lambda: resumable_loader(  # noqa: E731
        DataLoader(Data(), sampler=BatchIndices(range(12), num_replicas=1, rank=0, seed=3), batch_size=None),
        seed=0,
        num_replicas=1,
        rank=0,
    )
    full = _batches(make())
    resumed = make()
    resumed.load_state_dict({"epoch": 0, "batches": 1, "items_per_batch": 1})
    assert _batches(resumed) == full[1:]


def test_random_sampler_is_replaced_by_a_seeded_one() -> None:
    loader = resumable_loader(
        DataLoader(list(range(8)), batch_size=2, sampler=RandomSampler(range(8))), seed=1, num_replicas=2, rank=1
    )
    assert isinstance(loader.sampler.inner, DistributedSampler)
    assert loader.sampler.inner.rank == 1 and loader.sampler.inner.num_replicas == 2


def test_changed_batch_size_or_world_size_refuses_to_resume() -> None:
    loader = resumable_loader(DataLoader(list(range(8)), batch_size=2, shuffle=True), seed=0, num_replicas=1, rank=0)
    from dc.utils.errors import ConfigError  # printed as one line by train.py

    with pytest.raises(ConfigError, match="batch_size"):
        loader.load_state_dict({"epoch": 0, "batches": 1, "items_per_batch": 4, "world_size": 1})
    with pytest.raises(ConfigError, match="2 ranks"):
        loader.load_state_dict({"epoch": 0, "batches": 1, "items_per_batch": 2, "world_size": 2})


def test_changed_batching_of_a_batch_sampler_refuses_to_resume() -> None:
    """The JSON loaders sample whole batches (`batch_size=None`): their batching settings travel with the position."""
    from dc.data.grouping import GroupedBatchSampler

    lengths, has_image = np.arange(10, 42), np.ones(32, dtype=bool)

    class Batches(torch.utils.data.Dataset):  # a batch sampler's items are lists of indices
        def __len__(self) -> int:
            return 32

        def __getitem__(self, indices):
            return torch.tensor(indices)

    def make(batch_size: int, max_tokens: int | None = None) -> DataLoader:
        sampler = GroupedBatchSampler(lengths, has_image, batch_size, seed=3, max_tokens=max_tokens)
        return resumable_loader(DataLoader(Batches(), sampler=sampler, batch_size=None), seed=0, num_replicas=1, rank=0)

    first = make(4)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state["batching"]["batch_size"] == 4 and state["batches"] == 3
    resumed = make(4)
    resumed.load_state_dict(state)
    assert _batches(resumed) == _batches(make(4))[3:]
    with pytest.raises(ValueError, match=r"data.batch_size: 4 -> 2"):
        make(2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"data.max_tokens: None -> 64"):
        make(4, max_tokens=64).load_state_dict(state)


class _FakeStrategy:
    def barrier(self, name: str | None = None) -> None:
        pass


class _FakeTrainer:
    """What ModelCheckpoint._save_checkpoint touches."""

    global_step = 7
    is_global_zero = True
    loggers: list = []
    strategy = _FakeStrategy()

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def save_checkpoint(self, path: str, weights_only: bool = False) -> None:
        Path(path).write_bytes(b"partial")
        if self.fail:
            raise KeyboardInterrupt("preempted while writing")
        Path(path).write_bytes(b"new")


def test_checkpoint_is_replaced_only_when_complete(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"old")
    cb = StepCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    with pytest.raises(KeyboardInterrupt):
        cb._save_checkpoint(_FakeTrainer(fail=True), str(last))
    assert last.read_bytes() == b"old"  # the previous checkpoint survives an interrupted write
    cb._save_checkpoint(_FakeTrainer(fail=False), str(last))
    assert last.read_bytes() == b"new" and not (tmp_path / "last.ckpt.partial").exists()
    assert cb._last_checkpoint_saved == str(last) and cb._last_global_step_saved == 7


def test_ckpt_path_last_and_auto(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    assert resolve_ckpt_path(None, ckpt_dir) is None
    assert resolve_ckpt_path("auto", ckpt_dir) is None  # nothing yet: fresh start
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        resolve_ckpt_path("last", ckpt_dir)
    ckpt_dir.mkdir()
    (ckpt_dir / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("last", ckpt_dir) == str(ckpt_dir / "last.ckpt")
    assert resolve_ckpt_path("auto", ckpt_dir) == str(ckpt_dir / "last.ckpt")


@pytest.mark.parametrize(("epochs", "crash_step"), [(1, 1), (2, 2)], ids=["mid-epoch", "epoch-boundary"])
def test_epoch_based_schedule_resumes_bit_identically(
    tmp_path: Path, data_dir: Path, restore_determinism, epochs: int, crash_step: int
) -> None:
    """The default schedule (`max_epochs`, no `max_steps`): killed mid-epoch or right at an epoch boundary."""
    common = [
        *[a for a in RUN if not a.startswith(("trainer.max_steps", "trainer.max_epochs"))],
        "trainer.max_steps=-1",
        f"trainer.max_epochs={epochs}",
        f"paths.data_dir={data_dir}",
    ]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(compose_config("train", [*common, f"paths.output_dir={straight}"]))
    killed = run_train_py(
        [*common, "+callbacks.crash._target_=dc.training.callbacks.CrashAtStep", f"+callbacks.crash.step={crash_step}"],
        crashed,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load_ckpt(crashed / "checkpoints" / "last.ckpt")["global_step"] == crash_step
    train(compose_config("train", [*common, f"paths.output_dir={crashed}", "ckpt_path=last"]))
    a = load_ckpt(straight / "checkpoints" / "last.ckpt")
    b = load_ckpt(crashed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * epochs  # 4 batches / accumulation 2 per epoch
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(flatten_optimizer(a["optimizer_states"][0]), flatten_optimizer(b["optimizer_states"][0]))
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 2 * epochs


def test_a_run_ended_by_max_steps_inside_an_epoch_extends_as_if_never_stopped(
    tmp_path: Path, data_dir: Path, restore_determinism
) -> None:
    """`max_steps=1` stops after 2 of epoch 0's 4 batches; extending it to 3 steps must finish epoch 0 and go on
    into epoch 1 as a straight 3-step run does (the final checkpoint records the epoch as unfinished). Weights are
    not compared: the schedule was configured for 1 step (its LR after step 1 is 0), as the user asked."""
    # no periodic checkpoint at step 1: the final one (written at the end of training) is the one resumed
    common = [*RUN, f"paths.data_dir={data_dir}", "callbacks.checkpoint.every_n_train_steps=100"]
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    train(compose_config("train", [*common, f"paths.output_dir={straight}"]))
    train(compose_config("train", [*common, f"paths.output_dir={extended}", "trainer.max_steps=1"]))
    first = load_ckpt(extended / "checkpoints" / "last.ckpt")
    assert (first["global_step"], first["epoch"]) == (1, 0)
    assert first["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": 2, "items_per_batch": 1, "world_size": 1, "batching": BATCHING}
    ]
    train(compose_config("train", [*common, f"paths.output_dir={extended}", "ckpt_path=last"]))
    a = load_ckpt(straight / "checkpoints" / "last.ckpt")
    b = load_ckpt(extended / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 3
    assert (
        a["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        == b["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        == [{"epoch": 1, "batches": 2, "items_per_batch": 1, "world_size": 1, "batching": BATCHING}]
    )
    assert a["epoch"] == b["epoch"] == 1
    assert a["loops"]["fit_loop"]["epoch_progress"] == b["loops"]["fit_loop"]["epoch_progress"]


@pytest.mark.parametrize(
    "length",
    [["trainer.max_steps=1"], ["trainer.max_steps=-1", "trainer.max_epochs=1"]],
    ids=["max_steps-mid-epoch", "max_epochs-after-the-last-batch"],
)
def test_re_entering_a_finished_run_trains_nothing_and_keeps_its_metrics(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture, length: list[str]
) -> None:
    """A requeued job (`ckpt_path=auto`) of a run that already finished: no step, no error, the earlier metrics
    kept (in metrics.json and as the returned metrics a sweeper reads), the weights untouched. The second case
    ends on a periodic checkpoint taken after the epoch's last batch (Lightning completes that epoch on restore)."""
    args = [*RUN, f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}", *length]
    args += ["ckpt_path=auto", "optimized_metric=train/loss"]
    first, _ = train(compose_config("train", args))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    before = load_ckpt(ckpt)
    assert "train/loss" in first
    second, objects = train(compose_config("train", args))
    assert objects["trainer"].global_step == load_ckpt(ckpt)["global_step"]
    assert second["train/loss"] == first["train/loss"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["train/loss"] == first["train/loss"]
    after = load_ckpt(ckpt)  # rewritten in the second case (the epoch now recorded complete), the same weights
    assert after["global_step"] == before["global_step"]
    assert_same_tensors(after["state_dict"], before["state_dict"])
    assert "nothing to train" in capsys.readouterr().out
