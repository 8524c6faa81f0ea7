"""`stage.optimizer_impl`: the fused, foreach and for-loop AdamW kernels each give the AdamW update written out as
plain tensor ops; `auto` picks fused only when every parameter is on CUDA; the module builds its optimizer with the
chosen kernel; unknown values and unsupported devices are refused naming the key."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dc.training.optim import adamw_impl_kwargs, keep_adamw_impl

from dc_testing import make_module
from train_helpers import compose_config


def _reference_adamw(params, grads_per_step, lr, betas, eps, decay):
    """AdamW (decoupled decay, bias-corrected moments) as plain tensor ops, one parameter at a time."""
    b1, b2 = betas
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.mul_(1 - lr * decay[i])
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return params


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop", "auto"])
def test_every_kernel_gives_the_adamw_update(impl: str) -> None:
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(7, 5, generator=g), torch.randn(5, generator=g), torch.randn(3, 4, 2, generator=g)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(4)]
    lr, betas, eps, decay = 1e-2, (0.9, 0.95), 1e-8, [0.1, 0.0, 0.1]
    params = [torch.nn.Parameter(p.clone()) for p in init]
    groups = [
        {"params": [params[0], params[2]], "weight_decay": 0.1},
        {"params": [params[1]], "weight_decay": 0.0},
    ]
    kwargs = adamw_impl_kwargs(params, impl)
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)
    assert all(group["fused"] is (True if impl == "fused" else None) for group in opt.param_groups)
    assert all(group["foreach"] is {"foreach": True, "for_loop": False}.get(impl) for group in opt.param_groups)
    for step_grads in grads:
        for p, grad in zip(params, step_grads, strict=True):
            p.grad = grad.clone()
        opt.step()
    want = _reference_adamw(init, grads, lr, betas, eps, decay)
    for got, expected in zip(params, want, strict=True):
        torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("saved", "chosen"), [("foreach", "fused"), ("fused", "for_loop"), ("for_loop", "auto")])
def test_a_loaded_state_keeps_the_configured_kernel(saved: str, chosen: str) -> None:
    """A checkpoint written with one kernel, resumed with another: the configured one runs (loading alone would
    restore the saved flags), and the 4 steps equal the AdamW formula."""
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(6, 3, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(4)]
    first = [torch.nn.Parameter(p.clone()) for p in init]
    opt = torch.optim.AdamW(first, lr=1e-2, weight_decay=0.1, **adamw_impl_kwargs(first, saved))
    for step_grads in grads[:2]:
        for p, grad in zip(first, step_grads, strict=True):
            p.grad = grad.clone()
        opt.step()
    state = opt.state_dict()

    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    kwargs = adamw_impl_kwargs(resumed, chosen)
    plain = torch.optim.AdamW(resumed, lr=1e-2, weight_decay=0.1, **kwargs)
    plain.load_state_dict(state)
    assert plain.param_groups[0]["fused"] == state["param_groups"][0]["fused"]  # what loading alone does
    kept = torch.optim.AdamW(resumed, lr=1e-2, weight_decay=0.1, **kwargs)
    keep_adamw_impl(kept, kwargs)
    kept.load_state_dict(state)
    assert kept.param_groups[0]["fused"] is kwargs.get("fused")
    assert kept.param_groups[0]["foreach"] is kwargs.get("foreach")
    assert all(s["step"].dtype == torch.float32 and s["step"].device.type == "cpu" for s in kept.state.values())
    for step_grads in grads[2:]:
        for p, grad in zip(resumed, step_grads, strict=True):
            p.grad = grad.clone()
        kept.step()
    want = _reference_adamw(init, grads, 1e-2, (0.9, 0.999), 1e-8, [0.1, 0.1])
    for got, expected in zip(resumed, want, strict=True):
        torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


def test_auto_is_fused_only_when_every_parameter_is_on_cuda() -> None:
    on = [SimpleNamespace(device=torch.device("cuda", 0)), SimpleNamespace(device=torch.device("cuda", 1))]
    assert adamw_impl_kwargs(on, "auto") == {"fused": True}
    assert adamw_impl_kwargs([*on, SimpleNamespace(device=torch.device("cpu"))], "auto") == {}
    assert adamw_impl_kwargs([torch.zeros(2)], "auto") == {}  # CPU keeps PyTorch's default (foreach)
    assert adamw_impl_kwargs([], "auto") == {}


def test_bad_values_are_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"stage.optimizer_impl='adam8bit': expected one of"):
        adamw_impl_kwargs([torch.zeros(2)], "adam8bit")
    with pytest.raises(ValueError, match=r"stage.optimizer_impl=fused: no fused AdamW kernel for device meta"):
        adamw_impl_kwargs([torch.zeros(2, device="meta")], "fused")
    with pytest.raises(ValueError, match=r"stage.optimizer_impl=fused: no fused AdamW kernel for non-floating"):
        adamw_impl_kwargs([torch.zeros(2, dtype=torch.int64)], "fused")


@pytest.mark.parametrize("impl", ["auto", "fused", "foreach"])
def test_module_builds_adamw_with_the_chosen_kernel(impl: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(
        "train",
        ["debug=fast", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", "run_name=x"]
        + ["stage=finetune", f"stage.optimizer_impl={impl}"],
    )
    module = make_module(cfg, total_steps=10)
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {g["fused"] for g in optimizer.param_groups} == {True if impl == "fused" else None}
    assert {g["foreach"] for g in optimizer.param_groups} == {True if impl == "foreach" else None}
    trained = {id(p) for p in module.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trained
    state = optimizer.state_dict()  # as a checkpoint written with another kernel would hold it
    for group in state["param_groups"]:
        group["fused"], group["foreach"] = False, False
    optimizer.load_state_dict(state)
    assert {g["fused"] for g in optimizer.param_groups} == {True if impl == "fused" else None}
    assert {g["foreach"] for g in optimizer.param_groups} == {True if impl == "foreach" else None}


def test_every_stage_config_sets_the_optimizer_kernel() -> None:
    for stage in ("pretrain", "finetune", "lora"):
        assert compose_config("train", [f"stage={stage}", "debug=fast"]).stage.optimizer_impl == "auto"
