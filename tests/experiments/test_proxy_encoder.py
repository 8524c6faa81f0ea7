"""The proxy-pretrained tiny tower: its shallow half is exactly the random init of its seed, its deep half has
learned, it loads through `encoder.model.pretrained` into the encoder the connectors use (same features as the
saved HF model), and a finished folder is reused, while a changed setting builds another folder (named by a digest
of the settings) and leaves the first as it was."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from dc.data.synthetic import Obj, render
from dc.experiments.proxy_encoder import _pixels, pretrain
from dc.models.builder import build_connector
from dc.utils.instantiate import instantiate

from dc_testing import compose_config

LAYOUT = {"num_layers": 4, "hidden_size": 32, "image_size": 48, "patch_size": 16, "num_prefix_tokens": 1}
CONFIG = {"intermediate_size": 64, "num_attention_heads": 2}
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _pretrain(out: Path, steps: int = 2) -> Path:
    return pretrain(
        out,
        layout=LAYOUT,
        config=CONFIG,
        image_mean=MEAN,
        image_std=STD,
        seed=3,
        steps=steps,
        batch_size=4,
        train_from=2,
    )


def test_shallow_half_random_deep_half_trained_and_loadable(tmp_path: Path) -> None:
    out = _pretrain(tmp_path / "enc")
    saved = CLIPVisionModel.from_pretrained(out)
    torch.manual_seed(3)
    fresh = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=32, image_size=48, patch_size=16, num_hidden_layers=4, **CONFIG)
    )
    ref, got = fresh.state_dict(), saved.state_dict()
    for key, value in ref.items():
        learned = key.startswith("encoder.layers.2.")  # blocks 0-1 frozen; block 3 is past the feature (index -2)
        assert torch.equal(got[key], value) != learned, key

    cfg = compose_config(
        "train",
        [
            "connector=mlp",
            "paths.output_dir=/tmp/unused",
            "run_name=x",
            *(f"encoder.layout.{k}={v}" for k, v in LAYOUT.items()),
            *(f"encoder.model.config.{k}={v}" for k, v in CONFIG.items()),
            f"encoder.model.pretrained={out}",
        ],
    )
    connector = build_connector(cfg)
    encoder = instantiate(cfg.encoder.model)(layout=connector.layout, taps=connector.taps)
    pixels = _pixels([render([Obj("red", "circle", 4)])], MEAN, STD)
    with torch.no_grad():
        (tap,) = encoder(pixels)  # the connector's one tap: hidden_states[-2] without the CLS token
        expected = saved(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(tap, expected)


def test_a_finished_folder_is_reused_and_a_changed_setting_builds_another(tmp_path: Path) -> None:
    out = _pretrain(tmp_path / "enc")
    assert out.parent == tmp_path and re.fullmatch(r"enc-[0-9a-f]{10}", out.name)
    stamp = (out / "DONE").stat().st_mtime_ns
    weights = (out / "model.safetensors").read_bytes()
    assert _pretrain(tmp_path / "enc") == out and (out / "DONE").stat().st_mtime_ns == stamp
    other = _pretrain(tmp_path / "enc", steps=3)
    assert other.parent == tmp_path and other.name.startswith("enc-") and other != out
    assert json.loads((other / "DONE").read_text())["settings"]["steps"] == 3
    assert (other / "model.safetensors").read_bytes() != weights
    # the first tower, which earlier checkpoints name, is untouched
    assert (out / "model.safetensors").read_bytes() == weights and (out / "DONE").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted([out.name, other.name])
