"""STI / SCI / DCI against the reference formulas, written out here as plain tensor ops.

The reference is computed from a stock Hugging Face `CLIPVisionModel` /
`SiglipVisionModel` forward with `output_hidden_states=True`, on tiny random towers with the REAL layer counts
(24 / 27 blocks) and the REAL patch grids (24×24 / 27×27) but width 32, batch 1, fp32. It is compared with
(a) `Connector.fuse_hidden_states` on that tuple and (b) our encoder's running-sum path
`connector.fuse(encoder(pixels))` carrying the same weights. A last test checks SCI end to end against a stock
`transformers.LlavaForConditionalGeneration` with `vision_feature_layer=[-2, 7, 15]`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.builder import build_vlm
from dc.models.connectors import DenseChannelIntegration, SparseChannelIntegration, SparseTokenIntegration
from dc.models.encoders.base import EncoderLayout
from dc.models.encoders.hf_vision import HFVisionEncoder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOL = dict(atol=1e-6, rtol=0.0)
WIDTH = 32
TOWER = dict(hidden_size=WIDTH, intermediate_size=64, num_attention_heads=4)

# The paper's choices in the HF `hidden_states` convention, hard-coded from the reference code (not read from
# the code under test): final feature, STI/SCI layers, DCI groups (inclusive), prefix tokens dropped.
REFERENCE = {
    "clip": dict(states=25, final=23, layers=(7, 15), groups=((0, 11), (12, 23)), prefix=1, grid=24),
    "siglip": dict(states=28, final=26, layers=(7, 15), groups=((0, 12), (13, 25)), prefix=0, grid=27),
}
REAL_CONFIG = {"clip": "clip_l336", "siglip": "siglip"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two shared cores: one intra-op thread per test process is ~10x faster than two oversubscribed ones.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def stock_tower(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "clip":
        cfg = CLIPVisionConfig(num_hidden_layers=24, image_size=336, patch_size=14, **TOWER)
        model = CLIPVisionModel(cfg)
    else:
        cfg = SiglipVisionConfig(num_hidden_layers=27, image_size=384, patch_size=14, **TOWER)
        model = SiglipVisionModel(cfg)
    cfg._attn_implementation = "sdpa"
    return model.eval()


def tiny_layout(family: str) -> EncoderLayout:
    if family == "clip":
        return EncoderLayout(
            "clip_real_grid", num_layers=24, hidden_size=WIDTH, image_size=336, patch_size=14, num_prefix_tokens=1
        )
    return EncoderLayout(
        "siglip_real_grid", num_layers=27, hidden_size=WIDTH, image_size=384, patch_size=14, num_prefix_tokens=0
    )


def reference_fusion(kind: str, hidden_states: tuple[torch.Tensor, ...], ref: dict) -> torch.Tensor:
    """The reference's fusion, written out: drop the prefix, pick / average states, concatenate."""
    h = [s[:, ref["prefix"] :] for s in hidden_states]
    x = h[ref["final"]]
    a, b = (h[i] for i in ref["layers"])
    if kind == "sti":

        def pool8(t: torch.Tensor) -> torch.Tensor:  # AvgPool1d(8, 8) over raster-order tokens, tail dropped
            bsz, n, d = t.shape
            return t[:, : n // 8 * 8].reshape(bsz, n // 8, 8, d).mean(dim=2)

        return torch.cat([x, pool8(a), pool8(b)], dim=1)
    if kind == "sci":
        return torch.cat([x, a, b], dim=-1)
    (s1, e1), (s2, e2) = ref["groups"]
    g1 = torch.stack(h[s1 : e1 + 1]).mean(dim=0)
    g2 = torch.stack(h[s2 : e2 + 1]).mean(dim=0)
    return torch.cat([x, g1, g2], dim=-1)


def build_connector(kind: str, family: str):
    """The connector with the defaults the real encoder config declares (clip_l336 / siglip)."""
    enc_cfg = OmegaConf.load(CONFIGS / "encoder" / f"{REAL_CONFIG[family]}.yaml")
    layout = tiny_layout(family)
    if kind == "sti":
        return SparseTokenIntegration(layout, 16, layers=list(enc_cfg.default_layers), pool=8)
    if kind == "sci":
        return SparseChannelIntegration(layout, 16, layers=list(enc_cfg.default_layers))
    groups = OmegaConf.to_container(enc_cfg.default_groups)
    return DenseChannelIntegration(layout, 16, groups=groups)


def our_encoder(family: str, taps, stock: torch.nn.Module) -> HFVisionEncoder:
    """Our running-sum encoder, built for `taps`, carrying the stock tower's weights."""
    extra = {k: v for k, v in TOWER.items() if k != "hidden_size"}
    enc = HFVisionEncoder(tiny_layout(family), taps, family=family, config=extra)
    missing, unexpected = enc.model.load_state_dict(stock.state_dict(), strict=False)
    assert missing == []
    depth = enc.depth
    for key in unexpected:  # only what is deliberately not built: deeper blocks, post-LN, SigLIP's head
        assert key.startswith(("post_layernorm.", "head.")) or int(key.split(".")[2]) >= depth, key
    return enc


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tower(request):
    family = request.param
    model = stock_tower(family)
    side = model.config.image_size
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden_states = model(pixels, output_hidden_states=True).hidden_states
    return family, model, pixels, hidden_states


def test_real_encoder_configs_declare_the_paper_defaults():
    for family, name in REAL_CONFIG.items():
        cfg = OmegaConf.load(CONFIGS / "encoder" / f"{name}.yaml")
        ref = REFERENCE[family]
        assert cfg.layout.num_layers + 1 == ref["states"]
        assert cfg.layout.num_prefix_tokens == ref["prefix"]
        assert cfg.layout.image_size // cfg.layout.patch_size == ref["grid"]
        assert tuple(cfg.default_layers) == ref["layers"]
        assert tuple(map(tuple, cfg.default_groups)) == ref["groups"]


def test_stock_hidden_states_layout(tower):
    family, _, _, hs = tower
    ref = REFERENCE[family]
    assert len(hs) == ref["states"]
    assert all(s.shape == (1, ref["prefix"] + ref["grid"] ** 2, WIDTH) for s in hs)


@pytest.mark.parametrize("kind", ["sti", "sci", "dci"])
def test_fusion_matches_reference_formula(tower, kind):
    family, stock, pixels, hs = tower
    ref = REFERENCE[family]
    expected = reference_fusion(kind, hs, ref)
    connector = build_connector(kind, family)
    assert connector.taps[0] == (ref["final"],)

    # (a) the parameter-free fusion on a stock HF hidden-states tuple
    torch.testing.assert_close(connector.fuse_hidden_states(hs), expected, **TOL)

    # (b) our encoder (only as deep as needed, running group sums) with the same weights
    encoder = our_encoder(family, connector.taps, stock)
    assert len(encoder.model.encoder.layers) == encoder.depth == max(max(t) for t in connector.taps)
    with torch.no_grad():
        fused = connector.fuse(encoder(pixels))
    torch.testing.assert_close(fused, expected, **TOL)

    # the reference's token counts at the real grids (D = 32 here)
    n = ref["grid"] ** 2
    shapes = {"sti": (1, n + 2 * (n // 8), WIDTH), "sci": (1, n, 3 * WIDTH), "dci": (1, n, 3 * WIDTH)}
    assert fused.shape == shapes[kind]
    assert connector.num_visual_tokens() == shapes[kind][1]
    assert connector.fused_width == shapes[kind][2]


def test_shape_table_numbers():
    """The §11 numbers themselves: CLIP 576 / 720 tokens, SigLIP 729 / 911."""
    assert build_connector("sti", "clip").num_visual_tokens() == 720
    assert build_connector("dci", "clip").num_visual_tokens() == 576
    assert build_connector("sti", "siglip").num_visual_tokens() == 911
    assert build_connector("dci", "siglip").num_visual_tokens() == 729


def test_sci_equals_stock_hf_llava():
    """SCI (CLIP layout) = `LlavaForConditionalGeneration(vision_feature_layer=[-2, 7, 15], "default")`."""
    with initialize_config_dir(config_dir=os.fspath(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["encoder=tiny_clip", "connector=sci", "llm=tiny", "paths.output_dir=/tmp/dc-test", "run_name=x"],
        )
    torch.manual_seed(0)
    vlm = build_vlm(cfg).eval()
    n_img = vlm.num_visual_tokens
    assert n_img == vlm.encoder.layout.num_patches

    vision_cfg = copy.deepcopy(vlm.encoder.model.config)
    vision_cfg.num_hidden_layers = vlm.encoder.layout.num_layers  # the stock tower is the full 24-block model
    vocab = vlm.llm.model.config.vocab_size
    image_token = vocab - 1  # any id works: Llava overwrites the embeddings at its positions
    llava_cfg = LlavaConfig(
        vision_config=vision_cfg,
        text_config=vlm.llm.model.config,
        image_token_index=image_token,
        image_seq_length=n_img,
        vision_feature_layer=[-2, 7, 15],
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    llava = LlavaForConditionalGeneration(llava_cfg).eval()
    # Same weights: vision tower (its unused 24th block and post-LN keep their random init), projector, LLM.
    missing, unexpected = llava.model.vision_tower.load_state_dict(vlm.encoder.model.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith(("encoder.layers.23.", "post_layernorm.")) for k in missing)
    proj = vlm.connector.projector
    llava.model.multi_modal_projector.linear_1.load_state_dict(proj[0].state_dict())
    llava.model.multi_modal_projector.linear_2.load_state_dict(proj[2].state_dict())
    llava.model.language_model.load_state_dict(vlm.llm.model.model.state_dict())
    llava.lm_head.load_state_dict(vlm.llm.model.lm_head.state_dict())

    g = torch.Generator().manual_seed(3)
    pre, post = torch.randint(4, vocab - 1, (1, 5), generator=g), torch.randint(4, vocab - 1, (1, 7), generator=g)
    ours_ids = torch.cat([pre, torch.full((1, n_img), IMAGE_TOKEN_INDEX), post], dim=1)
    hf_ids = torch.cat([pre, torch.full((1, n_img), image_token), post], dim=1)
    mask = torch.ones_like(ours_ids)
    side = vlm.encoder.layout.image_size
    pixels = torch.randn(1, 3, side, side, generator=g)
    with torch.no_grad():
        ours = vlm(input_ids=ours_ids, attention_mask=mask, pixel_values=pixels).logits
        theirs = llava(input_ids=hf_ids, attention_mask=mask, pixel_values=pixels).logits
    assert ours.shape == theirs.shape == (1, 5 + n_img + 7, vocab)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
