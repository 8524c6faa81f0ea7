"""Connectors: config registry, projector, gradients, build-time validation and efficient downsampling.

Expectations are computed independently in the tests (plain tensor ops), never read back from the code.
"""

from __future__ import annotations

import math
import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from dc.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dc.models.builder import build_connector, build_vlm
from dc.models.connectors import (
    DenseChannelIntegration,
    Downsample,
    MLPConnector,
    SparseChannelIntegration,
    SparseTokenIntegration,
)
from dc.models.encoders.base import EncoderLayout
from dc.training.stages import apply_freezing

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONNECTORS = ["mlp", "sti", "sci", "dci", "dci_efficient"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two shared cores: one intra-op thread per test process is ~10x faster than two oversubscribed ones.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg_for(*overrides: str):
    with initialize_config_dir(config_dir=os.fspath(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=/tmp/dc-test", "run_name=x"])


# --- registry: one YAML + one class per option, visual-token counts ------------------------------------------
CLASSES = {
    "mlp": MLPConnector,
    "sti": SparseTokenIntegration,
    "sci": SparseChannelIntegration,
    "dci": DenseChannelIntegration,
    "dci_efficient": DenseChannelIntegration,
}
# (encoder config, connector) -> (visual tokens, projector input width); CLIP-L: 24x24, D=1024; SigLIP 27x27, D=1152.
EXPECTED = {
    ("clip_l336", "mlp"): (576, 1024),
    ("clip_l336", "sti"): (720, 1024),
    ("clip_l336", "sci"): (576, 3072),
    ("clip_l336", "dci"): (576, 3072),
    ("clip_l336", "dci_efficient"): (144, 3072),
    ("siglip", "mlp"): (729, 1152),
    ("siglip", "sti"): (911, 1152),
    ("siglip", "sci"): (729, 3456),
    ("siglip", "dci"): (729, 3456),
    ("siglip", "dci_efficient"): (196, 3456),  # 27x27 -> ceil(27/2) = 14 -> 14x14
    ("timm_clip_l336", "dci"): (576, 3072),
    ("timm_clip_l336", "sti"): (720, 1024),
}


@pytest.mark.parametrize(("encoder", "connector"), sorted(EXPECTED))
def test_every_connector_config_builds_without_weights(encoder, connector):
    """`connector=<name>` alone selects the class; real layouts validate and size the projector offline."""
    cfg = cfg_for(f"encoder={encoder}", f"connector={connector}", "llm=vicuna7b")
    conn = build_connector(cfg)  # reads llm.hidden_size from config: no weights, no download
    assert type(conn) is CLASSES[connector]
    tokens, width = EXPECTED[(encoder, connector)]
    assert conn.num_visual_tokens() == tokens
    assert conn.fused_width == width
    assert conn.projector[0].in_features == width and conn.projector[-1].out_features == 4096


@pytest.mark.parametrize("encoder", ["tiny_clip", "tiny_siglip", "tiny_timm"])
@pytest.mark.parametrize("connector", CONNECTORS)
def test_tiny_encoders_get_the_same_formulas(encoder, connector):
    """Tiny layouts (whatever their grid): N, N + 2*floor(N/8) for STI, ceil(rows/2)*ceil(cols/2) efficient."""
    cfg = cfg_for(f"encoder={encoder}", f"connector={connector}", "llm=tiny")
    conn = build_connector(cfg)
    side = cfg.encoder.layout.image_size // cfg.encoder.layout.patch_size
    n, d = side * side, cfg.encoder.layout.hidden_size
    tokens = {"mlp": n, "sti": n + 2 * (n // 8), "sci": n, "dci": n, "dci_efficient": math.ceil(side / 2) ** 2}
    width = {"mlp": d, "sti": d, "sci": 3 * d, "dci": 3 * d, "dci_efficient": 3 * d}
    assert (conn.num_visual_tokens(), conn.fused_width) == (tokens[connector], width[connector])
    assert conn.projector[-1].out_features == cfg.llm.hidden_size


def test_registry_has_one_yaml_per_option():
    names = sorted(p.stem for p in (CONFIGS / "connector").glob("*.yaml"))
    assert names == sorted(CONNECTORS)


def test_projector_is_linear_exact_gelu_linear():
    layout = EncoderLayout("t", 4, 6, 8, 2, 1)
    conn = MLPConnector(layout, 5)
    x = torch.randn(2, 16, 6) * 3
    w1, b1, w2, b2 = conn.projector[0].weight, conn.projector[0].bias, conn.projector[2].weight, conn.projector[2].bias
    h = x @ w1.T + b1
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU, not the tanh approximation
    torch.testing.assert_close(conn([x]), h @ w2.T + b2, atol=1e-6, rtol=1e-6)
    assert conn.projector[1].approximate == "none"


def test_fuse_hidden_states_rejects_a_too_short_tuple():
    layout = EncoderLayout("t", 24, 4, 8, 2, 1)
    conn = SparseChannelIntegration(layout, 4, layers=[7, 15])
    with pytest.raises(ValueError, match="needs index 23"):
        conn.fuse_hidden_states([torch.zeros(1, 17, 4)] * 20)


# --- gradients --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connector", CONNECTORS)
def test_gradients_reach_the_projector_and_never_the_frozen_encoder(connector):
    cfg = cfg_for("encoder=tiny_clip", f"connector={connector}", "llm=tiny", "stage=pretrain")
    torch.manual_seed(0)
    vlm = build_vlm(cfg)
    apply_freezing(vlm, list(cfg.stage.train))  # stage 1: connector only
    vlm.train()
    assert not vlm.encoder.training  # a frozen tower stays in eval mode

    grad_inside: list[bool] = []
    outputs: list[torch.Tensor] = []
    first_block = vlm.encoder.model.encoder.layers[0]
    first_block.register_forward_hook(lambda m, i, o: grad_inside.append(torch.is_grad_enabled()))
    vlm.encoder.register_forward_hook(lambda m, i, o: outputs.extend(o))

    n_vis, vocab, side = vlm.num_visual_tokens, vlm.llm.model.config.vocab_size, vlm.encoder.layout.image_size
    g = torch.Generator().manual_seed(1)
    ids = torch.cat(
        [
            torch.randint(4, vocab, (2, 3), generator=g),
            torch.full((2, n_vis), IMAGE_TOKEN_INDEX),
            torch.randint(4, vocab, (2, 6), generator=g),
        ],
        dim=1,
    )
    labels = ids.masked_fill(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    pixels = torch.randn(2, 3, side, side, generator=g)
    loss = vlm(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=labels).loss
    loss.backward()

    assert grad_inside == [False]  # the encoder ran under no_grad
    assert outputs and not any(o.requires_grad for o in outputs)
    for name, p in vlm.connector.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    for part in (vlm.encoder, vlm.llm):
        for name, p in part.named_parameters():
            assert not p.requires_grad and p.grad is None, name


# --- build-time validation --------------------------------------------------------------------------------
BAD = [
    # (overrides, substring of the message)
    (["connector=sti", "connector.layers=[7,25]"], "connector.layers[1]=25 is out of range"),
    (["connector=sci", "connector.layers=[-26,15]"], "connector.layers[0]=-26 is out of range"),
    (["connector=sci", "connector.layers=[]"], "connector.layers=[] must be a non-empty list"),
    (["connector=sci", "connector.layers=7"], "connector.layers=7 must be a non-empty list"),
    (["connector=sti", "connector.layers=[true,15]"], "connector.layers[0]=True must be an integer"),
    (["connector=sti", "connector.layers=[7.0,15]"], "connector.layers[0]=7.0 must be an integer"),
    (["connector=sci", "connector.layers=[a,15]"], "connector.layers[0]='a' must be an integer"),
    (["connector=sci", "connector.final_layer=30"], "connector.final_layer=30 is out of range"),
    (["connector=dci", "connector.groups=[[0,11],[12,25]]"], "connector.groups[1][1]=25 is out of range"),
    (["connector=dci", "connector.groups=[[5,3],[12,23]]"], "connector.groups[0]=[5, 3] is an empty group"),
    (["connector=dci", "connector.groups=[[0,11],[-1,23]]"], "connector.groups[1]=[-1, 23] is an empty group"),
    (["connector=dci", "connector.groups=[[0,12],[12,23]]"], "connector.groups[0] and connector.groups[1] overlap"),
    (["connector=dci", "connector.groups=[[0,11.5],[12,23]]"], "connector.groups[0][1]=11.5 must be an integer"),
    (["connector=dci", "connector.groups=[[0,false],[12,23]]"], "connector.groups[0][1]=False must be an integer"),
    (["connector=dci", "connector.groups=[[0,x],[12,23]]"], "connector.groups[0][1]='x' must be an integer"),
    (["connector=dci", "connector.groups=[[0,11,12]]"], "connector.groups[0]=[0, 11, 12] must be an inclusive"),
    (["connector=dci", "connector.groups=[]"], "connector.groups=[] must be a non-empty list"),
    (["connector=dci", "connector.allow_overlap=maybe"], "connector.allow_overlap='maybe' must be true or false"),
    (["connector=sti", "connector.pool=0"], "connector.pool=0 must be an integer"),
    (["connector=dci_efficient", "connector.downsample.mode=nearest"], "connector.downsample.mode='nearest'"),
    (["connector=dci_efficient", "connector.downsample.position=middle"], "connector.downsample.position"),
    (["connector=dci_efficient", "connector.downsample.factor=0"], "connector.downsample.factor=0"),
    (["connector=mlp", "connector.projector=mlp3x"], "connector.projector='mlp3x'"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_is_rejected_by_the_connector_before_any_weights_load(overrides, message):
    cfg = cfg_for("encoder=tiny_clip", "llm=tiny", *overrides)
    with pytest.raises(ValueError) as info:
        build_vlm(cfg)
    assert message in str(info.value)
    if "out of range" in message or "integer hidden_states" in message or "empty group" in message:
        assert "0..24 (or -25..-1)" in str(info.value)  # the valid range is stated
    frames = traceback.extract_tb(info.tb)
    # Raised inside the connector package, from build_connector, i.e. before the encoder or the LLM is built.
    assert f"{os.sep}dc{os.sep}models{os.sep}connectors{os.sep}" in frames[-1].filename
    assert any(f.name == "build_connector" for f in frames)
    assert not any("encoders" in f.filename or "llms" in f.filename for f in frames)


@pytest.mark.parametrize(
    ("encoder", "overrides", "message"),
    [
        ("clip_l336", ["connector=sti", "connector.layers=[7,25]"], "0..24 (or -25..-1)"),
        ("siglip", ["connector=sci", "connector.layers=[7,28]"], "0..27 (or -28..-1)"),
        ("siglip", ["connector=dci", "connector.groups=[[0,12],[13,28]]"], "0..27 (or -28..-1)"),
    ],
)
def test_real_encoders_validate_against_their_own_layout(encoder, overrides, message):
    """With the hub-weight configs too: the error comes from the connector, before any download is tried."""
    cfg = cfg_for(f"encoder={encoder}", "llm=vicuna7b", *overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build_vlm(cfg)


def test_negative_indices_and_overlap_opt_in():
    layout = EncoderLayout("clip", 24, 4, 8, 2, 1)
    states = [torch.randn(1, 17, 4) for _ in range(25)]
    pos = SparseChannelIntegration(layout, 4, layers=[7, 15])
    neg = SparseChannelIntegration(layout, 4, layers=[-18, -10], final_layer=23)
    assert neg.taps == pos.taps == [(23,), (7,), (15,)]
    torch.testing.assert_close(neg.fuse_hidden_states(states), pos.fuse_hidden_states(states))
    dci = DenseChannelIntegration(layout, 4, groups=[[0, -14], [-13, -2]])
    assert dci.taps == [(23,), tuple(range(0, 12)), tuple(range(12, 24))]
    over = DenseChannelIntegration(layout, 4, groups=[[0, 12], [12, 23]], allow_overlap=True)
    assert over.taps[1][-1] == over.taps[2][0] == 12


def test_sweep_overrides_compose_and_validate():
    """What `train.py -m connector=sti,sci 'connector.layers=[7,15],[11,23]'` composes for each job."""
    for connector in ("sti", "sci"):
        for layers in ("[7,15]", "[11,23]"):
            conn = build_connector(
                cfg_for("encoder=tiny_clip", "llm=tiny", f"connector={connector}", f"connector.layers={layers}")
            )
            assert conn.taps == [(23,)] + [(int(i),) for i in layers.strip("[]").split(",")]


# --- efficient downsampling -------------------------------------------------------------------------------
def grid_tokens(rows: int, cols: int, c: int = 6, extra: int = 0, b: int = 2) -> torch.Tensor:
    return torch.randn(b, rows * cols + extra, c, generator=torch.Generator().manual_seed(rows * 100 + extra))


def to_maps(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[B, rows*cols, C] raster tokens -> [B, C, rows, cols] (written out: token r*cols + c is pixel (r, c))."""
    b, _, c = x.shape
    return x.reshape(b, rows, cols, c).permute(0, 3, 1, 2)


def from_maps(m: torch.Tensor) -> torch.Tensor:
    b, c, h, w = m.shape
    return m.permute(0, 2, 3, 1).reshape(b, h * w, c)


def test_bilinear_24_to_12_is_interpolate_and_the_2x2_mean():
    x = grid_tokens(24, 24)
    out = Downsample((24, 24), mode="bilinear", factor=2)(x)
    expected = from_maps(F.interpolate(to_maps(x, 24, 24), size=(12, 12), mode="bilinear", align_corners=False))
    torch.testing.assert_close(out, expected)
    # With align_corners=False an exact /2 bilinear samples halfway between pixel pairs: the 2x2 mean.
    mean = x.reshape(2, 12, 2, 12, 2, 6).mean(dim=(2, 4)).reshape(2, 144, 6)
    torch.testing.assert_close(out, mean, atol=1e-6, rtol=1e-6)
    assert out.shape == (2, 144, 6)


def test_avgpool_24_to_12_is_the_2x2_mean():
    x = grid_tokens(24, 24)
    out = Downsample((24, 24), mode="avgpool", factor=2)(x)
    mean = x.reshape(2, 12, 2, 12, 2, 6).mean(dim=(2, 4)).reshape(2, 144, 6)
    torch.testing.assert_close(out, mean, atol=1e-6, rtol=1e-6)


def test_siglip_27x27_goes_to_14x14():
    """Documented choice: ceil(27 / 2) = 14 per side (196 tokens), no row/column dropped."""
    x = grid_tokens(27, 27)
    bil = Downsample((27, 27), mode="bilinear", factor=2)
    assert bil.target == (14, 14) and bil.num_tokens(729) == 196
    expected = from_maps(F.interpolate(to_maps(x, 27, 27), size=(14, 14), mode="bilinear", align_corners=False))
    torch.testing.assert_close(bil(x), expected)
    # avgpool: adaptive windows [floor(i*27/14), ceil((i+1)*27/14)) per axis, so every input pixel is used.
    maps = to_maps(x, 27, 27)
    win = [(i * 27 // 14, -(-(i + 1) * 27 // 14)) for i in range(14)]
    assert win[0] == (0, 2) and win[-1] == (25, 27)
    hand = torch.stack(
        [torch.stack([maps[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for c0, c1 in win], -1) for r0, r1 in win], -2
    )
    torch.testing.assert_close(Downsample((27, 27), mode="avgpool", factor=2)(x), from_maps(hand))
    # an explicit size overrides the factor (e.g. 13x13 if that is preferred)
    assert Downsample((27, 27), size=[13, 13]).num_tokens(729) == 169


def test_sti_tokens_pass_through_downsampling():
    layout = EncoderLayout("clip_grid", 24, 6, 48, 2, 1)
    conn = SparseTokenIntegration(layout, 5, layers=[7, 15], downsample={"mode": "avgpool", "factor": 2})
    assert conn.num_visual_tokens() == 144 + 72 + 72
    fused = conn.fuse([grid_tokens(24, 24, b=1) for _ in range(3)])
    down = conn.downsample(fused)
    assert down.shape == (1, 288, 6)
    torch.testing.assert_close(down[:, 144:], fused[:, 576:])  # the pooled STI tokens, untouched
    mean = fused[:, :576].reshape(1, 12, 2, 12, 2, 6).mean(dim=(2, 4)).reshape(1, 144, 6)
    torch.testing.assert_close(down[:, :144], mean, atol=1e-6, rtol=1e-6)


def test_pre_and_post_projector_positions():
    layout = EncoderLayout("clip_grid", 24, 4, 48, 2, 1)
    feats = [grid_tokens(24, 24, c=4, b=1) for _ in range(3)]
    pre = DenseChannelIntegration(layout, 8, groups=[[0, 11], [12, 23]], downsample={"position": "pre"})
    post = DenseChannelIntegration(layout, 8, groups=[[0, 11], [12, 23]], downsample={"position": "post"})
    post.projector.load_state_dict(pre.projector.state_dict())
    fused = torch.cat(feats, dim=-1)

    def interp(x: torch.Tensor) -> torch.Tensor:
        return from_maps(F.interpolate(to_maps(x, 24, 24), size=(12, 12), mode="bilinear", align_corners=False))

    torch.testing.assert_close(pre(feats), pre.projector(interp(fused)))
    torch.testing.assert_close(post(feats), interp(pre.projector(fused)))
    assert pre(feats).shape == post(feats).shape == (1, 144, 8)
    assert not torch.allclose(pre(feats), post(feats))  # the GELU makes the order matter
    assert pre.num_visual_tokens() == post.num_visual_tokens() == 144


def test_dci_efficient_config_is_dci_plus_bilinear_pre_projector():
    cfg = cfg_for("encoder=tiny_clip", "llm=tiny", "connector=dci_efficient")
    assert cfg.connector.downsample == {"mode": "bilinear", "factor": 2, "size": None, "position": "pre"}
    post = build_connector(
        cfg_for(
            "encoder=clip_l336",
            "llm=tiny",
            "connector=dci_efficient",
            "connector.downsample.position=post",
            "connector.downsample.mode=avgpool",
        )
    )
    assert (post.downsample.position, post.downsample.mode, post.num_visual_tokens()) == ("post", "avgpool", 144)
    sti = build_connector(
        cfg_for(
            "encoder=clip_l336",
            "llm=tiny",
            "connector=sti",
            "connector.downsample={mode: bilinear, factor: 2, size: null, position: pre}",
        )
    )
    assert sti.num_visual_tokens() == 144 + 144


def test_visual_token_count_for_another_patch_grid():
    layout = EncoderLayout("clip_l336", 24, 8, 336, 14, 1)
    sti = SparseTokenIntegration(layout, 4, layers=[7, 15])
    assert sti.num_visual_tokens() == 720 and sti.num_visual_tokens((12, 12)) == 144 + 2 * 18
    eff = DenseChannelIntegration(layout, 4, groups=[[0, 11], [12, 23]], downsample={"factor": 2})
    assert eff.num_visual_tokens() == 144 and eff.num_visual_tokens((27, 27)) == 196
    down = Downsample((24, 24), factor=2)
    x = grid_tokens(10, 6, extra=3)
    out = down(x, grid=(10, 6))
    assert out.shape == (2, 5 * 3 + 3, 6)
    torch.testing.assert_close(out[:, 15:], x[:, 60:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 12}, "connector.downsample.size=12"),
        ({"size": [0, 3]}, "connector.downsample.size=[0, 3]"),
        ({"size": [12, True]}, "connector.downsample.size=[12, True]"),
        ({"size": [25, 12]}, "larger than the patch grid"),
        ({"factor": 1.5}, "connector.downsample.factor=1.5"),
        ({"factor": None}, "connector.downsample.factor=None"),
    ],
)
def test_downsample_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Downsample((24, 24), **kwargs)
