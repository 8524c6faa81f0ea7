"""Mini-Gemini parts: the ConvNeXt aux tower, patch-info mining, and its composition with DC channel fusion."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXtBlock

from dc.models.connectors.mining import (
    PatchInfoMining,
    mgm_fuse,
    mgm_state_dict,
    mining_query_width,
    region_positions,
)
from dc.models.encoders.convnext import MGM_CONVNEXT, ConvNeXtEncoder

TINY_DIMS = (8, 16, 32, 64)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_convnext(image_size: int = 768, **kwargs) -> ConvNeXtEncoder:
    torch.manual_seed(0)
    return ConvNeXtEncoder(
        model_name=MGM_CONVNEXT, pretrained=False, image_size=image_size, dims=TINY_DIMS, depths=(1, 1, 1, 1), **kwargs
    )


def reference_mining(m: PatchInfoMining, low: torch.Tensor, aux: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """MGM's formula written out token by token, with explicit slicing and softmax."""

    def ln_linear(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        norm, lin = seq[0], seq[1]
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
        return y @ lin.weight.T + lin.bias

    batch, _, width = low.shape
    _, chans, height, wid = aux.shape
    ph, pw = height // rows, wid // cols
    out = torch.empty_like(low)
    query = ln_linear(m.query_projector, low)
    for b in range(batch):
        for r in range(rows):
            for c in range(cols):
                n = r * cols + c
                patch = aux[b, :, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw].reshape(chans, -1).T  # [S, C_aux]
                key = ln_linear(m.aux_projector, patch)
                value = ln_linear(m.val_projector, patch)
                scores = key @ query[b, n] / math.sqrt(width)
                weights = torch.exp(scores - scores.max())
                out[b, n] = (weights / weights.sum()) @ value
    return out


# --- which aux positions each token sees ----------------------------------------------------------------------
def test_region_positions_small_by_hand():
    # 2x3 tokens over a 4x6 map: each token owns a 2x2 block; flat index = y * 6 + x.
    expected = [
        [0, 1, 6, 7],
        [2, 3, 8, 9],
        [4, 5, 10, 11],
        [12, 13, 18, 19],
        [14, 15, 20, 21],
        [16, 17, 22, 23],
    ]
    assert region_positions((2, 3), (4, 6)).tolist() == expected


def test_region_positions_mgm_layout():
    # CLIP-L/336 24x24 tokens over ConvNeXt stride-4 map at 768 px (192x192): 8x8 = 64 positions each.
    pos = region_positions((24, 24), (192, 192))
    assert pos.shape == (576, 64)
    assert pos[0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 192]
    assert pos[0, -1].item() == 7 * 192 + 7  # 1351
    assert pos[25, :8].tolist() == list(range(1544, 1552))  # token (1, 1): rows 8..15, cols 8..15; 8*192+8 = 1544
    assert pos[25, -1].item() == 15 * 192 + 15  # 2895
    assert pos[23, 0].item() == 184  # token (0, 23): column 23 * 8
    assert pos[575, 0].item() == 184 * 192 + 184 and pos[575, -1].item() == 192 * 192 - 1
    assert sorted(pos.flatten().tolist()) == list(range(192 * 192))  # the regions tile the map exactly
    # A stride-16 map (48x48) would give 2x2 sub-patches.
    assert region_positions((24, 24), (48, 48))[0].tolist() == [0, 1, 48, 49]


def test_regions_layout_matches_positions():
    m = PatchInfoMining(4, 1)
    aux = torch.arange(12 * 18, dtype=torch.float32).view(1, 1, 12, 18)  # value = flat index
    got = m.regions(aux, (3, 6))[0, :, :, 0].long()
    assert torch.equal(got, region_positions((3, 6), (12, 18)))


# --- the mining math ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rows", "cols", "height", "width"), [(4, 4, 8, 8), (2, 3, 4, 9), (3, 3, 3, 3)])
def test_mining_matches_mgm_formula(rows, cols, height, width):
    torch.manual_seed(0)
    m = PatchInfoMining(8, 5).double()
    for p in m.parameters():  # non-trivial LayerNorm affine too
        torch.nn.init.normal_(p, std=0.5)
    low = torch.randn(2, rows * cols, 8, dtype=torch.float64)
    aux = torch.randn(2, 5, height, width, dtype=torch.float64)
    got = m(low, aux, grid=(rows, cols) if rows != cols else None)
    assert got.shape == (2, rows * cols, 8)
    torch.testing.assert_close(got, reference_mining(m, low, aux, rows, cols), rtol=1e-10, atol=1e-10)


def test_projector_widths_follow_mgm():
    m = PatchInfoMining(1024, 2880)
    assert [tuple(p.shape) for p in m.query_projector.parameters()] == [(1024,), (1024,), (1024, 1024), (1024,)]
    assert tuple(m.aux_projector[1].weight.shape) == (1024, 2880)
    assert tuple(m.val_projector[1].weight.shape) == (1024, 2880)
    assert isinstance(m.aux_projector[0], torch.nn.LayerNorm) and m.aux_projector[0].normalized_shape == (2880,)


def test_perturbing_one_region_changes_only_its_token():
    torch.manual_seed(0)
    m = PatchInfoMining(16, sum(TINY_DIMS))
    low = torch.randn(1, 576, 16)
    aux = torch.randn(1, sum(TINY_DIMS), 192, 192)
    base = m(low, aux)
    r, c = 5, 17
    changed = aux.clone()
    changed[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] += torch.randn(1, sum(TINY_DIMS), 8, 8)
    diff = (m(low, changed) - base).abs().amax(-1)[0]
    touched = torch.nonzero(diff > 0).flatten().tolist()
    assert touched == [r * 24 + c]


def test_mining_rejects_bad_layouts():
    m = PatchInfoMining(4, 3)
    with pytest.raises(ValueError, match="not divisible"):
        m(torch.randn(1, 16, 4), torch.randn(1, 3, 10, 10))
    with pytest.raises(ValueError, match="square grid"):
        m(torch.randn(1, 6, 4), torch.randn(1, 3, 4, 6))
    with pytest.raises(ValueError, match="aux map"):
        m(torch.randn(1, 4, 4), torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="not divisible"):
        region_positions((24, 24), (200, 200))


# --- composition with the Dense Connector ----------------------------------------------------------------------
def dci_taps(dim: int = 16, tokens: int = 16) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(2, tokens, dim, dtype=torch.float64) for _ in range(3)]


def test_mgm_fuse_after_keeps_mgm_and_appends_dc_channels():
    x, g1, g2 = dci_taps()
    aux = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    m = PatchInfoMining(mining_query_width("after", 16, 3), 6).double()
    out = mgm_fuse([x, g1, g2], aux, m, mode="after")
    assert out.shape == (2, 16, 48)
    torch.testing.assert_close(out[..., :16], x + reference_mining(m, x, aux, 4, 4), rtol=1e-10, atol=1e-10)
    assert torch.equal(out[..., 16:], torch.cat([g1, g2], -1))


def test_mgm_fuse_before_mines_the_fused_tokens():
    x, g1, g2 = dci_taps()
    aux = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    assert mining_query_width("before", 16, 3) == 48
    m = PatchInfoMining(48, 6).double()
    out = mgm_fuse([x, g1, g2], aux, m, mode="before")
    fused = torch.cat([x, g1, g2], -1)
    torch.testing.assert_close(out, fused + reference_mining(m, fused, aux, 4, 4), rtol=1e-10, atol=1e-10)


def test_mgm_fuse_validates_mode_and_width():
    taps = dci_taps()
    aux = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="encoder.mgm.mode"):
        mgm_fuse(taps, aux, PatchInfoMining(16, 6).double(), mode="middle")
    with pytest.raises(ValueError, match="query width of 16"):
        mgm_fuse(taps, aux, PatchInfoMining(48, 6).double(), mode="after")
    with pytest.raises(ValueError, match="query width of 48"):
        mgm_fuse(taps, aux, PatchInfoMining(16, 6).double(), mode="before")


def test_mgm_state_dict_loads_mgm_keys():
    source = PatchInfoMining(8, 6)
    ckpt = {f"model.vlm_uni_{k}": v for k, v in source.state_dict().items()}
    ckpt["model.mm_projector.0.weight"] = torch.zeros(1)
    target = PatchInfoMining(8, 6)
    target.load_state_dict(mgm_state_dict(ckpt), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


# --- the ConvNeXt aux tower -----------------------------------------------------------------------------------
def test_tiny_convnext_real_resolution_matches_timm_stages():
    enc = tiny_convnext()
    assert enc.hidden_size == 120 and enc.feature_size() == (192, 192)
    assert enc.stage_reductions == (4, 8, 16, 32)
    assert enc.image_mean == OPENAI_MEAN and enc.image_std == OPENAI_STD
    assert enc.block_classes() == {ConvNeXtBlock}
    pixels = torch.randn(2, 3, 768, 768)
    out = enc(pixels)
    assert out.shape == (2, 120, 192, 192) and not out.requires_grad
    # Independent path: timm's own forward_intermediates on a model with the same weights, resized by hand.
    ref = timm.create_model("convnext_large_mlp", pretrained=False, dims=TINY_DIMS, depths=(1, 1, 1, 1), num_classes=0)
    missing, _ = ref.load_state_dict(enc.state_dict(), strict=False)
    assert all(k.startswith("head.") for k in missing)
    ref.eval()
    with torch.no_grad():
        stages = ref.forward_intermediates(pixels, intermediates_only=True)
    assert [s.shape[-1] for s in stages] == [192, 96, 48, 24]
    expected = torch.cat(
        [stages[0]] + [F.interpolate(s, size=(192, 192), mode="bilinear", align_corners=False) for s in stages[1:]],
        dim=1,
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_convnext_stage_subset_and_pruning():
    enc = tiny_convnext(image_size=256, stages=(1, 2))
    assert len(enc.stages) == 3  # stage 3 is never built into the forward
    assert enc.hidden_size == 16 + 32 and enc.feature_size() == (32, 32)
    assert enc(torch.randn(1, 3, 256, 256)).shape == (1, 48, 32, 32)
    with pytest.raises(ValueError, match="encoder_aux.stages"):
        tiny_convnext(stages=(0, 4))
    with pytest.raises(ValueError, match="encoder_aux.image_size"):
        tiny_convnext(image_size=760)


def test_convnext_micro_batch_same_output():
    enc = tiny_convnext(image_size=128)
    pixels = torch.randn(5, 3, 128, 128)
    full = enc(pixels)
    enc.micro_batch = 2
    torch.testing.assert_close(enc(pixels), full, rtol=0, atol=0)


def test_frozen_tower_modes_and_drop_path():
    enc = tiny_convnext(image_size=128)
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    noisy = tiny_convnext(image_size=128, drop_path_rate=0.1)
    assert any(type(m).__name__ == "DropPath" for m in noisy.modules())
    noisy.train()
    assert noisy.training  # MGM's default scripts: stochastic depth active in the frozen tower while training
    noisy.eval()
    x = torch.randn(1, 3, 128, 128)
    assert torch.equal(noisy(x), noisy(x))


def test_gradients_reach_mining_not_frozen_convnext():
    enc = tiny_convnext(image_size=256)  # 64x64 map over an 8x8 token grid: 8x8 sub-patches, as at 768 px / 24x24
    mining = PatchInfoMining(16, enc.hidden_size)
    aux = enc(torch.randn(2, 3, 256, 256))
    assert not aux.requires_grad
    taps = [torch.randn(2, 64, 16) for _ in range(3)]
    mgm_fuse(taps, aux, mining, mode="after").square().sum().backward()
    for name, p in mining.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())


def test_pretrained_file_loads_offline(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "atto.pth"
    torch.save(source.state_dict(), path)
    enc = ConvNeXtEncoder(model_name="convnext_atto", pretrained=True, pretrained_file=str(path), image_size=64)
    for key, value in enc.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert enc.hidden_size == 40 + 80 + 160 + 320  # convnext_atto widths
    with pytest.raises(ValueError, match="encoder_aux.dims"):
        ConvNeXtEncoder(model_name="convnext_atto", pretrained=True, pretrained_file=str(path), dims=TINY_DIMS)


@pytest.mark.slow
def test_full_size_convnext_large_layout():
    # The real ConvNeXt-L architecture (random weights, no forward): MGM's 2880 channels at stride 4.
    enc = ConvNeXtEncoder(model_name=MGM_CONVNEXT, pretrained=False, image_size=768)
    assert enc.stage_channels == (192, 384, 768, 1536) and enc.hidden_size == 2880
    assert enc.feature_size() == (192, 192)
    assert [len(s.blocks) for s in enc.stages] == [3, 3, 27, 3]
