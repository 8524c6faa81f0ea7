"""Vision encoders: only the needed blocks are built and run, running sums, freezing, timm → HF index mapping."""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, SiglipConfig, SiglipModel, SiglipVisionModel

from dc.models.builder import build_connector, encoder_layout
from dc.models.compiling import RECOMPILE_LIMIT
from dc.models.encoders.base import EncoderLayout
from dc.models.encoders.hf_vision import HFVisionEncoder
from dc.models.encoders.timm_vit import TimmViTEncoder
from dc.utils.instantiate import instantiate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {"tiny_clip": "clip", "tiny_siglip": "siglip", "tiny_timm": "timm"}
DCI_CLIP = [(23,), tuple(range(0, 12)), tuple(range(12, 24))]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg_for(*overrides: str):
    with initialize_config_dir(config_dir=os.fspath(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=/tmp/dc-test", "run_name=x"])


def build_encoder(encoder: str, connector: str = "dci", *overrides: str):
    """Encoder and connector from the composed config, as `build_vlm` builds them (without the LLM)."""
    cfg = cfg_for(f"encoder={encoder}", f"connector={connector}", "llm=tiny", *overrides)
    conn = build_connector(cfg)
    torch.manual_seed(0)
    return instantiate(cfg.encoder.model)(layout=conn.layout, taps=conn.taps), conn


def blocks_of(encoder) -> torch.nn.ModuleList:
    return encoder.model.blocks if isinstance(encoder, TimmViTEncoder) else encoder.model.encoder.layers


# --- only what is needed is built -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("encoder", "connector", "overrides", "depth"),
    [
        ("tiny_clip", "dci", [], 23),
        ("tiny_clip", "mlp", [], 23),
        ("tiny_clip", "sti", ["connector.final_layer=5", "connector.layers=[1,3]"], 5),
        ("tiny_siglip", "dci", [], 26),  # SigLIP's 27th block is never built
        ("tiny_siglip", "sci", [], 26),
        ("tiny_timm", "dci", [], 23),
        ("tiny_timm", "sci", ["connector.final_layer=-10"], 15),
    ],
)
def test_encoder_builds_only_the_blocks_its_taps_need(encoder, connector, overrides, depth):
    enc, conn = build_encoder(encoder, connector, *overrides)
    assert enc.depth == depth == max(max(t) for t in conn.taps)
    assert len(blocks_of(enc)) == depth
    if isinstance(enc, HFVisionEncoder):
        assert isinstance(enc.model.post_layernorm, torch.nn.Identity)
        if enc.family == "siglip":
            assert not enc.model.config.vision_use_head and not hasattr(enc.model, "head")
    else:
        assert isinstance(enc.model.norm, torch.nn.Identity) and enc.model.attn_pool is None


def test_frozen_encoder_has_no_grad_and_stays_in_eval():
    enc, _ = build_encoder("tiny_clip")
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training
    side = enc.layout.image_size
    pixels = torch.randn(1, 3, side, side, requires_grad=True)
    with torch.enable_grad():
        outs = enc(pixels)
    assert not any(o.requires_grad for o in outs)


def test_trainable_encoder_gets_gradients_through_running_sums():
    enc, _ = build_encoder("tiny_clip", "dci", "encoder.model.freeze=false")
    enc.train()
    assert enc.training
    outs = enc(torch.randn(1, 3, enc.layout.image_size, enc.layout.image_size))
    assert all(o.requires_grad for o in outs)
    outs[1].sum().backward()  # group 0..11: reaches the embeddings and blocks 1..11, not deeper ones
    layers = enc.model.encoder.layers
    assert enc.model.embeddings.patch_embedding.weight.grad is not None
    assert layers[10].mlp.fc2.weight.grad is not None and layers[11].mlp.fc2.weight.grad is None


@pytest.mark.parametrize("encoder", list(TINY))
def test_dci_never_keeps_all_hidden_states(encoder):
    """At every block, at most 3 block outputs are alive (input, output, the final-feature tap); a stock
    `output_hidden_states=True` forward keeps every one of them."""
    enc, _ = build_encoder(encoder, "dci")
    alive: list[weakref.ref] = []
    max_alive = []

    def hook(module, inputs, output):
        alive.append(weakref.ref(output))
        max_alive.append(sum(r() is not None for r in alive))

    for block in blocks_of(enc):
        block.register_forward_hook(hook)
    side = enc.layout.image_size
    with torch.no_grad():
        enc(torch.randn(2, 3, side, side))
    assert len(max_alive) == enc.depth
    assert max(max_alive) <= 3

    if isinstance(enc, HFVisionEncoder):  # contrast: the stock path keeps them all
        alive.clear(), max_alive.clear()
        with torch.no_grad():
            hs = enc.model(torch.randn(2, 3, side, side), output_hidden_states=True).hidden_states
        assert max(max_alive) == enc.depth and len(hs) == enc.depth + 1


# --- HF pretrained path, offline: a saved tiny checkpoint with a text tower, like the hub repos --------------
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_hf_pretrained_path_truncates_and_matches_stock(tmp_path, family):
    vision = dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=6, image_size=28, patch_size=7
    )
    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1, vocab_size=99)
    torch.manual_seed(0)
    if family == "clip":
        CLIPModel(CLIPConfig(vision_config=vision, text_config=text)).save_pretrained(tmp_path)
        stock = CLIPVisionModel.from_pretrained(tmp_path).eval()
        prefix = 1
    else:
        SiglipModel(SiglipConfig(vision_config=vision, text_config=text)).save_pretrained(tmp_path)
        stock = SiglipVisionModel.from_pretrained(tmp_path).eval()
        prefix = 0
    layout = EncoderLayout("saved", num_layers=6, hidden_size=32, image_size=28, patch_size=7, num_prefix_tokens=prefix)
    taps = [(4,), (1,), (0, 1, 2), (3, 4)]
    reports: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())
    transformers_log = logging.getLogger("transformers")  # its own handler (no propagation to pytest's)
    transformers_log.addHandler(handler)
    try:
        enc = HFVisionEncoder(layout, taps, family=family, pretrained=os.fspath(tmp_path))
        # the text tower, projections, SigLIP's head and blocks 4-5 are left out on purpose: no load report
        assert not [r for r in reports if "LOAD REPORT" in r]
        type(stock).from_pretrained(tmp_path)  # the stock class does report the text tower it does not hold
        loaded = [r for r in reports if "LOAD REPORT" in r]
        assert len(loaded) == 1 and "text_model" in loaded[0]
    finally:
        transformers_log.removeHandler(handler)
    assert len(enc.model.encoder.layers) == 4
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        hs = [h[:, prefix:] for h in stock(pixels, output_hidden_states=True).hidden_states]
        outs = enc(pixels)
    expected = [hs[4], hs[1], torch.stack(hs[0:3]).mean(0), torch.stack(hs[3:5]).mean(0)]
    for out, exp in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, exp, atol=1e-6, rtol=1e-6)

    bad = EncoderLayout("saved", num_layers=24, hidden_size=32, image_size=28, patch_size=7, num_prefix_tokens=prefix)
    with pytest.raises(ValueError, match="encoder.layout.num_layers=24 does not match"):
        HFVisionEncoder(bad, taps, family=family, pretrained=os.fspath(tmp_path))


# --- timm: block i is HF index i + 1; index 0 is the output of norm_pre ------------------------------------
def test_timm_taps_follow_the_hf_index_convention():
    enc, conn = build_encoder("tiny_timm", "dci")
    assert conn.taps == DCI_CLIP
    m, lay = enc.model, enc.layout
    pixels = torch.randn(2, 3, lay.image_size, lay.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # HF index 0 written out: conv patches in raster order, CLS prepended, position embedding, then norm_pre.
        patches = F.conv2d(pixels, m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=lay.patch_size)
        patches = patches.flatten(2)
        x = torch.cat([m.cls_token.expand(2, -1, -1), patches.transpose(1, 2)], dim=1) + m.pos_embed
        x = m.norm_pre(x)
        assert not isinstance(m.norm_pre, torch.nn.Identity)  # CLIP's pre-LayerNorm is part of index 0
        states = [x]
        for block in m.blocks:  # HF index i = output of timm block i - 1
            x = block(x)
            states.append(x)
        states = [s[:, 1:] for s in states]
        outs = enc(pixels)
    expected = [states[23], torch.stack(states[0:12]).mean(0), torch.stack(states[12:24]).mean(0)]
    for out, exp in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, exp, atol=1e-6, rtol=1e-6)

    # The same mapping against timm's own API on the full-depth model carrying these weights:
    # forward_intermediates(indices=[i - 1], norm=False) returns HF index i.
    full = timm.create_model(
        "vit_large_patch14_clip_quickgelu_336",
        pretrained=False,
        num_classes=0,
        embed_dim=lay.hidden_size,
        depth=24,
        img_size=lay.image_size,
        patch_size=lay.patch_size,
        **cfg_for("encoder=tiny_timm").encoder.model.model_kwargs,
    ).eval()
    missing, _ = full.load_state_dict(m.state_dict(), strict=False)
    assert all(k.startswith(("blocks.23.", "norm.")) for k in missing)
    with torch.no_grad():
        inter = full.forward_intermediates(
            pixels, indices=[6, 14, 22], norm=False, output_fmt="NLC", intermediates_only=True
        )
    for got, index in zip(inter, (7, 15, 23), strict=True):
        torch.testing.assert_close(got, states[index], atol=1e-6, rtol=1e-6)


def test_timm_pretrained_path_offline(tmp_path):
    """`pretrained=True` with a local file loads into the full model, checks the layout, then prunes."""
    cfg = cfg_for("encoder=tiny_timm").encoder
    layout = encoder_layout(cfg)
    kwargs = dict(
        embed_dim=layout.hidden_size,
        depth=24,
        img_size=layout.image_size,
        patch_size=layout.patch_size,
        **cfg.model.model_kwargs,
    )
    full = timm.create_model("vit_large_patch14_clip_quickgelu_336", pretrained=False, num_classes=0, **kwargs)
    torch.save(full.state_dict(), tmp_path / "w.pth")
    enc = TimmViTEncoder(
        layout,
        DCI_CLIP,
        model_name="vit_large_patch14_clip_quickgelu_336",
        pretrained=True,
        pretrained_file=os.fspath(tmp_path / "w.pth"),
        model_kwargs=kwargs,
    )
    assert len(enc.model.blocks) == 23
    reference = full.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in enc.model.state_dict().items())
    with pytest.raises(ValueError, match="encoder.layout.num_layers=24 does not match"):
        TimmViTEncoder(
            layout,
            DCI_CLIP,
            model_name="vit_large_patch14_clip_quickgelu_336",
            pretrained=True,
            pretrained_file=os.fspath(tmp_path / "w.pth"),
            model_kwargs={**kwargs, "depth": 12},
        )


def test_timm_clip_l336_config_points_at_the_quickgelu_openai_weights():
    cfg = cfg_for("encoder=timm_clip_l336")
    assert cfg.encoder.model.model_name == "vit_large_patch14_clip_quickgelu_336.openai"
    assert cfg.encoder.model.pretrained is True
    assert encoder_layout(cfg.encoder) == EncoderLayout("timm_clip_l336", 24, 1024, 336, 14, 1)
    # The architecture timm would build for it (random, meta device: no download, no memory).
    with torch.device("meta"):
        model = timm.create_model("vit_large_patch14_clip_quickgelu_336", pretrained=False, num_classes=0)
    assert (len(model.blocks), model.embed_dim, model.patch_embed.img_size, model.num_prefix_tokens) == (
        24,
        1024,
        (336, 336),
        1,
    )


# --- micro-batching: same taps, fewer images in flight ---------------------------------------------------
@pytest.mark.parametrize("freeze", [True, False])
def test_micro_batch_gives_the_same_taps(freeze):
    enc, _ = build_encoder("tiny_siglip", "dci", f"encoder.model.freeze={str(freeze).lower()}")
    side = enc.layout.image_size
    pixels = torch.randn(5, 3, side, side, generator=torch.Generator().manual_seed(4))
    whole = enc(pixels)
    enc.micro_batch = 2  # chunks of 2, 2, 1
    seen: list[int] = []
    enc.model.encoder.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    chunked = enc(pixels)
    assert seen == [2, 2, 1]
    for a, b in zip(chunked, whole, strict=True):
        assert a.requires_grad == (not freeze)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "4"])
def test_micro_batch_is_validated(value):
    with pytest.raises(ValueError, match="encoder.model.micro_batch="):
        HFVisionEncoder(
            EncoderLayout("t", 2, 8, 16, 8, 1),
            [(2,)],
            family="clip",
            micro_batch=value,
            config={"intermediate_size": 16, "num_attention_heads": 2},
        )


# --- compile ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ["tiny_clip", "tiny_siglip", "tiny_timm", "tiny_mgm"])
def test_compiled_blocks_give_the_eager_taps_and_only_for_training(encoder: str) -> None:
    """`encoder.model.compile`: the blocks are compiled when training starts (a frozen tower too, which stays in
    eval mode), never before; the taps equal the uncompiled tower's on the same weights."""
    eager, conn = build_encoder(encoder, "dci")
    compiled, _ = build_encoder(encoder, "dci", "encoder.model.compile={backend: aot_eager}")
    compiled.load_state_dict(eager.state_dict())
    assert compiled.compile_options == {"backend": "aot_eager"} and not compiled.compiled
    assert all(b._compiled_call_impl is None for b in compiled.blocks())  # built for inference: nothing compiled
    torch.nn.Sequential(compiled).train()  # as the trainer does: train() reaches the tower through its parent
    assert compiled.compiled and not compiled.training  # frozen: compiled, still in eval mode
    assert all(b._compiled_call_impl is not None for b in compiled.blocks()[: compiled.depth])
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT  # the layers' shared frame needs more than 8
    size = conn.layout.input_size if encoder == "tiny_mgm" else conn.layout.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    want, got = eager(pixels), compiled(pixels)
    assert len(got) == len(want) >= len(conn.taps)  # the dual tower adds its aux map
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    names = {k for k, _ in compiled.state_dict().items()}
    assert names == set(eager.state_dict())  # checkpoint keys unchanged


def test_compile_value_is_checked() -> None:
    with pytest.raises(ValueError, match=r"encoder.model.compile='yes': expected true, false or a mapping"):
        build_encoder("tiny_clip", "dci", "encoder.model.compile=yes")


def test_inductor_compiled_tower_matches_eager_across_batch_sizes() -> None:
    """The default backend (Inductor, C++ on CPU) as users run it, including the recompile a new batch size causes."""
    eager, conn = build_encoder("tiny_clip", "dci")
    compiled, _ = build_encoder("tiny_clip", "dci", "encoder.model.compile=true")
    compiled.load_state_dict(eager.state_dict())
    compiled.train()
    for batch in (2, 5):
        pixels = torch.randn(batch, 3, conn.layout.image_size, conn.layout.image_size)
        for g, w in zip(compiled(pixels), eager(pixels), strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
