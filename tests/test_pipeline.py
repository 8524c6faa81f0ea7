"""The walking skeleton end to end: configs compose, tiny parts build, train → checkpoint → eval works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.builder import build_vlm
from dc.pipeline import evaluate, train

from dc_testing import CONFIGS, ROOT, compose_config

GROUPS = ["encoder", "connector", "llm", "stage", "data", "trainer", "logger", "callbacks"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIGS) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"{group}={option}", f"paths.output_dir={tmp_path}", "run_name=x"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert group in container


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={option}", f"paths.output_dir={tmp_path}", "run_name=x"])
    OmegaConf.to_container(cfg, resolve=True)


def test_real_config_shows_with_cfg_job() -> None:
    """`python train.py connector=mlp encoder=siglip llm=vicuna7b --cfg job` prints the real composed config."""
    cmd = [sys.executable, "train.py", "connector=mlp", "encoder=siglip", "llm=vicuna7b", "--cfg", "job"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    shown = OmegaConf.create(out)
    assert shown.llm.pretrained == "lmsys/vicuna-7b-v1.5"
    assert shown.encoder.model.pretrained == "google/siglip-so400m-patch14-384"
    assert shown.connector._target_ == "dc.models.connectors.MLPConnector"


@pytest.mark.parametrize("encoder", ["tiny_clip", "tiny_siglip"])
@pytest.mark.parametrize("connector", ["mlp", "sti", "sci", "dci", "dci_efficient"])
def test_tiny_parts_instantiate_and_splice(encoder: str, connector: str, train_cfg) -> None:
    cfg = train_cfg(f"encoder={encoder}", f"connector={connector}")
    torch.manual_seed(0)
    vlm = build_vlm(cfg)
    size = cfg.encoder.layout.image_size
    n = vlm.num_visual_tokens
    tok = vlm.llm.tokenizer
    text = tok.encode(" hello there", add_special_tokens=False)
    ids = torch.tensor([[tok.bos_token_id] + [IMAGE_TOKEN_INDEX] * n + text])
    pixels = torch.randn(1, 3, size, size)
    embeds = vlm.embed_inputs(ids, pixels)
    # Independent expectation: the visual tokens land exactly at the placeholder positions, in order,
    # and the text positions hold the plain token embeddings.
    visual = vlm.encode_images(pixels)[0]
    assert visual.shape == (n, cfg.llm.hidden_size)
    assert torch.equal(embeds[0, 1 : 1 + n], visual)
    table = vlm.llm.model.get_input_embeddings().weight
    assert torch.equal(embeds[0, 1 + n :], table[text])
    assert torch.equal(embeds[0, 0], table[tok.bos_token_id])
    out = vlm(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=ids.clamp(min=0))
    assert torch.isfinite(out.loss)


def test_loss_only_on_supervised_tokens(train_cfg) -> None:
    """The loss equals cross-entropy over assistant tokens only, computed here by hand."""
    cfg = train_cfg()
    vlm = build_vlm(cfg)
    n = vlm.num_visual_tokens
    size = cfg.encoder.layout.image_size
    ids = torch.tensor([[1] + [IMAGE_TOKEN_INDEX] * n + [20, 21, 22, 23, 24]])
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]
    pixels = torch.randn(1, 3, size, size)
    out = vlm(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=labels)
    # the training loss holds no logits (llm.loss: supervised rows only); a forward without labels gives them
    logits = vlm(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels).logits[0]
    # positions -3 and -2 predict the last two tokens
    expected = torch.nn.functional.cross_entropy(logits[-3:-1], ids[0, -2:])
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_fast_dev_run_trains(train_cfg) -> None:
    cfg = train_cfg("+trainer.fast_dev_run=2", "callbacks=none")
    metrics, objs = train(cfg)
    assert objs["trainer"].global_step == 2
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_train_then_eval_on_checkpoint(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("trainer.max_steps=2")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    root = Path(cfg.data.image_folder).parent
    eval_cfg = compose_config(
        "eval",
        [
            f"ckpt_path={ckpt}",
            f"paths.output_dir={tmp_path / 'eval'}",
            "limit=8",
            "batch_size=4",
            f"benchmark.root={root}",
        ],
    )
    metrics, objs = evaluate(eval_cfg)
    assert 0.0 <= metrics["synthetic/accuracy"] <= 100.0 and "synthetic/blank_accuracy" in metrics
    lines = (tmp_path / "eval" / "synthetic_answers.jsonl").read_text().splitlines()
    assert len(lines) == 8
    saved = json.loads((tmp_path / "eval" / "synthetic_results.json").read_text())
    assert saved["results"]["synthetic"]["metrics"]["accuracy"] == metrics["synthetic/accuracy"]


def test_pretrained_loading_by_path(train_cfg, tmp_path: Path) -> None:
    """Real-model configs load with `from_pretrained`; here from tiny models saved to a directory."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from dc.models.llms.hf_causal import HFCausalLM

    from dc_testing import make_template, tiny_tokenizer

    cfg = train_cfg()
    enc_dir, llm_dir = tmp_path / "clip", tmp_path / "llm"
    layout = cfg.encoder.layout
    torch.manual_seed(1)
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=layout.hidden_size,
            image_size=layout.image_size,
            patch_size=layout.patch_size,
            num_hidden_layers=layout.num_layers,
            intermediate_size=128,
            num_attention_heads=4,
        )
    )
    clip.save_pretrained(enc_dir)
    node = {k: v for k, v in OmegaConf.to_container(cfg.llm).items() if k not in ("_target_", "template", "tokenizer")}
    llm = HFCausalLM(template=make_template("vicuna_v1"), tokenizer=tiny_tokenizer(), **node)
    llm.model.save_pretrained(llm_dir)
    llm.tokenizer.save_pretrained(llm_dir)

    cfg = train_cfg(
        f"encoder.model.pretrained={enc_dir}", f"llm.pretrained={llm_dir}", "llm.tokenizer=null", "trainer.max_steps=1"
    )
    vlm = build_vlm(cfg)
    depth = vlm.encoder.depth
    assert len(vlm.encoder.model.encoder.layers) == depth == 23  # DCI needs index 23; block 24 is never built
    saved = clip.state_dict()
    for name, value in vlm.encoder.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    for name, value in vlm.llm.model.state_dict().items():
        assert torch.equal(value, llm.model.state_dict()[name]), name
    assert vlm.llm.tokenizer.encode(" red circle") == llm.tokenizer.encode(" red circle")
    metrics, objs = train(cfg)  # the full pipeline runs on the loaded parts
    assert objs["trainer"].global_step == 1
    # frozen pretrained parts are not duplicated into the checkpoint
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any(k.startswith("vlm.encoder.") for k in state)
    assert any(k.startswith("vlm.connector.") for k in state) and any(k.startswith("vlm.llm.") for k in state)


def test_multirun_on_tiny_parts(tmp_path: Path, data_dir: Path) -> None:
    """`python train.py -m connector=mlp,dci ...` runs one job per sweep point on CPU."""
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "connector=mlp,dci",
        "debug=fast",
        "trainer.max_steps=1",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.enable_progress_bar=false",
    ]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0-mlp-tiny_clip-tiny-finetune", "1-dci-tiny_clip-tiny-finetune"]
    for job in jobs:
        assert (tmp_path / job / "checkpoints" / "last.ckpt").exists()


def test_a_refused_multirun_point_does_not_end_the_sweep(tmp_path: Path, data_dir: Path) -> None:
    """`train.py -m` with a bad value in one point: that point prints its one-line error, the next point still
    trains, and the sweep exits non-zero (Hydra names the failed point)."""
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "stage.optimizer_impl=nope,for_loop",
        "debug=fast",
        "trainer.max_steps=1",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.enable_progress_bar=false",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "error: stage.optimizer_impl='nope': expected one of" in result.stderr, result.stderr[-3000:]
    jobs = {p.name: p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert sorted(jobs) == ["0-dci-tiny_clip-tiny-finetune", "1-dci-tiny_clip-tiny-finetune"], sorted(jobs)
    assert not (jobs["0-dci-tiny_clip-tiny-finetune"] / "checkpoints" / "last.ckpt").exists()
    assert (jobs["1-dci-tiny_clip-tiny-finetune"] / "checkpoints" / "last.ckpt").exists()
    log = (jobs["0-dci-tiny_clip-tiny-finetune"] / "train.log").read_text()
    assert "error: stage.optimizer_impl='nope'" in log  # the reason stays with the point's own log
