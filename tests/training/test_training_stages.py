"""Stages: stage 1 changes only the connector; LoRA leaves the base LLM untouched, saves adapters + connector
(not the pretrained base), reloads to the same logits, and merges to the same logits; stage config values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dc.models.builder import build_vlm
from dc.pipeline import build_datamodule, train
from dc.training.checkpoint import load_vlm
from dc.training.lora import LORA_KEY, export_lora, lora_target_names, merge_lora
from dc.utils.errors import ConfigError

from dc_testing import make_module
from train_helpers import compose_config, load_ckpt, single_thread  # noqa: F401

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def _cfg(tmp: Path, data_dir: Path, *overrides: str):
    return compose_config(
        "train",
        [
            "debug=fast",
            f"paths.output_dir={tmp}",
            f"paths.data_dir={data_dir}",
            "run_name=stage",
            "logger=[]",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=2",
            *overrides,
        ],
    )


def _fresh_state(cfg) -> dict[str, torch.Tensor]:
    module = make_module(cfg)
    module.configure_model()
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def pretrained_llm(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The tiny LLM saved as a Hugging Face folder, to exercise the `llm.pretrained` paths offline."""
    out = tmp_path_factory.mktemp("tiny_llm")
    cfg = _cfg(out, data_dir)
    torch.manual_seed(0)
    build_vlm(cfg).llm.model.save_pretrained(out)
    return out


def _logits(module, batch: dict) -> torch.Tensor:
    """Logits of a DCModule or a VLM on a collated batch."""
    vlm = getattr(module, "vlm", module)
    vlm.eval()
    with torch.no_grad():
        return vlm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            visual=batch["visual"],
        ).logits


def _batch(cfg) -> dict:
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_pretrain_changes_only_the_connector(tmp_path: Path, data_dir: Path) -> None:
    cfg = _cfg(tmp_path, data_dir, "stage=pretrain")
    before = _fresh_state(cfg)
    _, objects = train(cfg)
    after = objects["module"].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(k.startswith("vlm.connector.") for k in changed), sorted(changed)[:5]
    assert {k for k in before if k.startswith("vlm.connector.")} == changed  # every connector tensor moved


def test_lora_targets_every_llm_linear_but_lm_head(tmp_path: Path, data_dir: Path) -> None:
    vlm = build_vlm(_cfg(tmp_path, data_dir))
    assert lora_target_names(vlm.llm.model) == LLAMA_LINEARS
    assert lora_target_names(vlm.llm.model, exclude=["gate_proj"]) == [n for n in LLAMA_LINEARS if n != "gate_proj"]
    assert lora_target_names(vlm.llm.model, exclude=["lm_head"]) == LLAMA_LINEARS  # never a target: allowed
    with pytest.raises(ConfigError, match=r"stage.lora.exclude: \['qproj_typo'\] name no nn.Linear .*'q_proj'"):
        lora_target_names(vlm.llm.model, exclude=["gate_proj", "qproj_typo"])  # not silently ignored


@pytest.mark.parametrize(("alpha", "r"), [(0.5, 2), (3, 2), (256, 128)])
def test_lora_scaling_is_alpha_over_r(tmp_path: Path, data_dir: Path, alpha: float, r: int) -> None:
    """A fractional alpha is kept (int() made 0.5 a zero scaling: adapters that add nothing)."""
    from omegaconf import OmegaConf

    from dc.training.lora import apply_lora

    vlm = build_vlm(_cfg(tmp_path, data_dir))
    apply_lora(vlm.llm, OmegaConf.create({"r": r, "alpha": alpha, "dropout": 0.0, "bias": "none", "exclude": []}))
    scalings = {m.scaling["default"] for m in vlm.llm.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert scalings == {alpha / r}


def test_lora_stage_base_frozen_saved_reloaded_merged(tmp_path: Path, data_dir: Path, pretrained_llm: Path) -> None:
    cfg = _cfg(
        tmp_path,
        data_dir,
        "stage=lora",
        f"llm.pretrained={pretrained_llm}",
        "llm.config={}",
        "stage.lr=1e-2",
        "stage.connector_lr=1e-2",
    )  # large LRs so the adapters visibly matter
    assert cfg.stage.lora.r == 128 and cfg.stage.lora.alpha == 256
    before = _fresh_state(cfg)
    _, objects = train(cfg)
    module = objects["module"]
    after = module.state_dict()

    # base LLM (and encoder) untouched; adapters and connector trained
    base = [k for k in before if k.startswith("vlm.llm.") and LORA_KEY not in k]
    assert base and all(torch.equal(before[k], after[k]) for k in base)
    assert any(not torch.equal(before[k], after[k]) for k in after if ".lora_B." in k)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("vlm.connector."))
    assert {n.split(".")[-4] for n in after if ".lora_A." in n} == set(LLAMA_LINEARS)

    # the checkpoint holds adapters + connector (+ the random-init tiny encoder), not the pretrained base LLM
    ckpt_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = load_ckpt(ckpt_path)["state_dict"]
    assert {k for k in saved if k.startswith("vlm.llm.")} == {k for k in after if LORA_KEY in k}
    assert {k for k in after if k.startswith("vlm.connector.")} <= saved.keys()

    batch = _batch(cfg)
    trained = _logits(module, batch)
    reloaded, _, _ = load_vlm(str(ckpt_path))
    assert torch.equal(_logits(reloaded, batch), trained)

    # merged export equals the unmerged model, and the adapters do change the output
    base_only = make_module(cfg)
    base_only.configure_model()
    base_only.vlm.connector.load_state_dict(module.vlm.connector.state_dict())
    assert not torch.allclose(_logits(base_only, batch), trained, atol=1e-3)
    out = export_lora(reloaded, tmp_path / "export", merge=True)
    assert not any(LORA_KEY in n for n, _ in reloaded.llm.named_parameters())
    torch.testing.assert_close(_logits(reloaded, batch), trained, atol=1e-5, rtol=1e-4)
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == LLAMA_LINEARS and adapter_cfg["r"] == 128
    assert (out / "llm" / "config.json").exists() and (out / "connector.pt").exists()
    with pytest.raises(ValueError, match="no LoRA"):
        merge_lora(reloaded.llm)


def test_pretrained_llm_trains_in_train_mode(tmp_path: Path, data_dir: Path, pretrained_llm: Path) -> None:
    """HF `from_pretrained` returns eval-mode models; LoRA dropout must be active in training."""
    module = make_module(_cfg(tmp_path, data_dir, "stage=lora", f"llm.pretrained={pretrained_llm}", "llm.config={}"))
    module.configure_model()
    dropouts = [m for n, m in module.vlm.llm.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(m.training for m in dropouts) and module.vlm.llm.training
    assert not module.vlm.encoder.training  # the frozen tower stays in eval mode


def test_stage_recipes() -> None:
    pre = compose_config("train", ["stage=pretrain", "run_name=x", "paths.output_dir=/tmp/unused"]).stage
    fin = compose_config("train", ["stage=finetune", "run_name=x", "paths.output_dir=/tmp/unused"]).stage
    lora = compose_config("train", ["stage=lora", "run_name=x", "paths.output_dir=/tmp/unused"]).stage
    assert (list(pre.train), pre.lr, pre.global_batch_size, pre.warmup_ratio, pre.weight_decay) == (
        ["connector"],
        1e-3,
        256,
        0.03,
        0.0,
    )
    assert (list(fin.train), fin.lr, fin.global_batch_size) == (["connector", "llm"], 2e-5, 128)
    assert (list(lora.train), lora.lr, lora.connector_lr, lora.global_batch_size) == (["connector"], 2e-4, 2e-5, 128)
    assert (lora.lora.r, lora.lora.alpha, lora.lora.dropout) == (128, 256, 0.05)
    assert (pre.sharding, fin.sharding, lora.sharding) == ("SHARD_GRAD_OP", "FULL_SHARD", "FULL_SHARD")
