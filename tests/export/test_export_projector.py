"""Connector → stock Llava projector: the DCI weight expansion against the plain formula, and the refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dc.export.errors import ExportError
from dc.export.hf_llava import export_blockers, to_hf_llava
from dc.export.projector import expand_first_linear, export_projector
from dc.models.builder import build_connector

from export_helpers import tiny_cfg, tiny_vlm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_expansion_equals_linear_over_tap_means():
    """W·[mean(tap_0) ‖ mean(tap_1) ‖ …] == W_exp·[h_i for i in indices], with overlapping and repeated taps."""
    torch.manual_seed(0)
    d, out = 5, 7
    taps = [(5,), (0, 1, 2, 3, 4, 5), (6, 7), (5,)]  # index 5: final, member of a group, and repeated
    weight = torch.randn(out, len(taps) * d, dtype=torch.float64)
    states = {i: torch.randn(3, d, dtype=torch.float64) for i in range(8)}
    fused = torch.cat([torch.stack([states[i] for i in tap]).mean(0) for tap in taps], dim=-1)
    indices, expanded = expand_first_linear(weight, taps, d)
    assert indices == list(range(8))
    concat = torch.cat([states[i] for i in indices], dim=-1)
    torch.testing.assert_close(F.linear(concat, expanded), F.linear(fused, weight), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("encoder", "connector", "layer", "strategy", "tokens"),
    [
        ("tiny_clip", "mlp", 23, "default", 9),  # CLIP-L layout: final = index 23 of 24 blocks, CLS dropped
        ("tiny_clip", "sci", [23, 7, 15], "default", 9),
        ("tiny_clip", "dci", list(range(24)), "default", 9),
        ("tiny_siglip", "mlp", 26, "full", 49),  # SigLIP layout: final = index 26 of 27 blocks, no CLS
        ("tiny_siglip", "sci", [26, 7, 15], "full", 49),
        ("tiny_siglip", "dci", list(range(27)), "full", 49),
    ],
)
def test_vision_feature_layer_per_connector(encoder, connector, layer, strategy, tokens):
    conn = build_connector(tiny_cfg(f"encoder={encoder}", f"connector={connector}"))
    result = export_projector(conn, torch.float32)
    assert result.vision_feature_layer == layer
    assert result.select_strategy == strategy
    assert result.image_seq_length == tokens
    if connector != "dci":  # MLP / SCI keep their weights bit for bit
        assert torch.equal(result.state["linear_1.weight"], conn.projector[0].weight)
    assert torch.equal(result.state["linear_2.weight"], conn.projector[2].weight)


def test_dci_clip_block_of_index_23_holds_final_and_group_terms():
    """CLIP DCI: index 23 is the final feature and one of 12 in the upper group: W_final + W_hi / 12."""
    conn = build_connector(tiny_cfg("encoder=tiny_clip", "connector=dci"))
    w = conn.projector[0].weight.detach().double()
    d = 64
    expanded = export_projector(conn, torch.float64).state["linear_1.weight"]
    w_final, w_lo, w_hi = w[:, :d], w[:, d : 2 * d], w[:, 2 * d :]
    torch.testing.assert_close(expanded[:, 23 * d : 24 * d], w_final + w_hi / 12, rtol=0, atol=1e-15)
    torch.testing.assert_close(expanded[:, 0:d], w_lo / 12, rtol=0, atol=1e-15)
    torch.testing.assert_close(expanded[:, 12 * d : 13 * d], w_hi / 12, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["connector=sti"], "connector=sti (SparseTokenIntegration"),
        (["connector=dci_efficient"], "connector.downsample (Efficient Dense Connector"),
        (["connector=mlp", "connector.projector=linear"], "connector.projector is Sequential(Linear)"),
    ],
)
def test_refusals_name_the_option_and_why(overrides, needle):
    vlm, cfg = tiny_vlm("encoder=tiny_clip", *overrides)
    with pytest.raises(ExportError) as err:
        to_hf_llava(vlm, cfg.encoder.image)
    assert needle in str(err.value)
    assert "stock" in str(err.value)  # says why: what the stock class can and cannot do


def test_future_image_modes_are_refused():
    vlm, _ = tiny_vlm("encoder=tiny_clip", "connector=dci")
    assert export_blockers(vlm) == []
    assert "image_mode=anyres" in export_blockers(vlm, image_mode="anyres")[0]
    assert "image_mode=video" in export_blockers(vlm, image_mode="video")[0]
    with pytest.raises(ValueError, match="image_mode='tiles'"):
        export_blockers(vlm, image_mode="tiles")


def test_timm_tower_without_a_clip_equivalent_is_refused():
    """A timm ViT with LayerScale (`init_values`) has no exact CLIPVisionModel form."""
    vlm, cfg = tiny_vlm("encoder=tiny_timm", "connector=mlp", "+encoder.model.model_kwargs.init_values=0.1")
    with pytest.raises(ExportError, match="LayerScale"):
        to_hf_llava(vlm, cfg.encoder.image)
