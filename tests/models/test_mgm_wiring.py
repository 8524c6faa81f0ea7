"""Mini-Gemini wired end to end: the dual encoder from its configs, the connector's mining, preprocessing at the
high-res side, region locality through the connector, gradients, freezing, FSDP units, LoRA, FLOPs, export refusal.

Expected values are computed by hand from the layouts (counts, widths, token grids) or by independent paths (stock
CLIPVisionModel and timm on hand-interpolated pixels), never from the code under test.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from timm.models.convnext import ConvNeXtBlock
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from dc.constants import IMAGE_TOKEN_INDEX
from dc.data.visual import build_visual_processor
from dc.export.hf_llava import export_blockers
from dc.models.builder import build_connector, build_vlm
from dc.models.encoders.dual import DualEncoder
from dc.training.checkpoint import persisted_prefixes
from dc.training.fsdp import LoraWrapPolicy
from dc.training.stages import apply_freezing
from dc.training.throughput import flops_spec
from dc.utils.instantiate import instantiate

from dc_testing import ROOT, compose_config, make_module

BASE = ["run_name=x", "paths.output_dir=/tmp/dc-mgm-test"]
# The real config file with tiny widths: CLIP-L's 24 blocks, 336 px / patch 14 (24x24 grid) at width 16, and a
# ConvNeXt with the real stages and strides (768 px -> 192x192 at stride 4) at widths 8/16/32/64.
REAL_LAYOUT_TINY_WIDTHS = [
    "encoder=mgm_clip_convnext",
    "encoder.layout.hidden_size=16",
    "encoder.model.pretrained=null",
    "+encoder.model.config={intermediate_size: 32, num_attention_heads: 2}",
    "encoder.model.aux.pretrained=false",
    "+encoder.model.aux.dims=[8,16,32,64]",
    "+encoder.model.aux.depths=[1,1,1,1]",
    "encoder.mgm.aux_width=120",
    "llm=tiny",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg_for(*overrides: str):
    return compose_config("train", [*overrides, *BASE])


def tiny_vlm(*overrides: str):
    torch.manual_seed(0)
    return build_vlm(cfg_for("encoder=tiny_mgm", "connector=dci", "llm=tiny", *overrides))


def ln_linear_params(d_in: int, d_out: int) -> int:
    """Sequential(LayerNorm(d_in), Linear(d_in, d_out)): 2·d_in + d_in·d_out + d_out."""
    return 2 * d_in + d_in * d_out + d_out


def mining_params(query: int, aux: int) -> int:
    return ln_linear_params(query, query) + 2 * ln_linear_params(aux, query)


# --- layouts and token counts ----------------------------------------------------------------------------------
def test_tiny_mgm_shapes_and_counts_by_hand():
    vlm = tiny_vlm()
    enc, conn = vlm.encoder, vlm.connector
    assert isinstance(enc, DualEncoder)
    assert (enc.layout.image_size, enc.layout.input_size, enc.layout.grid) == (48, 96, (3, 3))
    feats = enc(torch.randn(2, 3, 96, 96))
    # DCI taps of the 48 px CLIP (3x3 patches of 16 px, CLS dropped), then the aux map: 96 / 4 = 24, 8+16+32+64 = 120.
    assert [tuple(f.shape) for f in feats] == [(2, 9, 64)] * 3 + [(2, 120, 24, 24)]
    assert conn.num_visual_tokens() == 9 and conn.projector[0].in_features == 3 * 64
    assert (conn.mining.low_width, conn.mining.aux_width) == (64, 120)
    assert sum(p.numel() for p in conn.mining.parameters()) == mining_params(64, 120) == 20256
    assert conn(feats).shape == (2, 9, 128)


def test_real_layouts_token_counts_on_meta():
    real = ["encoder=mgm_clip_convnext", "llm=vicuna7b", *BASE]
    dci = build_connector(compose_config("train", ["connector=dci", *real]), device="meta")
    assert (dci.layout.grid, dci.layout.input_size, dci.num_visual_tokens()) == ((24, 24), 768, 576)
    assert dci.projector[0].in_features == 3 * 1024 and dci.projector[0].out_features == 4096
    # MGM's own three projectors: 1024 -> 1024 query, 2880 -> 1024 key and value (loadable from MGM checkpoints).
    assert sum(p.numel() for p in dci.mining.parameters()) == mining_params(1024, 2880) == 6_963_456
    assert dci.mgm.aux_grid(dci.layout) == (192, 192)  # 8 x 8 positions per token
    eff = build_connector(compose_config("train", ["connector=dci_efficient", *real]), device="meta")
    assert eff.num_visual_tokens() == 144
    before = build_connector(
        compose_config("train", ["connector=dci", "encoder.mgm.mode=before", *real]), device="meta"
    )
    assert sum(p.numel() for p in before.mining.parameters()) == mining_params(3072, 2880) == 27_158_784
    mlp = build_connector(compose_config("train", ["connector=mlp", *real]), device="meta")
    assert mlp.num_visual_tokens() == 576 and mlp.projector[0].in_features == 1024  # plain MGM


def test_real_layout_tiny_widths_forward():
    cfg = cfg_for("connector=dci", *REAL_LAYOUT_TINY_WIDTHS)
    torch.manual_seed(0)
    vlm = build_vlm(cfg)
    feats = vlm.encoder(torch.randn(1, 3, 768, 768))
    assert [tuple(f.shape) for f in feats] == [(1, 576, 16)] * 3 + [(1, 120, 192, 192)]
    assert vlm.connector(feats).shape == (1, 576, 128)
    eff = build_connector(cfg_for("connector=dci_efficient", *REAL_LAYOUT_TINY_WIDTHS))
    assert eff(feats).shape == (1, 144, 128)


# --- the two views -------------------------------------------------------------------------------------------
def test_dual_encoder_equals_independent_towers():
    vlm = tiny_vlm()
    enc = vlm.encoder
    pixels = torch.randn(2, 3, 96, 96)
    taps = enc(pixels)
    # Bilinear 96 -> 48 with align_corners=False samples at 2i + 0.5: the mean of each 2x2 block.
    low = pixels.reshape(2, 3, 48, 2, 48, 2).mean((3, 5))
    stock = CLIPVisionModel(CLIPVisionConfig(**{**enc.model.config.to_dict(), "num_hidden_layers": 24})).eval()
    missing, _ = stock.load_state_dict(enc.model.state_dict(), strict=False)
    assert all(".layers.23." in k or "post_layernorm" in k for k in missing)
    with torch.no_grad():
        hs = stock(pixel_values=low, output_hidden_states=True).hidden_states
    expected = [hs[23], torch.stack(hs[0:12]).mean(0), torch.stack(hs[12:24]).mean(0)]
    for got, want in zip(taps[:3], expected, strict=True):
        torch.testing.assert_close(got, want[:, 1:], rtol=1e-4, atol=1e-5)
    ref = timm.create_model("convnext_large_mlp", pretrained=False, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    ref.load_state_dict(enc.aux.state_dict(), strict=False)
    with torch.no_grad():
        stages = ref.eval().forward_intermediates(pixels, intermediates_only=True)
    aux = torch.cat([F.interpolate(s, size=(24, 24), mode="bilinear", align_corners=False) for s in stages], 1)
    torch.testing.assert_close(taps[3], aux, rtol=1e-5, atol=1e-5)


def test_preprocessing_at_the_high_res_side():
    cfg = cfg_for("encoder=tiny_mgm")
    visual = build_visual_processor(cfg, aspect="pad")
    image = Image.new("RGB", (60, 30), (200, 10, 10))
    views, meta = visual(image)
    assert views.shape == (1, 3, 96, 96) and meta.tokens == 9 and meta.views == 1
    # Pad to 60x60 with int(255 * CLIP mean) = (122, 116, 104), centred, then the 96 px CLIP processor.
    square = Image.new("RGB", (60, 60), (122, 116, 104))
    square.paste(image, (0, 15))
    proc = CLIPImageProcessor(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96}, resample=3)
    assert torch.equal(views[0], proc(images=square, return_tensors="pt")["pixel_values"][0])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    from_bytes, _ = visual.from_bytes(buf.getvalue())
    torch.testing.assert_close(from_bytes, views, rtol=0, atol=1e-6)
    assert visual.empty().shape == (0, 3, 96, 96)
    real = instantiate(OmegaConf.load(ROOT / "configs/encoder/mgm_clip_convnext.yaml").image)
    assert real(images=Image.new("RGB", (40, 20)), return_tensors="pt")["pixel_values"].shape == (1, 3, 768, 768)


# --- region locality through the connector -------------------------------------------------------------------
@pytest.mark.parametrize(("connector", "mode"), [("dci", "after"), ("dci", "before"), ("dci_efficient", "after")])
def test_perturbing_one_region_moves_only_its_tokens(connector: str, mode: str):
    cfg = cfg_for(f"connector={connector}", f"encoder.mgm.mode={mode}", *REAL_LAYOUT_TINY_WIDTHS)
    torch.manual_seed(0)
    conn = build_connector(cfg).double()
    taps = [torch.randn(1, 576, 16, dtype=torch.float64) for _ in conn.taps]
    aux = torch.randn(1, 120, 192, 192, dtype=torch.float64)
    base = conn([*taps, aux])
    r, c = 5, 17
    moved = aux.clone()
    moved[:, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += torch.randn(1, 120, 8, 8, dtype=torch.float64)
    touched = torch.nonzero((conn([*taps, moved]) - base).abs().amax(-1)[0] > 0).flatten().tolist()
    # Token (r, c) of the 24x24 grid owns aux rows 8r..8r+7, cols 8c..8c+7. The efficient DC's bilinear 24 -> 12
    # averages 2x2 blocks exactly, so only output (r // 2, c // 2) of the 12x12 grid sees it.
    assert touched == ([r * 24 + c] if connector == "dci" else [(r // 2) * 12 + c // 2])


# --- training: gradients, freezing, LoRA, FSDP units -------------------------------------------------------------
def _batch(vlm):
    n = vlm.num_visual_tokens
    ids = torch.tensor([[1] + [IMAGE_TOKEN_INDEX] * n + [20, 21, 22, 23]] * 2)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clamp(min=0)}


@pytest.mark.parametrize("train", [["connector"], ["connector", "llm"]])
def test_gradients_reach_mining_and_projector_not_the_towers(train: list[str]):
    vlm = tiny_vlm()
    apply_freezing(vlm, train)
    vlm.train()
    assert not vlm.encoder.training and not vlm.encoder.aux.training  # frozen towers stay in eval mode
    out = vlm(pixel_values=torch.randn(2, 3, 96, 96), **_batch(vlm))
    out.loss.backward()
    for name, p in [*vlm.connector.mining.named_parameters(), *vlm.connector.projector.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in vlm.encoder.named_parameters():  # CLIP and ConvNeXt
        assert not p.requires_grad and p.grad is None, name
    llm_grads = [p.grad is not None for p in vlm.llm.parameters()]
    assert all(llm_grads) if "llm" in train else not any(llm_grads)


def test_text_only_batch_keeps_the_mining_in_the_graph():
    vlm = tiny_vlm()
    apply_freezing(vlm, ["connector"])
    ids = torch.tensor([[1, 20, 21, 22]])
    out = vlm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, pixel_values=None)
    out.loss.backward()  # the blank view is a 96 px one (layout.input_size), as the dual tower needs
    assert all(p.grad is not None for p in vlm.connector.mining.parameters())


def test_lora_stage_trains_adapters_and_mining():
    cfg = cfg_for("encoder=tiny_mgm", "llm=tiny", "stage=lora")
    module = make_module(cfg)
    module.configure_model()
    vlm = module.vlm
    assert all(p.requires_grad for p in vlm.connector.mining.parameters())
    assert not any(p.requires_grad for p in vlm.encoder.parameters())
    out = vlm(pixel_values=torch.randn(2, 3, 96, 96), **_batch(vlm))
    out.loss.backward()
    named = dict(vlm.llm.named_parameters())
    assert any(".lora_B." in n and p.grad is not None for n, p in named.items())
    assert all(p.grad is None for n, p in named.items() if ".lora_" not in n)
    assert all(p.grad is not None for p in vlm.connector.mining.parameters())


@pytest.mark.parametrize("stage", ["finetune", "lora"])
def test_fsdp_wrap_units_cover_both_towers(stage: str):
    """FSDP2 (`trainer=fsdp`): every block of both towers is its own `fully_shard` unit; FSDP1 declares the same."""
    from dc.training.fsdp2 import fsdp_units

    cfg = cfg_for("encoder=tiny_mgm", "llm=tiny", "trainer=fsdp", f"stage={stage}")
    module = make_module(cfg)
    module.configure_model()
    units = fsdp_units(module.vlm)
    assert sum(isinstance(m, ConvNeXtBlock) for m in units) == 4  # depths 1/1/1/1
    assert sum(isinstance(m, CLIPEncoderLayer) for m in units) == 23  # blocks built up to the deepest tap
    assert sum(isinstance(m, LlamaDecoderLayer) for m in units) == 4 and module.vlm.connector in units
    assert units[-1] is module.vlm
    fsdp1 = cfg_for("encoder=tiny_mgm", "llm=tiny", "trainer=fsdp1", f"stage={stage}")
    strategy = instantiate(fsdp1.trainer.strategy)
    strategy.configure_units(module)
    policy = strategy.kwargs["auto_wrap_policy"]
    classes = policy.module_classes if isinstance(policy, LoraWrapPolicy) else set(policy._module_classes)
    assert {CLIPEncoderLayer, ConvNeXtBlock} <= set(classes)


# --- FLOPs, checkpoints, export ----------------------------------------------------------------------------------
def test_flops_count_the_aux_tower_and_mining_by_hand():
    vlm = tiny_vlm()
    apply_freezing(vlm, ["connector"])
    spec = flops_spec(vlm)
    clip = sum(p.numel() for p in vlm.encoder.model.parameters())
    projector = (192 * 128 + 128) + (128 * 128 + 128)
    assert (spec.encoder_params, spec.connector_params) == (clip, projector)

    def block(d: int) -> int:  # dwconv 7x7 (+bias), LayerNorm, Linear d->4d, Linear 4d->d, layer scale
        return 49 * d + d + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d) + d

    def down(a: int, b: int) -> int:  # LayerNorm(a), Conv 2x2/2 a->b
        return 2 * a + 4 * a * b + b

    stem = (3 * 16 * 8 + 8) + 2 * 8  # Conv 4x4/4 3->8, LayerNorm
    convnext = (stem + block(8)) * 24**2 + (down(8, 16) + block(16)) * 12**2
    convnext += (down(16, 32) + block(32)) * 6**2 + (down(32, 64) + block(64)) * 3**2
    mining = ln_linear_params(64, 64) * 9 + 2 * ln_linear_params(120, 64) * 24 * 24
    assert spec.aux_flops_per_image == 2 * convnext + 4 * mining  # frozen tower: forward; mining trains: 2 + 2
    llm = spec.llm_params
    expected = 2 * clip * 10 * 3 + 4 * projector * 9 * 3 + 4 * llm * 50 + 3 * (2 * convnext + 4 * mining)
    assert spec.batch_flops(tokens=50, images=3) == expected


def test_checkpoints_and_export():
    real = OmegaConf.load(ROOT / "configs/encoder/mgm_clip_convnext.yaml")
    tiny = OmegaConf.load(ROOT / "configs/encoder/tiny_mgm.yaml")
    stage = {"train": ["connector"]}
    assert "vlm.encoder." not in persisted_prefixes({"encoder": real, "llm": {"pretrained": "x"}}, stage)
    assert "vlm.encoder." in persisted_prefixes({"encoder": tiny, "llm": {"pretrained": "x"}}, stage)
    reasons = export_blockers(tiny_vlm())
    assert any("Mini-Gemini" in r for r in reasons)


# --- refusals ---------------------------------------------------------------------------------------------------
def test_refusals_name_the_key():
    with pytest.raises(ValueError, match="image=single"):
        build_connector(cfg_for("encoder=tiny_mgm", "image=anyres"), device="meta")
    with pytest.raises(ValueError, match="encoder.mgm.mode=after"):
        build_connector(cfg_for("encoder=tiny_mgm", "connector=sti", "encoder.mgm.mode=before"), device="meta")
    with pytest.raises(ValueError, match="encoder.mgm.mode"):
        build_connector(cfg_for("encoder=tiny_mgm", "encoder.mgm.mode=middle"), device="meta")
    with pytest.raises(ValueError, match="encoder.mgm.aux_width=100"):
        tiny_vlm("encoder.mgm.aux_width=100")
    with pytest.raises(ValueError, match="aux_stride=8"):
        tiny_vlm("encoder.mgm.aux_stride=8")
    with pytest.raises(ValueError, match="does not divide"):
        build_connector(cfg_for("encoder=tiny_mgm", "encoder.mgm.aux_stride=5", "encoder.layout.input_size=80"))
    with pytest.raises(ValueError, match="aux.pretrained"):
        tiny_vlm("encoder.model.aux.pretrained=true")
    with pytest.raises(ValueError, match="aux.image_size"):
        tiny_vlm("+encoder.model.aux.image_size=96")
    vlm = tiny_vlm()
    with pytest.raises(ValueError, match=r"\[B, 3, 96, 96\]"):
        vlm.encoder(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="aux map"):
        vlm.connector(vlm.encoder(torch.randn(1, 3, 96, 96))[:3])


def test_headline_command_composes_with_real_hub_ids():
    """`python train.py connector=dci encoder=mgm_clip_convnext llm=vicuna7b --cfg job` (nothing downloaded)."""
    cmd = [sys.executable, "train.py", "connector=dci", "encoder=mgm_clip_convnext", "llm=vicuna7b", "--cfg", "job"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    shown = OmegaConf.create(out)
    assert shown.encoder.model._target_ == "dc.models.encoders.dual.DualEncoder"
    assert shown.encoder.model.pretrained == "openai/clip-vit-large-patch14-336"
    assert shown.encoder.model.aux.model_name == "convnext_large_mlp.clip_laion2b_ft_soup_320"
    assert shown.encoder.layout.input_size == 768 and shown.encoder.image.crop_size.height == 768
    assert shown.encoder.mgm.mode == "after" and shown.llm.pretrained == "lmsys/vicuna-7b-v1.5"
    assert shown.connector._target_ == "dc.models.connectors.DenseChannelIntegration"


# --- both stages, checkpoints and eval through the pipeline -------------------------------------------------------
@pytest.mark.slow
def test_two_stages_and_eval_through_the_pipeline(tmp_path, data_dir):
    from dc.pipeline import evaluate, train
    from dc.training.checkpoint import read_checkpoint

    def stage_cfg(stage: str, *extra: str):
        return compose_config(
            "train",
            [
                "debug=fast",
                "encoder=tiny_mgm",
                f"stage={stage}",
                f"paths.output_dir={tmp_path / stage}",
                f"paths.data_dir={data_dir}",
                "run_name=mgm",
                "logger=csv",
                "trainer.enable_progress_bar=false",
                "trainer.max_steps=2",
                *extra,
            ],
        )

    pre = stage_cfg("pretrain")
    train(pre)
    first = tmp_path / "pretrain" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(first)["state_dict"]
    assert any(k.startswith("vlm.connector.mining.") for k in state)
    assert any(k.startswith("vlm.encoder.aux.") for k in state)  # random tiny towers are checkpointed
    fine = stage_cfg("finetune", f"stage.init_connector_from={first}")
    module = make_module(fine)
    module.configure_model()
    for key, value in module.vlm.connector.mining.state_dict().items():  # stage 2 starts from stage 1's mining
        assert torch.equal(value, state[f"vlm.connector.mining.{key}"]), key
    train(fine)
    ckpt = tmp_path / "finetune" / "checkpoints" / "last.ckpt"
    root = tmp_path / "finetune"
    data_root = str(fine.data.image_folder).rsplit("/", 1)[0]
    eval_cfg = compose_config(
        "eval",
        [
            f"ckpt_path={ckpt}",
            f"paths.output_dir={root / 'eval'}",
            "limit=4",
            "batch_size=4",
            f"benchmark.root={data_root}",
        ],
    )
    metrics, _ = evaluate(eval_cfg)
    assert 0.0 <= metrics["synthetic/accuracy"] <= 100.0 and "synthetic/blank_accuracy" in metrics
