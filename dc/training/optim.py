"""AdamW: parameter groups (per-part learning rates, no decay on biases and norms), the implementation
(`stage.optimizer_impl`) and the warmup-cosine schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dc.utils.errors import ConfigError


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights and other 1-D parameters get no weight decay."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    lr_for: dict[str, float],
    part_of: Any,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """Group trainable parameters by (part, decay) with each part's learning rate.

    Args:
        named_params: (name, parameter) pairs; frozen ones are skipped.
        lr_for: learning rate per part name.
        part_of: function mapping a parameter name to its part name (a key of `lr_for`).
        weight_decay: decay for the decayed groups.
    """
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        part = part_of(name)
        no_decay = is_no_decay(name, p)
        key = (part, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr_for[part],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{part}{'/no_decay' if no_decay else ''}",
            }
        groups[key]["params"].append(p)
    if not groups:
        raise ConfigError("no trainable parameters: check stage.train")
    return list(groups.values())


OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")


def check_optimizer_impl(impl: Any) -> None:
    if impl not in OPTIMIZER_IMPLS:
        raise ConfigError(f"stage.optimizer_impl={impl!r}: expected one of {OPTIMIZER_IMPLS}")


def adamw_impl_kwargs(params: Iterable[torch.Tensor], impl: str) -> dict[str, bool]:
    """`torch.optim.AdamW` keyword arguments choosing its implementation (`stage.optimizer_impl`).

    * "fused": one kernel per parameter group reads the parameter, gradient and both moments once and writes
      them back once (about 28 bytes per fp32 parameter per step); "foreach" (PyTorch's default) runs a dozen
      multi-tensor passes over the same tensors; "for_loop" one small kernel chain per parameter.
    * "auto": "fused" when every parameter is on a CUDA device (sharded DTensors included), else PyTorch's default
      (the for-loop on CPU, foreach on accelerators) — so CPU runs keep the update they always had (also with
      FSDP's `cpu_offload`, although a fused CPU kernel exists: choose "fused" there explicitly).
    The three compute the same AdamW update (to float rounding; tested against each other). `keep_adamw_impl`
    keeps the choice across a checkpoint load.
    """
    check_optimizer_impl(impl)
    params = list(params)
    if impl == "auto":
        return {"fused": True} if params and all(p.device.type == "cuda" for p in params) else {}
    if impl == "fused":
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = sorted({p.device.type for p in params} - set(_get_fused_kernels_supported_devices()))
        floating = all(p.is_floating_point() for p in params)
        if devices or not floating:
            raise ConfigError(
                f"stage.optimizer_impl=fused: no fused AdamW kernel for "
                f"{'device ' + ', '.join(devices) if devices else 'non-floating parameters'}; use auto or foreach"
            )
        return {"fused": True}
    return {"foreach": impl == "foreach"}


def keep_adamw_impl(optimizer: torch.optim.Optimizer, impl_kwargs: dict[str, bool]) -> None:
    """Make `optimizer` keep the kernel `impl_kwargs` chose (`adamw_impl_kwargs`) after `load_state_dict`.

    Loading restores the saved param groups' `fused`/`foreach` flags, so a run resumed from a checkpoint written
    with another kernel (or before `stage.optimizer_impl` existed) would silently keep the old one. The hook puts
    the chosen flags back and moves each `step` counter where that kernel keeps it (float32: on the parameter's
    device for fused, on the CPU otherwise).
    """

    def hook(opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            group["fused"] = impl_kwargs.get("fused")
            group["foreach"] = impl_kwargs.get("foreach")
            on_device = bool(group["fused"] or group.get("capturable"))
            for param in group["params"]:
                step = opt.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    device = param.device if on_device else torch.device("cpu")
                    opt.state[param]["step"] = step.to(device=device, dtype=torch.float32)

    optimizer.register_load_state_dict_post_hook(hook)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `ceil(warmup_ratio · total)` steps, then cosine decay to 0 (HF's schedule)."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
