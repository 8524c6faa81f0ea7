"""Chunked causal-LM loss: `linear_cross_entropy` against the formula, `causal_lm_loss` against HF's own `.loss`.

Expectations are independent of the code under test: the cross-entropy formula written as plain tensor ops, and
HF's `ForCausalLM(..., labels=...).loss` with its gradients (inputs_embeds, every parameter, LoRA adapters).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
)

from dc.models.llms.loss import causal_lm_loss, liger_available, linear_cross_entropy, resolve_impl

V, D, IGNORE = 61, 16, -100


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two shared cores: one intra-op thread per test process is much faster than two oversubscribed ones.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference_ce(h, w, y, b=None, scale=1.0, cap=None):
    """Mean CE over labels != IGNORE from plain ops (0/0 -> nan, as torch/HF)."""
    z = (h.float() @ w.float().T + (0 if b is None else b.float())) * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    keep = y != IGNORE
    zk, yk = z[keep], y[keep]
    nll = torch.logsumexp(zk, dim=1) - zk.gather(1, yk[:, None]).squeeze(1)
    return nll.sum() / keep.sum()


def rows(n=37, seed=0, dtype=torch.float32, ignored=(3, 4, 10, 36)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g).to(dtype).requires_grad_()
    w = (0.5 * torch.randn(V, D, generator=g)).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(V, generator=g)).to(dtype).requires_grad_()
    y = torch.randint(0, V, (n,), generator=g)
    y[[i for i in ignored if i < n]] = IGNORE
    return h, w, b, y


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


# --- linear_cross_entropy --------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["chunked", "dense"])
@pytest.mark.parametrize("chunk_size", [1, 5, 36, 37, 1000])
def test_linear_ce_matches_formula_fp32(impl, chunk_size):
    h, w, b, y = rows()
    want = reference_ce(h, w, y, b)
    got = linear_cross_entropy(h, w, y, bias=b, impl=impl, chunk_size=chunk_size)
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(grads(got, [h, w, b]), grads(want, [h, w, b]), strict=True):
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize(("scale", "cap"), [(0.25, None), (1.0, 2.0), (3.0, 1.5)])
def test_linear_ce_scale_and_softcap(scale, cap):
    h, w, b, y = rows(seed=1)
    want = reference_ce(h, w, y, b, scale=scale, cap=cap)
    got = linear_cross_entropy(h, w, y, bias=b, impl="chunked", chunk_size=8, logit_scale=scale, softcap=cap)
    dense = linear_cross_entropy(h, w, y, bias=b, impl="dense", logit_scale=scale, softcap=cap)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(dense, want)
    for g_got, g_want in zip(grads(got, [h, w, b]), grads(want, [h, w, b]), strict=True):
        torch.testing.assert_close(g_got, g_want)


def test_linear_ce_bf16_inputs_fp32_math():
    h, w, b, y = rows(n=50, seed=2, dtype=torch.bfloat16)
    # Reference: the logits matmul in bf16 (as nn.Linear), everything after it in fp32.
    z = F.linear(h, w, b).float()
    keep = y != IGNORE
    want = (torch.logsumexp(z[keep], 1) - z[keep].gather(1, y[keep][:, None]).squeeze(1)).mean()
    got = linear_cross_entropy(h, w, y, bias=b, impl="chunked", chunk_size=7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g_got, g_want = grads(got, [h, w, b]), grads(want, [h, w, b])
    for a, e in zip(g_got, g_want, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e.float(), rtol=2e-2, atol=2e-3)


def test_linear_ce_under_autocast_uses_autocast_dtype():
    h, w, b, y = rows(seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, y, bias=b, impl="chunked", chunk_size=9)
        z = F.linear(h, w, b).float()  # bf16 under autocast, as HF's lm_head
    keep = y != IGNORE
    want = (torch.logsumexp(z[keep], 1) - z[keep].gather(1, y[keep][:, None]).squeeze(1)).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g_got, g_want = grads(got, [h, w, b]), grads(want, [h, w, b])
    for a, e in zip(g_got, g_want, strict=True):
        assert a.dtype == torch.float32  # gradients in the parameters' dtype
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-3)


def test_linear_ce_sum_and_nothing_supervised():
    h, w, b, y = rows(n=10)
    total = linear_cross_entropy(h, w, y, bias=b, reduction="sum", chunk_size=3)
    torch.testing.assert_close(total, reference_ce(h, w, y, b) * (y != IGNORE).sum())
    none = torch.full_like(y, IGNORE)
    loss = linear_cross_entropy(h, w, none, bias=b, chunk_size=3)
    assert loss.item() == 0.0  # deliberate: F.cross_entropy (and HF) give nan here
    assert torch.isnan(F.cross_entropy(h @ w.T + b, none, ignore_index=IGNORE))
    for g in grads(loss, [h, w, b]):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])  # Lightning validates in inference mode
def test_linear_ce_without_grad_and_leading_dims(mode):
    h, w, b, y = rows(n=12)
    want = reference_ce(h, w, y, b).detach()
    with mode():
        got = linear_cross_entropy(h.view(3, 4, D), w, y.view(3, 4), bias=b, chunk_size=5)
    assert not got.requires_grad
    torch.testing.assert_close(got, want)


def test_linear_ce_validates_arguments():
    h, w, _, y = rows(n=4, ignored=())
    with pytest.raises(ValueError, match="impl='nope'"):
        linear_cross_entropy(h, w, y, impl="nope")
    with pytest.raises(ValueError, match="needs CUDA"):
        linear_cross_entropy(h, w, y, impl="liger")
    with pytest.raises(ValueError, match="chunk_size=0"):
        linear_cross_entropy(h, w, y, chunk_size=0)
    with pytest.raises(ValueError, match="3 labels"):
        linear_cross_entropy(h, w, y[:3])
    with pytest.raises(ValueError, match="bfloat16"):
        linear_cross_entropy(h, w.bfloat16(), y)
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an ATen op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_never_builds_full_logits():
    g = torch.Generator().manual_seed(0)
    n, vocab = 256, 2048
    h = torch.randn(n, D, generator=g, requires_grad=True)
    w = torch.randn(vocab, D, generator=g, requires_grad=True)
    y = torch.randint(0, vocab, (n,), generator=g)
    for impl, bound in [("dense", None), ("chunked", 32 * vocab)]:
        with LargestTensor() as probe:
            linear_cross_entropy(h, w, y, impl=impl, chunk_size=32).backward()
        if bound is None:
            assert probe.largest >= n * vocab  # the probe sees the dense logits
        else:
            assert probe.largest <= bound  # one chunk's logits at most (the weight gradient is vocab x 16)


# --- causal_lm_loss vs HF ----------------------------------------------------------------------------------------
def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    if kind in ("llama", "llama_tied"):
        cfg = LlamaConfig(**common, num_key_value_heads=1, tie_word_embeddings=kind == "llama_tied")
        model = LlamaForCausalLM(cfg)
    elif kind == "phi":  # lm_head has a bias
        model = PhiForCausalLM(PhiConfig(**common))
    elif kind == "gemma2":  # final logit soft-capping (tied embeddings)
        cfg = Gemma2Config(**common, num_key_value_heads=1, head_dim=8, final_logit_softcapping=1.5)
        model = Gemma2ForCausalLM(cfg)
    elif kind == "granite":  # logits / logits_scaling
        model = GraniteForCausalLM(GraniteConfig(**common, num_key_value_heads=1, logits_scaling=4.0))
    elif kind == "cohere":  # logits * logit_scale
        model = CohereForCausalLM(CohereConfig(**common, num_key_value_heads=1, logit_scale=0.5))
    else:
        raise AssertionError(kind)
    with torch.no_grad():  # random (non-zero) biases, so the bias gradient path is exercised
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.1)
    return model.float().eval()


def batch(seed=0):
    """B=3, S=9: row 0 left-padded (mask 0, labels ignored), row 1 fully ignored, row 2 partly supervised."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :3] = 0
    labels = ids.clone()
    labels[0, :3] = IGNORE
    labels[1] = IGNORE
    labels[2, :4] = IGNORE
    return ids, mask, labels


def embed(model, ids):
    """Through the embedding (tied weights get both gradients); a leaf needing grad when the embedding is frozen."""
    emb = model.get_input_embeddings()(ids)
    return emb if emb.requires_grad else emb.requires_grad_()


def check_against_hf(model, ids, mask, labels, impl, chunk_size, rtol=None, atol=None, **kwargs):
    params = [p for p in model.parameters() if p.requires_grad]
    emb_ref = embed(model, ids)
    want = model(inputs_embeds=emb_ref, attention_mask=mask, labels=labels, **kwargs).loss
    g_want = torch.autograd.grad(want, [emb_ref, *params], allow_unused=True)
    emb = embed(model, ids)
    got = causal_lm_loss(model, emb, mask, labels, impl=impl, chunk_size=chunk_size, **kwargs)
    g_got = torch.autograd.grad(got, [emb, *params], allow_unused=True)
    torch.testing.assert_close(got, want)
    names = ["inputs_embeds", *(n for n, p in model.named_parameters() if p.requires_grad)]
    for name, a, e in zip(names, g_got, g_want, strict=True):
        assert (a is None) == (e is None), name
        if a is not None:
            torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    return want


@pytest.mark.parametrize("kind", ["llama", "llama_tied", "phi", "gemma2", "granite", "cohere"])
@pytest.mark.parametrize(("impl", "chunk_size"), [("chunked", 4), ("chunked", None), ("dense", None)])
def test_causal_lm_loss_matches_hf(kind, impl, chunk_size):
    model = tiny(kind)
    if kind == "llama_tied":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    if kind == "phi":
        assert model.lm_head.bias is not None
    ids, mask, labels = batch()
    # Gemma-2's tiny random model is ill-conditioned (inputs_embeds gradients up to ~7e7, from the RMSNorms of
    # std-0.02 embeddings): fp32 rounding-order differences (1e-7 of the largest) reach 4e-5
    # relative there, so its tolerance is 1e-4 relative; every other model is held to the fp32 default.
    tol = dict(rtol=1e-4, atol=1e-5) if kind == "gemma2" else {}
    want = check_against_hf(model, ids, mask, labels, impl, chunk_size, **tol)  # 5 + 0 + 4 = 9 supervised rows
    assert torch.isfinite(want)


def test_causal_lm_loss_num_items_in_batch():
    model = tiny("llama")
    ids, mask, labels = batch(seed=1)
    check_against_hf(model, ids, mask, labels, "chunked", 2, num_items_in_batch=torch.tensor(23))


def test_causal_lm_loss_bf16_and_inference_mode():
    model = tiny("llama").bfloat16()
    ids, mask, labels = batch(seed=3)
    emb = embed(model, ids)
    want = model(inputs_embeds=emb, attention_mask=mask, labels=labels).loss
    g_want = torch.autograd.grad(want, [emb, model.lm_head.weight])
    emb = embed(model, ids)
    got = causal_lm_loss(model, emb, mask, labels, impl="chunked", chunk_size=4)
    g_got = torch.autograd.grad(got, [emb, model.lm_head.weight])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), rtol=1e-3, atol=1e-3)
    for a, e in zip(g_got, g_want, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e.float(), rtol=2e-2, atol=2e-2 * e.abs().max().item())
    with torch.inference_mode():
        emb = model.get_input_embeddings()(ids)
        torch.testing.assert_close(causal_lm_loss(model, emb, mask, labels), got.detach())


def test_causal_lm_loss_lora():
    model = tiny("llama")
    config = LoraConfig(
        r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )  # random B too, so both adapter matrices get gradients
    peft_model = get_peft_model(model, config)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids, mask, labels = batch(seed=2)
    check_against_hf(peft_model, ids, mask, labels, "chunked", 3)


def test_causal_lm_loss_nothing_supervised_is_zero_not_nan():
    model = tiny("llama")
    ids, mask, labels = batch()
    labels[:] = IGNORE
    labels[2, 0] = 5  # no position predicts the first token: still no supervised token after the shift
    emb = model.get_input_embeddings()(ids)
    assert torch.isnan(model(inputs_embeds=emb, attention_mask=mask, labels=labels).loss)  # HF: 0/0
    emb = model.get_input_embeddings()(ids)
    loss = causal_lm_loss(model, emb, mask, labels, impl="chunked")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(model.lm_head.weight.grad, torch.zeros_like(model.lm_head.weight))
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None  # graph still reaches the decoder


def test_causal_lm_loss_refuses_unsupported():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=1, n_head=2))
    ids, mask, labels = batch()
    with pytest.raises(ValueError, match="'gpt2'.*not supported"):
        causal_lm_loss(gpt2, gpt2.get_input_embeddings()(ids), mask, labels)
    model = get_peft_model(tiny("llama"), LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="not an nn.Linear"):
        causal_lm_loss(model, model.get_input_embeddings()(ids), mask, labels)


# --- CUDA (deselected by default: -m gpu) ------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["chunked", "liger"])
def test_cuda_bf16_matches_dense(impl):
    if impl == "liger" and not liger_available():
        pytest.skip("liger-kernel not installed (pip install 'dc[gpu]')")
    h, w, b, y = (t.detach().cuda().requires_grad_(t.requires_grad) for t in rows(n=300, dtype=torch.bfloat16))
    want = linear_cross_entropy(h, w, y, bias=b, impl="dense")
    got = linear_cross_entropy(h, w, y, bias=b, impl=impl, chunk_size=64, softcap=None)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    for a, e in zip(grads(got, [h, w, b]), grads(want, [h, w, b]), strict=True):
        torch.testing.assert_close(a.float(), e.float(), rtol=2e-2, atol=2e-3)
