"""Launch surface: trainer configs, the SLURM launcher config, the torchrun scripts, sharded-checkpoint
consolidation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from dc.export.consolidate import consolidate
from dc.export.consolidate import main as consolidate_cli
from dc.lit_module import model_config
from dc.utils.instantiate import instantiate

from train_helpers import CONFIGS, ROOT, compose_config, single_thread  # noqa: F401


def test_ddp_trainer_config_instantiates_on_cpu(tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.precision=32-true",
            f"paths.output_dir={tmp_path}",
            "run_name=x",
        ],
    )
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is False
    assert trainer.gradient_clip_val == 1.0


def test_slurm_launcher_config() -> None:
    raw = OmegaConf.load(Path(CONFIGS) / "hydra" / "launcher" / "slurm.yaml")
    assert list(raw.defaults) == ["submitit_slurm"]
    assert raw.tasks_per_node == raw.gpus_per_node == 8  # one task (rank) per GPU
    # every key is a field of hydra_submitit_launcher's SlurmQueueConf (1.2.0)
    fields = {
        "submitit_folder",
        "timeout_min",
        "cpus_per_task",
        "gpus_per_node",
        "tasks_per_node",
        "mem_gb",
        "nodes",
        "name",
        "stderr_to_stdout",
        "partition",
        "qos",
        "comment",
        "constraint",
        "exclude",
        "gres",
        "cpus_per_gpu",
        "gpus_per_task",
        "mem_per_gpu",
        "mem_per_cpu",
        "account",
        "signal_delay_s",
        "max_num_timeout",
        "additional_parameters",
        "array_parallelism",
        "setup",
    }
    assert set(raw.keys()) - {"defaults"} <= fields


def test_slurm_launcher_composes_when_the_plugin_is_installed() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "run_name=x"], return_hydra_config=True)
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node


def _dry(script: str, *args: str, **env: str) -> list[str]:
    out = subprocess.run(
        [str(ROOT / "scripts" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1", "GPUS_PER_NODE": "8", **env},
        check=True,
    )
    return out.stdout.strip().splitlines()


def test_torchrun_script_passes_devices_nodes_and_one_run_dir() -> None:
    (line,) = _dry(
        "torchrun.sh",
        "stage=finetune",
        "trainer=fsdp",
        NNODES="2",
        NODE_RANK="1",
        RUN_DIR="/shared/r",
        MASTER_ADDR="node0",
    )
    for part in [
        "torchrun",
        "--nnodes 2",
        "--nproc_per_node 8",
        "--node_rank 1",
        "--master_addr node0",
        "train.py",
        "trainer.devices=8",
        "trainer.num_nodes=2",
        "hydra.run.dir=/shared/r",
        "stage=finetune",
        "trainer=fsdp",
    ]:
        assert part in line
    failed = subprocess.run(
        [str(ROOT / "scripts" / "torchrun.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1", "GPUS_PER_NODE": "8", "NNODES": "2"},
    )
    assert failed.returncode != 0 and "RUN_DIR" in failed.stderr  # multi-node needs one shared run folder


def test_torchrun_dry_run_without_gpus_prints_the_command(tmp_path: Path) -> None:
    """DRY_RUN=1 on a machine whose nvidia-smi finds no driver, GPUS_PER_NODE unset: the command with 1 GPU (said)."""
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "GPUS_PER_NODE"}
    env.update(DRY_RUN="1", PATH=f"{tmp_path}:{env['PATH']}")
    script = str(ROOT / "scripts" / "torchrun.sh")
    dry = subprocess.run([script, "stage=pretrain"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "--nproc_per_node 1 " in dry.stdout and "trainer.devices=1 " in dry.stdout
    assert "the command shows GPUS_PER_NODE=1" in dry.stderr
    env.pop("DRY_RUN")
    real = subprocess.run([script, "stage=pretrain"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert real.returncode == 1 and "no GPUs visible; set GPUS_PER_NODE" in real.stderr  # a real launch still stops


def test_sweep_script_runs_one_distributed_job_per_grid_point(tmp_path: Path) -> None:
    lines = _dry(
        "sweep_torchrun.sh",
        "connector=sti,sci,dci",
        "llm=vicuna7b,llama3_8b",
        "--",
        "stage=pretrain",
        SWEEP_DIR=str(tmp_path / "sw"),
    )
    assert len(lines) == 6 and all(line.startswith("torchrun ") for line in lines)
    assert "connector=sti llm=vicuna7b stage=pretrain" in lines[0]
    assert "connector=dci llm=llama3_8b stage=pretrain" in lines[5]
    assert f"hydra.run.dir={tmp_path / 'sw'}/5-connector-dci_llm-llama3_8b" in lines[5]


def test_consolidate_sharded_checkpoint(tmp_path: Path) -> None:
    """A folder as `state_dict_type=sharded` writes it → one file; --weights-only keeps what load_vlm needs."""
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save

    cfg = compose_config("train", ["stage=pretrain", "llm=vicuna7b", f"paths.output_dir={tmp_path}", "run_name=x"])
    state = {
        "vlm.connector.projector.0.weight": torch.ones(2, 2),
        "vlm.llm.model.lm_head.weight": torch.zeros(3, 2),
        "vlm.encoder.model.embeddings.weight": torch.zeros(1),
    }
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    _distributed_checkpoint_save({"model": state, "optimizer_0": {"state": {}, "param_groups": []}}, folder)
    hparams = {"model": model_config(cfg), "stage": OmegaConf.to_container(cfg.stage, resolve=True), "seed": 0}
    torch.save({"global_step": 5, "hyper_parameters": hparams}, folder / "meta.pt")

    full = consolidate(folder)
    assert full["global_step"] == 5 and set(full["state_dict"]) == set(state) and "optimizer_states" in full
    out = tmp_path / "small.ckpt"
    consolidate_cli([str(folder), str(out), "--weights-only"])
    small = torch.load(out, weights_only=True)
    # pretrained vicuna + clip (tiny encoder is random-init: kept) → the LLM weights are dropped
    assert "vlm.llm.model.lm_head.weight" not in small["state_dict"]
    assert torch.equal(small["state_dict"]["vlm.connector.projector.0.weight"], torch.ones(2, 2))
    assert "optimizer_states" not in small
