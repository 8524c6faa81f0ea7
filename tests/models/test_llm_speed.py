"""The training forward's speed levers keep the loss and gradients of HF's own `labels=` loss.

Reference: `model(inputs_embeds=..., attention_mask=..., labels=...).loss` of the plain HF model (dense fp32
logits, padded SDPA with a mask) and its gradients. Checked against it: the chunked loss through `labels`, the
host-computed padded layout, the packed (unpadded, varlen) layout, every activation-checkpointing mode, LoRA and
a compiled decoder. Plus the layout arithmetic against hand-written positions, no [T, T] mask anywhere in the
packed forward, and the memory each checkpointing mode keeps.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dc.models.llms.hf_causal import HFCausalLM
from dc.models.llms.layout import token_layout
from dc.models.llms.varlen import packed_mask, resolve_backend, varlen_attention
from dc.utils.memtrack import LiveTensorBytes

from dc_testing import make_template, tiny_tokenizer

IGNORE = -100


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_llm(
    model_type: str = "llama", tied: bool = False, layers: int = 2, train: bool = True, **options
) -> HFCausalLM:
    torch.manual_seed(0)
    config = dict(
        model_type=model_type,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    if model_type == "llama":
        config["num_key_value_heads"] = 2  # GQA: the varlen path must handle fewer kv heads
    llm = HFCausalLM(
        template=make_template("vicuna_v1"), tokenizer=tiny_tokenizer(), hidden_size=32, config=config, **options
    )
    with torch.no_grad():  # non-zero biases (phi) so their gradients are exercised
        for m in llm.model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return llm.train(train)


def make_batch(vocab: int, seed: int = 0):
    """B=3, S=11, right-padded: rows of 7, 11 and 4 tokens; row 1's first 3 labels ignored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 7:] = 0
    mask[2, 4:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[1, :3] = IGNORE
    return ids, mask, labels


def trained(llm: HFCausalLM) -> list[torch.nn.Parameter]:
    emb = llm.model.get_input_embeddings().weight
    return [p for p in llm.parameters() if p.requires_grad and (p is not emb or llm.model.config.tie_word_embeddings)]


def loss_and_grads(llm, ids, mask, labels, *, reference=False, layout=None):
    params = trained(llm)
    emb = llm.embed(ids).detach().requires_grad_()
    if reference:
        loss = llm.model(inputs_embeds=emb, attention_mask=mask, labels=labels).loss
    else:
        loss = llm(inputs_embeds=emb, attention_mask=mask, labels=labels, layout=layout).loss
    return loss, torch.autograd.grad(loss, [emb, *params])


def assert_matches_reference(llm, ids, mask, labels, layout, **tol):
    want, g_want = loss_and_grads(llm, ids, mask, labels, reference=True)
    got, g_got = loss_and_grads(llm, ids, mask, labels, layout=layout)
    torch.testing.assert_close(got, want, **tol)
    for a, e in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, e, **tol)


# --- layout arithmetic ------------------------------------------------------------------------------------------
def test_token_layout_positions_by_hand():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.tensor([[5, 6, 7, IGNORE], [IGNORE, IGNORE, 8, 9]])
    padded = token_layout(mask, labels, packed=False)
    # row 0: positions 0, 1 predict 6, 7 (position 2 is the last real token); row 1: positions 1, 2 predict 8, 9
    assert padded.loss_rows.tolist() == [0, 1, 4 + 1, 4 + 2] and padded.loss_targets.tolist() == [6, 7, 8, 9]
    assert padded.has_padding and padded.seq_lens == (3, 4) and padded.num_supervised == 4
    packed = token_layout(mask, labels, packed=True)
    assert packed.token_index.tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert packed.cu_seqlens.tolist() == [0, 3, 7] and packed.cu_seqlens.dtype == torch.int32
    assert packed.seq_bounds == (0, 3, 7) and packed.max_seqlen == 4
    assert packed.loss_rows.tolist() == [0, 1, 3 + 1, 3 + 2] and packed.loss_targets.tolist() == [6, 7, 8, 9]
    full = token_layout(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), packed=False)
    assert not full.has_padding
    with pytest.raises(ValueError, match="right-padded"):
        token_layout(torch.tensor([[0, 1, 1]]), torch.zeros(1, 3, dtype=torch.long), packed=True)


# --- equality with HF's loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "llama_tied", "phi"])
@pytest.mark.parametrize("packed", [False, True])
def test_layout_loss_matches_hf(kind, packed):
    llm = make_llm("phi" if kind == "phi" else "llama", tied=kind == "llama_tied")
    ids, mask, labels = make_batch(llm.model.config.vocab_size)
    assert_matches_reference(llm, ids, mask, labels, token_layout(mask, labels, packed=packed))


@pytest.mark.parametrize("loss", ["chunked", "dense"])
def test_labels_path_matches_hf(loss):
    llm = make_llm(loss=loss, loss_chunk_size=3)
    ids, mask, labels = make_batch(llm.model.config.vocab_size, seed=1)
    assert_matches_reference(llm, ids, mask, labels, None)


def test_unpadded_batch_without_mask_and_padded_attention_option():
    llm = make_llm(attention="padded")
    assert llm.layout_mode() == "padded" and llm.model.config._attn_implementation == "sdpa"
    ids, mask, labels = make_batch(llm.model.config.vocab_size, seed=2)
    full = torch.ones_like(mask)
    labels = ids.clone()
    layout = token_layout(full, labels, packed=False)
    assert not layout.has_padding  # the decoder then runs with no mask at all (plain causal SDPA)
    assert_matches_reference(llm, ids, full, labels, layout)
    with pytest.raises(ValueError, match="llm.attention=unpadded"):
        llm(inputs_embeds=llm.embed(ids), attention_mask=full, layout=token_layout(full, labels, packed=True))


@pytest.mark.parametrize("mode", ["selective", "full"])
@pytest.mark.parametrize("packed", [False, True])
def test_activation_checkpointing_keeps_loss_and_gradients(mode, packed):
    llm = make_llm(activation_checkpointing=mode)
    ids, mask, labels = make_batch(llm.model.config.vocab_size, seed=3)
    assert_matches_reference(llm, ids, mask, labels, token_layout(mask, labels, packed=packed))


def test_lora_packed_matches_hf():
    llm = make_llm(activation_checkpointing="selective")
    config = LoraConfig(
        r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "down_proj"], init_lora_weights=False
    )
    llm.model = get_peft_model(llm.model, config)
    llm.model.train()
    ids, mask, labels = make_batch(llm.model.config.vocab_size, seed=4)
    params = trained(llm)
    assert params and all("lora_" in n for n, p in llm.named_parameters() if p.requires_grad)
    assert_matches_reference(llm, ids, mask, labels, token_layout(mask, labels, packed=True))


def test_inference_keeps_logits_and_generation():
    llm = make_llm().eval()
    ids, mask, _ = make_batch(llm.model.config.vocab_size)
    with torch.no_grad():
        got = llm(inputs_embeds=llm.embed(ids), attention_mask=mask).logits
    llm.model.config._attn_implementation = "sdpa"  # the stock implementation, for reference
    with torch.no_grad():
        want = llm.model(inputs_embeds=llm.embed(ids), attention_mask=mask).logits
    torch.testing.assert_close(got, want)


# --- no dense mask, sync-free shapes ---------------------------------------------------------------------------
class Shapes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def test_packed_forward_builds_no_square_mask():
    llm = make_llm()
    g = torch.Generator().manual_seed(5)
    lens = [40, 17, 33]
    width = max(lens)
    ids = torch.randint(0, llm.model.config.vocab_size, (3, width), generator=g)
    mask = (torch.arange(width)[None] < torch.tensor(lens)[:, None]).long()
    labels = ids.masked_fill(mask == 0, IGNORE)
    total = sum(lens)
    for packed, side in [(True, total), (False, width)]:
        with Shapes() as probe:
            llm(inputs_embeds=llm.embed(ids), attention_mask=mask, layout=token_layout(mask, labels, packed=packed))
        square = [s for s in probe.shapes if len(s) >= 2 and s[-1] == s[-2] == side]
        if packed:
            assert not square, f"packed forward built a [T, T] tensor: {square[:3]}"
        else:
            assert square  # the padded batch needs a [B, 1, S, S] mask: the probe sees it


def test_varlen_attention_matches_per_sequence_sdpa():
    g = torch.Generator().manual_seed(6)
    bounds = (0, 5, 12, 13)
    q = torch.randn(1, 4, 13, 8, generator=g)
    k, v = torch.randn(1, 2, 13, 8, generator=g), torch.randn(1, 2, 13, 8, generator=g)
    cu = torch.tensor(bounds, dtype=torch.int32)
    got = varlen_attention(q, k, v, cu, 7, backend="sdpa_loop", seq_bounds=bounds, scale=0.3)
    for s, e in zip(bounds[:-1], bounds[1:]):  # plain softmax attention, written out
        kk, vv = k[:, :, s:e].repeat_interleave(2, 1), v[:, :, s:e].repeat_interleave(2, 1)
        scores = (q[:, :, s:e] @ kk.transpose(-1, -2)) * 0.3
        scores = scores.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
        torch.testing.assert_close(got[:, s:e], (scores.softmax(-1) @ vv).transpose(1, 2))
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa_loop"
    assert resolve_backend("auto", torch.device("cuda"), torch.float32) == "sdpa_loop"  # flash kernels: fp16/bf16 only
    with pytest.raises(ValueError, match="not usable on cpu"):
        resolve_backend("torch_varlen", torch.device("cpu"))
    assert packed_mask("cpu").shape == (1, 1, 0, 0)


# --- memory each checkpointing mode keeps -----------------------------------------------------------------------
def saved_bytes(mode: str) -> int:
    llm = make_llm(activation_checkpointing=mode, layers=1)
    layer = llm.decoder_layers()[0]
    x = torch.randn(1, 64, 32, requires_grad=True)
    pos = torch.arange(64)[None]
    emb = llm.model.model.rotary_emb(x, pos)
    with LiveTensorBytes([x, *emb, *layer.parameters()]) as live:
        out = layer(x, attention_mask=None, position_embeddings=emb, position_ids=pos)
        kept = live.live - out.untyped_storage().nbytes()
    out.sum().backward()
    return kept


def test_checkpointing_modes_keep_less():
    none, selective, full = saved_bytes("none"), saved_bytes("selective"), saved_bytes("full")
    assert full < selective < none
    assert full == 0  # only the layer's input, which the caller holds anyway


def test_compile_only_in_training_mode():
    llm = make_llm(compile={"backend": "eager"})
    assert llm.compiled  # make_llm calls train()
    assert all(layer._compiled_call_impl is not None for layer in llm.decoder_layers())
    ids, mask, labels = make_batch(llm.model.config.vocab_size, seed=7)
    assert_matches_reference(llm, ids, mask, labels, token_layout(mask, labels, packed=True))
    inference = make_llm(compile=True, train=False)  # e.g. loaded for evaluation: never compiled
    assert not inference.compiled
    assert all(layer._compiled_call_impl is None for layer in inference.decoder_layers())


def test_compiled_packed_layers_do_not_recompile_per_batch_composition():
    """Packed batches with new sequence counts and boundaries reuse the compiled layers once shapes went dynamic:
    the per-sequence SDPA loop (CPU's varlen backend) is kept out of the graph, so Dynamo never guards on the
    Python boundaries (it used to recompile every new batch until its recompile limit sent the layers to eager)."""
    import torch._dynamo

    torch._dynamo.reset()
    llm = make_llm(compile={"backend": "eager"})
    vocab = llm.model.config.vocab_size

    def run(lengths):
        width = max(lengths)
        ids = torch.randint(0, vocab, (len(lengths), width), generator=torch.Generator().manual_seed(len(lengths)))
        mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
        labels = ids.masked_fill(mask == 0, IGNORE)
        layout = token_layout(mask, labels, packed=True)
        llm(inputs_embeds=llm.embed(ids), attention_mask=mask, labels=labels, layout=layout).loss.backward()

    for lengths in ([7, 11, 4], [9, 3]):  # first compile, then the recompile that makes the token count dynamic
        run(lengths)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for lengths in ([5, 6, 10, 2], [12], [8, 8, 3, 3, 1], [6, 9]):
            run(lengths)
    torch._dynamo.reset()


def test_options_are_validated():
    for key, value, match in [
        ("loss", "fused", "llm.loss='fused'"),
        ("attention", "ragged", "llm.attention='ragged'"),
        ("activation_checkpointing", "some", "llm.activation_checkpointing='some'"),
        ("varlen_backend", "triton", "llm.varlen_backend='triton'"),
        ("loss_chunk_size", 0, "llm.loss_chunk_size=0"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_llm(**{key: value})
    with pytest.raises(ValueError, match="attn_implementation=sdpa"):
        make_llm(attn_implementation="eager")
    assert make_llm(attn_implementation="eager", attention="padded").model.config._attn_implementation == "eager"


# --- CUDA (deselected by default: -m gpu) ------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch_varlen", "flash_attn", "sdpa_loop"])
def test_cuda_packed_matches_padded_bf16(backend):
    from dc.models.llms.varlen import available_backends

    if backend not in available_backends(torch.device("cuda")):
        pytest.skip(f"{backend} not available here")
    llm = make_llm(varlen_backend=backend, activation_checkpointing="selective").cuda().to(torch.bfloat16)
    g = torch.Generator().manual_seed(8)
    lens = [300, 77, 512, 5]
    width = max(lens)
    ids = torch.randint(0, llm.model.config.vocab_size, (len(lens), width), generator=g)
    mask = (torch.arange(width)[None] < torch.tensor(lens)[:, None]).long()
    labels = ids.masked_fill(mask == 0, IGNORE)
    results = {}
    for packed in (False, True):
        layout = token_layout(mask, labels, packed=packed).to("cuda")
        llm.zero_grad(set_to_none=True)
        loss = llm(inputs_embeds=llm.embed(ids.cuda()), attention_mask=mask.cuda(), layout=layout).loss
        loss.backward()
        results[packed] = (loss.detach().float(), llm.model.model.layers[0].self_attn.q_proj.weight.grad.float())
    torch.testing.assert_close(results[True][0], results[False][0], rtol=2e-2, atol=2e-2)
    rel = (results[True][1] - results[False][1]).norm() / results[False][1].norm()
    assert rel < 5e-2, f"bf16 gradient relative difference {rel:.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_packed_matches_hf_exactly_enough():
    llm = make_llm().cuda()
    ids, mask, labels = make_batch(llm.model.config.vocab_size, seed=9)
    ids, mask, labels = ids.cuda(), mask.cuda(), labels.cuda()
    assert_matches_reference(
        llm, ids, mask, labels, token_layout(mask, labels, packed=True).to("cuda"), rtol=1e-4, atol=1e-5
    )
