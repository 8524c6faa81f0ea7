"""Checkpoints: what they hold, reading them safely, rebuilding a model from one, and `ckpt_path=last|auto`.

A dc checkpoint is a Lightning checkpoint whose `hyper_parameters` are `{"model": {encoder, connector, llm, image},
"stage": {...}, "seed": int}` and whose `state_dict` holds the weights that cannot be rebuilt from config:
everything trainable (LoRA adapters included), plus frozen parts that were built with random weights (the tiny
models). Frozen parts loaded from `pretrained` are left out and come back from their source (`load_vlm`).
Sharded FSDP checkpoints are the exception: they hold everything, because the distributed loader needs every key
(consolidate with `python -m dc.export.consolidate --weights-only` to get the small file).

Reading a checkpoint never runs code from it: tensors and plain containers only (`torch.load(weights_only=True)`),
and the stored model config may name only model classes (`dc.utils.instantiate.is_model_target`, checked on every
nested `_target_` before anything is imported) and holds no `${...}` interpolations.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dc.models.builder import build_vlm
from dc.models.vlm import VLM
from dc.training.lora import LORA_KEY, apply_lora
from dc.utils.instantiate import check_targets, model_targets

log = logging.getLogger(__name__)

MODEL_KEYS = ("encoder", "connector", "llm", "image")


class NotACheckpointError(ValueError):
    """A path given as a checkpoint is a folder, not a file `torch.save` wrote, or a truncated/corrupt one."""


class ResumeConfigError(ValueError):
    """`ckpt_path` resumes a run whose checkpoint was trained with another model (or what trains differs)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds something other than tensors and plain data, or a config that names other code."""


# --------------------------------------------------------------------------------------------------------------
# What a checkpoint holds


def persisted_prefixes(model: Mapping | DictConfig, stage: Mapping | DictConfig) -> list[str]:
    """State-dict prefixes a checkpoint must hold (the others reload from `pretrained`)."""
    train = set(stage.get("train") or ())
    keep = ["vlm.connector."]
    if "encoder" in train or not model["encoder"]["model"].get("pretrained"):
        keep.append("vlm.encoder.")
    if "llm" in train or not model["llm"].get("pretrained"):
        keep.append("vlm.llm.")
    return keep


def keeps_key(model: Mapping | DictConfig, stage: Mapping | DictConfig, key: str) -> bool:
    """Whether a checkpoint for (`model`, `stage`) must hold the state-dict entry `key`."""
    if key.startswith(tuple(persisted_prefixes(model, stage))):
        return True
    return bool(stage.get("lora")) and LORA_KEY in key


def check_checkpoint_keys(
    expected_keys: Iterable[str], state: Mapping[str, Any], model: Mapping | DictConfig, stage: Mapping | DictConfig
) -> None:
    """Raise when a checkpoint lacks weights that only it can provide."""
    expected = {k for k in expected_keys if keeps_key(model, stage, k)}
    missing = sorted(expected - set(state))
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} weights it should hold, e.g. {missing[:3]}")


# --------------------------------------------------------------------------------------------------------------
# Reading safely


def verify_archive(path: str | Path) -> None:
    """Check every member of a checkpoint's zip archive against the CRC-32 `torch.save` recorded for it.

    `torch.load` does not: a file with flipped bytes (a bad disk, an interrupted copy that kept the file's size)
    loads without complaint and gives wrong weights. This reads the whole file once more (about 2 GB/s of CRC on
    one core, measured on the development machine; the read itself is usually served from the page cache).

    Raises:
        NotACheckpointError: naming the file and the first damaged member.
    """
    path = Path(path)
    where = "its table of contents"
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                where = f"member {info.filename}"
                with archive.open(info) as member:  # ZipExtFile compares the CRC-32 when it reaches the end
                    while member.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise NotACheckpointError(
            f"{path}: a damaged checkpoint ({where}: {exc}); the file changed after it was written: use an earlier "
            f"checkpoint or copy it again"
        ) from None


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False, verify: bool | None = None
) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, nothing from the file executed.
    `mmap`: tensors stay in the file until used (reading only the config of a large checkpoint costs nothing).
    `verify`: check every member's CRC-32 first (`verify_archive`); default: when not `mmap` (every tensor is read
    anyway).

    Raises:
        FileNotFoundError: no such file (the message names it).
        NotACheckpointError: a folder, a file `torch.save` did not write, a truncated or a damaged one.
        UnsafeCheckpointError: the file holds other objects (a pickle that would run code on load).
    """
    path = Path(path)
    if path.is_dir():
        raise NotACheckpointError(
            f"{path} is a folder, not a checkpoint file: pass a run's <run dir>/checkpoints/last.ckpt; a sharded "
            f"FSDP checkpoint folder is made one file by `python -m dc.export.consolidate` (docs/training.md)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6; Lightning always does
        with path.open("rb") as f:
            head = f.read(16)
        if head.startswith(b"PK\x03\x04"):  # a zip archive that lacks its end (the central directory)
            raise NotACheckpointError(
                f"{path}: a truncated checkpoint ({path.stat().st_size} bytes, the end of the archive missing): a "
                f"write that was killed? use an earlier checkpoint"
            )
        raise NotACheckpointError(
            f"{path}: not a checkpoint (torch.save writes a zip archive; this {path.stat().st_size}-byte file starts "
            f"with {head!r})"
        )
    if verify if verify is not None else not mmap:
        verify_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if "PytorchStreamReader" not in str(exc) and "zip" not in str(exc).lower():
            raise
        raise NotACheckpointError(  # a complete archive whose members are damaged
            f"{path}: a damaged checkpoint ({str(exc).splitlines()[0][:200]}); use an earlier checkpoint"
        ) from exc
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load it: it holds objects other than tensors and plain data, which could run code "
            f"when unpickled ({str(exc).splitlines()[0][:300]})"
        ) from None
    if not isinstance(ckpt, dict):
        raise UnsafeCheckpointError(f"{path}: not a checkpoint (a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def _no_interpolation(node: Any, where: str) -> None:
    if isinstance(node, str) and "${" in node:
        raise UnsafeCheckpointError(f"{where}: holds an interpolation {node!r}; stored configs must be resolved values")
    if isinstance(node, Mapping):
        for k, v in node.items():
            _no_interpolation(v, f"{where}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _no_interpolation(v, f"{where}[{i}]")


def checkpoint_config(
    ckpt: Mapping[str, Any], source: str = "checkpoint", extra_prefixes: Sequence[str] | None = None
) -> tuple[DictConfig, DictConfig]:
    """(model config, stage config) stored in a checkpoint, checked: only model targets, no interpolations.

    `extra_prefixes` are the current command's `extra_target_prefixes` (the user's own model modules).

    Raises:
        UnsafeCheckpointError: a nested `_target_` outside the model allow-list, or an interpolation.
        KeyError: not a dc checkpoint (no stored model config).
    """
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise KeyError(f"{source}: no model config in its hyper_parameters (not a dc checkpoint?)")
    model, stage = hparams["model"], hparams.get("stage") or {}
    _no_interpolation(model, f"{source}: model")
    _no_interpolation(stage, f"{source}: stage")
    try:
        check_targets(model, model_targets(extra_prefixes), f"{source}: stored model config")
    except ValueError as exc:
        raise UnsafeCheckpointError(str(exc)) from None
    if any(k in stage for k in ("_target_",)):
        raise UnsafeCheckpointError(f"{source}: the stored stage config names a _target_")
    return OmegaConf.create(dict(model)), OmegaConf.create(dict(stage))


# --------------------------------------------------------------------------------------------------------------
# Resuming: the same model

# Model keys that say how to run the model, not what it is: a resume may change them (speed, memory, where the
# pretrained weights are read from).
RUNTIME_KEYS = (
    "encoder.model.pretrained",
    "encoder.model.dtype",
    "encoder.model.attn_implementation",
    "encoder.model.micro_batch",
    "encoder.model.compile",
    "encoder.model.pretrained_file",
    "encoder.model.aux.pretrained_file",
    "encoder.model.aux.micro_batch",
    "llm.pretrained",
    "llm.tokenizer",
    "llm.dtype",
    "llm.attn_implementation",
    "llm.loss",
    "llm.loss_chunk_size",
    "llm.attention",
    "llm.varlen_backend",
    "llm.activation_checkpointing",
    "llm.compile",
)


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node)
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted `key` is one of `prefixes` or lies under one (`a.b.c` is under `a.b`, `a.bc` is not)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _diff(saved: Any, current: Any, key: str, out: list[str]) -> None:
    if under(key, RUNTIME_KEYS):
        return
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        # a key only one side has was added to dc or retired since: not compared (its default applies)
        for k in sorted(saved.keys() & current.keys(), key=str):
            _diff(saved[k], current[k], f"{key}.{k}" if key else str(k), out)
    elif saved != current:
        out.append(f"{key}: {saved!r} -> {current!r}")


def resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: saved -> current` for every model key (and `stage.train` / `stage.lora`) a resume must not change.

    `saved` / `current`: `{"model": {...}, "stage": {...}}` (a checkpoint's `hyper_parameters` and this run's).
    Keys in `RUNTIME_KEYS` may change; a key only one side has (added to dc or retired since the checkpoint was
    written) is not compared.
    """

    def view(hp: Mapping[str, Any]) -> dict[str, Any]:
        stage = hp.get("stage") or {}
        return {
            **_plain(hp.get("model") or {}),
            "stage": {"train": _plain(stage.get("train")), "lora": _plain(stage.get("lora"))},
        }

    out: list[str] = []
    _diff(view(saved), view(current), "", out)
    return out


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The `hyper_parameters` of a checkpoint file (memory-mapped: no tensor is read) or of a sharded checkpoint
    folder (its `meta.pt`); {} when there are none.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "meta.pt").is_file():
            return {}  # not a sharded checkpoint Lightning wrote: Lightning says what is wrong when it loads it
        ckpt = read_checkpoint(path / "meta.pt")
    else:
        ckpt = read_checkpoint(path, mmap=True)
    return dict(ckpt.get("hyper_parameters") or {})


def check_resume_world_size(path: str | Path, world_size: int) -> None:
    """Refuse to resume the data position of checkpoint `path` on another number of processes, before any model is
    built (each rank's share of an epoch depends on the world size; the loader refuses it too, later).

    Raises:
        ResumeConfigError: naming both world sizes.
    """
    path = Path(path)
    meta = path / "meta.pt" if path.is_dir() else path
    if not meta.is_file():
        return
    loops = read_checkpoint(meta, mmap=not path.is_dir()).get("loops") or {}
    states = ((loops.get("fit_loop") or {}).get("state_dict") or {}).get("combined_loader") or []
    saved = {int(s["world_size"]) for s in states if isinstance(s, Mapping) and "world_size" in s}
    if saved and saved != {int(world_size)}:
        raise ResumeConfigError(
            f"ckpt_path={path}: cannot resume the data position: the checkpoint was written with {min(saved)} ranks, "
            f"this run has {world_size} (each rank's share of an epoch depends on the world size); resume on the "
            "same number of devices (trainer.devices x trainer.num_nodes)"
        )


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], source: str) -> None:
    """Refuse to resume `source` (whose `hyper_parameters` are `saved`) with another model (`resume_changes`).

    Raises:
        ResumeConfigError: naming each changed key.
    """
    changes = resume_changes(saved, current) if "model" in saved else []
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise ResumeConfigError(
            f"ckpt_path={source} resumes a run trained with another model: {shown}. Resume with the checkpoint's "
            f"settings, or start a new run (stage.init_connector_from=<its checkpoint> takes its connector)"
        )


# --------------------------------------------------------------------------------------------------------------
# Rebuilding a model


def load_vlm(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    model_overrides: Mapping[str, Any] | None = None,
    extra_prefixes: Sequence[str] | None = None,
) -> tuple[VLM, DictConfig, DictConfig]:
    """Rebuild the VLM of a checkpoint for inference: config from the file, pretrained parts from their source.

    Args:
        path: a dc checkpoint (a consolidated one for FSDP-sharded runs).
        map_location: where the stored tensors are loaded.
        model_overrides: dotted keys of the model config to change before building (e.g.
            `{"llm.pretrained": "/local/vicuna"}` when the original hub id is not reachable).
        extra_prefixes: target prefixes of the user's own model modules (`extra_target_prefixes`).

    Returns:
        (vlm in eval mode, model config, stage config).
    """
    ckpt = read_checkpoint(path, map_location)
    model, stage = checkpoint_config(ckpt, str(path), extra_prefixes)
    for key, value in (model_overrides or {}).items():
        OmegaConf.update(model, key, value, merge=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int((ckpt.get("hyper_parameters") or {}).get("seed", 0)))
        vlm = build_vlm(model, allowed=model_targets(extra_prefixes))
    if stage.get("lora"):
        apply_lora(vlm.llm, stage.lora)
    state = {k[len("vlm.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("vlm.")}
    expected = ["vlm." + k for k in vlm.state_dict()]
    check_checkpoint_keys(expected, ckpt["state_dict"], model, stage)
    missing, unexpected = vlm.load_state_dict(state, strict=False)
    if unexpected:
        raise KeyError(f"{path}: weights the model does not have, e.g. {unexpected[:3]}")
    return vlm.eval(), model, stage


def resolve_ckpt_path(value: str | None, checkpoint_dir: str | Path) -> str | None:
    """`ckpt_path` as given: None; "last" (the run's `checkpoints/last.ckpt`, which must exist); "auto" (that
    file when it exists, else a fresh start: for requeued jobs); or a path.
    """
    if value is None:
        return None
    last = Path(checkpoint_dir) / "last.ckpt"
    if value == "auto":
        if last.exists():
            log.info("ckpt_path=auto: resuming from %s", last)
            return str(last)
        log.info("ckpt_path=auto: no %s yet, starting fresh", last)
        return None
    path = last if value == "last" else Path(value)
    if not path.exists():
        hint = (
            " (pass the old run's folder: hydra.run.dir=<run dir> or paths.output_dir=<run dir>)"
            if value == "last"
            else ""
        )
        raise FileNotFoundError(f"ckpt_path={value}: {path} does not exist{hint}")
    return str(path)
