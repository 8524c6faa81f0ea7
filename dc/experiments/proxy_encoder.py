"""A tiny CLIP tower whose deep half is specialised on a proxy task, for the CPU-scale Table 1.

With random frozen weights every layer of the tiny tower carries the same information, so fusing several layers
cannot help. Real CLIP's deep layers are specialised (semantic, invariant to low-level detail) while its shallow
ones keep that detail; this builds the same contrast on the synthetic shapes:

* the patch embedding and the shallow blocks (`train_from` and below) keep their random weights: generic
  features that keep colour and position;
* the deep blocks learn shape classification only: every patch token of the connector's final feature
  (`hidden_states[feature_index]`) predicts the scene's shape, and the tokens of two renderings of the same shape
  in a different colour and cell must match (an invariance term, as colour jitter and crops give SSL encoders).

Colour, position and count are never trained for; the deep layers learn to discard colour and position. Blocks
past `feature_index` (the last one, which LLaVA-style connectors never read) get no gradient and stay random. The
result is saved as a Hugging Face `CLIPVisionModel` folder, which `encoder.model.pretrained` loads
(`HFVisionEncoder`). The folder's name ends in a digest of the settings (`<out>-<digest>`), so a tower made with
other settings never replaces one that earlier checkpoints load by path. `pretrain` is idempotent: a folder with a
matching `DONE` file is reused (atomic write).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from dc.data.synthetic import COLOURS, GRID, SHAPES, Obj, render
from dc.utils.files import publish_dir

VERSION = 1  # bump when the procedure changes; an older folder is rebuilt


def _pixels(images: list[Any], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB images at the tower's resolution → normalised [B, 3, H, W] (what CLIPImageProcessor gives at 48 px)."""
    arr = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images])).permute(0, 3, 1, 2) / 255
    return (arr - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _pairs(rng: random.Random, n: int, size: int) -> tuple[list[Any], torch.Tensor]:
    """`n` shapes, each drawn twice with an independent colour and cell: 2n images (pairs adjacent), n labels."""
    labels, images = [], []
    for _ in range(n):
        shape = rng.randrange(len(SHAPES))
        labels.append(shape)
        for _ in range(2):
            obj = Obj(rng.choice(list(COLOURS)), SHAPES[shape], rng.randrange(GRID * GRID))
            images.append(render([obj], size))
    return images, torch.tensor(labels)


def _complete(out: Path, settings: Mapping[str, Any]) -> bool:
    try:
        return json.loads((out / "DONE").read_text()).get("settings") == settings
    except (OSError, ValueError):
        return False


def pretrain(
    out: str | os.PathLike,
    *,
    layout: Mapping[str, int],
    config: Mapping[str, Any],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    seed: int = 0,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1.0e-3,
    train_from: int = 12,
    feature_index: int = -2,
    invariance: float = 1.0,
) -> Path:
    """Pretrain the tiny tower's deep blocks on the shape proxy task and save it; return its folder, `tower_dir`.

    Args:
        out: the saved `CLIPVisionModel`'s folder (config.json + weights + DONE), less the settings digest that
            `tower_dir` appends to its name.
        layout: the encoder config's `layout` (num_layers, hidden_size, image_size, patch_size).
        config: the encoder config's `model.config` (intermediate_size, num_attention_heads).
        image_mean: normalisation mean (the encoder's image processor).
        image_std: normalisation std.
        seed: seeds the random weights and the scenes.
        steps: optimizer steps (AdamW, constant `lr`).
        batch_size: shapes per step (each drawn twice).
        lr: learning rate.
        train_from: blocks with index >= this learn; the embedding and blocks below keep their random weights.
        feature_index: the `hidden_states` index the proxy loss reads (-2: the connector's final feature).
        invariance: weight of the two-rendering invariance term.
    """
    settings = {
        "version": VERSION,
        "layout": dict(layout),
        "config": dict(config),
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "train_from": train_from,
        "feature_index": feature_index,
        "invariance": invariance,
        "norm": [list(image_mean), list(image_std)],
    }
    out = tower_dir(out, settings)
    if _complete(out, settings):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sweep points: one builds, the others wait and reuse it
        if _complete(out, settings):
            return out
        return _build(out, settings)


def tower_dir(out: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """`<out>-<digest>`: the folder of the tower `settings` make (10 hex digits of their SHA-256)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(out)
    return out.with_name(f"{out.name}-{digest}")


def _build(out: Path, settings: dict[str, Any]) -> Path:
    """Train and save (atomically: a temp folder renamed into place); see `pretrain`."""
    layout, config, seed = settings["layout"], settings["config"], settings["seed"]
    train_from, feature_index, steps = settings["train_from"], settings["feature_index"], settings["steps"]
    batch_size, invariance, image_mean, image_std = settings["batch_size"], settings["invariance"], *settings["norm"]
    if not 0 < train_from < layout["num_layers"]:
        raise ValueError(f"proxy encoder train_from={train_from}: must be in 1..{layout['num_layers'] - 1}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    hf_config = CLIPVisionConfig(
        hidden_size=layout["hidden_size"],
        image_size=layout["image_size"],
        patch_size=layout["patch_size"],
        num_hidden_layers=layout["num_layers"],
        **dict(config),
    )
    model = CLIPVisionModel(hf_config)
    deep = {f"encoder.layers.{i}." for i in range(train_from, layout["num_layers"])}
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(p) for p in deep))
    head = torch.nn.Linear(layout["hidden_size"], len(SHAPES))
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=0.0)
    rng = random.Random(seed)
    prefix = 1  # CLIP's CLS token: the connector drops it, so the loss does too
    tokens = (layout["image_size"] // layout["patch_size"]) ** 2
    history = []
    model.train()
    for step in range(steps):
        images, labels = _pairs(rng, batch_size, layout["image_size"])
        hidden = model(pixel_values=_pixels(images, image_mean, image_std), output_hidden_states=True)
        feats = hidden.hidden_states[feature_index][:, prefix:]  # [2B, N, D]
        logits = head(feats)
        target = labels.repeat_interleave(2).unsqueeze(1).expand(-1, tokens)
        ce = F.cross_entropy(logits.reshape(-1, len(SHAPES)), target.reshape(-1))
        pairs = feats.reshape(batch_size, 2, tokens, -1)
        inv = (pairs[:, 0] - pairs[:, 1]).pow(2).mean() / feats.detach().var()
        loss = ce + invariance * inv
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == target).float().mean().item()
            history.append({"step": step, "ce": round(ce.item(), 5), "invariance": round(inv.item(), 5), "acc": acc})
    with publish_dir(out) as tmp:
        model.save_pretrained(tmp)
        done = {"settings": settings, "history": history, "wall_s": round(time.perf_counter() - start, 1)}
        (tmp / "DONE").write_text(json.dumps(done, indent=2))
    return out
