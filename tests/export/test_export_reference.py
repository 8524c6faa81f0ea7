"""Import of reference (LLaVA-layout) directories: the dc model built from the import computes what the reference
computes, written out here from the reference code on the stock HF tower and Llama; import -> export round trip;
stage-1 directories; known hub ids; refusals."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from dc.constants import IMAGE_TOKEN_INDEX
from dc.data.tiny_tokenizer import build_tiny_tokenizer
from dc.export.errors import ExportError
from dc.export.hf_llava import save_hf_llava, to_hf_llava
from dc.export.reference import import_reference
from dc.export.reference_writer import write_reference_dir
from dc.models.builder import build_vlm

from export_helpers import llama3_tokenizer, mlp2x_gelu, reference_features, tiny_cfg

D, D_LLM = 64, 128
TOWERS = {  # the tiny_clip / tiny_siglip layouts: real depths and grids, tiny width
    "clip": (CLIPVisionConfig, CLIPVisionModel, {"num_hidden_layers": 24, "image_size": 48, "patch_size": 16}),
    "siglip": (SiglipVisionConfig, SiglipVisionModel, {"num_hidden_layers": 27, "image_size": 56, "patch_size": 8}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_tower(family: str, root: Path) -> Path:
    """A tiny random HF tower saved where the reference would load it (the name holds the family, as the
    reference's `'siglip' in name` switch requires)."""
    config_cls, model_cls, layout = TOWERS[family]
    torch.manual_seed(1)
    tower = model_cls(config_cls(hidden_size=D, intermediate_size=128, num_attention_heads=4, **layout))
    path = root / f"tiny-{family}-tower"
    tower.save_pretrained(path)
    return path


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(2)
    config = LlamaConfig(
        hidden_size=D_LLM, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # spread the logits (HF's init leaves them all near 0)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def random_projector(width: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        "0.weight": torch.randn(D_LLM, width, generator=gen) * width**-0.5,
        "0.bias": torch.randn(D_LLM, generator=gen) * 0.1,
        "2.weight": torch.randn(D_LLM, D_LLM, generator=gen) * D_LLM**-0.5,
        "2.bias": torch.randn(D_LLM, generator=gen) * 0.1,
    }


def read_reference(src: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and every tensor of a reference directory, read with the plain loaders."""
    config = json.loads((src / "config.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for path in sorted(src.iterdir()):
        if path.suffix == ".safetensors":
            state.update(load_file(path))
        elif path.suffix == ".bin":
            state.update(torch.load(path, weights_only=True))
    return config, state


def reference_logits(
    src: Path, tower_path: Path, family: str, kind: str, ids: list[int], pixels: torch.Tensor
) -> torch.Tensor:
    """The reference's forward, written from the spec: full stock tower with output_hidden_states, DC fusion,
    mlp2x_gelu from `model.mm_projector.*`, spliced at the one IMAGE_TOKEN_INDEX of `ids` into the Llama."""
    config, state = read_reference(src)
    _, model_cls, _ = TOWERS[family]
    tower = model_cls.from_pretrained(tower_path).eval()
    llama_config = LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("mm_") and k != "model_type"})
    llama = LlamaForCausalLM(llama_config).eval()
    llama_state = {k: v for k, v in state.items() if (k.startswith("model.layers.") or k in (
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")) and "inv_freq" not in k}  # fmt: skip
    llama.load_state_dict(llama_state, strict=True)
    proj = {k.removeprefix("model.mm_projector."): v for k, v in state.items() if k.startswith("model.mm_projector.")}
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states
        visual = mlp2x_gelu(
            reference_features(hidden, kind, family == "siglip", config["mm_vision_select_layer"]), proj
        )[0]
        text = [i for i in ids if i != IMAGE_TOKEN_INDEX]
        embeds = llama.get_input_embeddings()(torch.tensor(text))
        k = ids.index(IMAGE_TOKEN_INDEX)
        embeds = torch.cat([embeds[:k], visual, embeds[k:]])
        return llama(inputs_embeds=embeds[None]).logits


def build_imported(result) -> object:
    cfg = tiny_cfg(*result.overrides())
    vlm = build_vlm(cfg).eval()
    vlm.connector.load_state_dict(result.connector_state, strict=True)
    return vlm, cfg


def dc_logits(vlm, pixels: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    ids = vlm.llm.template.prompt("<image>\nWhat is in the image?", vlm.llm.tokenizer)
    expanded = [
        t for i in ids for t in ([IMAGE_TOKEN_INDEX] * vlm.num_visual_tokens if i == IMAGE_TOKEN_INDEX else [i])
    ]
    x = torch.tensor([expanded])
    with torch.no_grad():
        return vlm(input_ids=x, attention_mask=torch.ones_like(x), pixel_values=pixels).logits, ids


@pytest.mark.parametrize(
    ("family", "kind", "fmt", "shards"),
    [
        ("clip", "dci", "bin", 2),
        ("siglip", None, "safetensors", 1),
        ("siglip", "dci", "safetensors", 3),
        ("clip", "sci", "bin", 1),
    ],
)
def test_imported_model_equals_reference_computation(tmp_path, family, kind, fmt, shards):
    tower = write_tower(family, tmp_path)
    tok = build_tiny_tokenizer()
    llm = tiny_llama(tok)
    width = D * (3 if kind in ("sci", "dci") else 1)
    extra = {
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(16),  # stale buffer of old checkpoints
        "model.vision_tower.vision_tower.vision_model.post_layernorm.weight": torch.ones(D),
    }  # ignored copy
    src = write_reference_dir(
        tmp_path / "ref", llm=llm, tokenizer=tok, projector=random_projector(width), vision_tower=str(tower),
        mm_hidden_size=width, dense_connector_type=kind, fmt=fmt, shards=shards, extra=extra,
    )  # fmt: skip
    result = import_reference(src, tmp_path / "imported", encoder=f"tiny_{family}")
    assert result.connector == (kind or "mlp")
    assert result.template == "vicuna_v1"
    vlm, cfg = build_imported(result)
    size = TOWERS[family][2]["image_size"]
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    ours, ids = dc_logits(vlm, pixels)
    theirs = reference_logits(src, tower, family, kind or "mlp", ids, pixels)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-5

    if kind != "sti":  # import -> export round trip: the stock Llava computes the same
        out = save_hf_llava(vlm, cfg.encoder.image, tmp_path / "hf")
        model = LlavaForConditionalGeneration.from_pretrained(out).eval()
        image_id = model.config.image_token_index
        hf_ids = [t for i in ids for t in ([image_id] * vlm.num_visual_tokens if i == IMAGE_TOKEN_INDEX else [i])]
        with torch.no_grad():
            exported = model(input_ids=torch.tensor([hf_ids]), pixel_values=pixels).logits
        assert (exported[..., : theirs.shape[-1]] - theirs).abs().max().item() < 1e-5
        # the export is a stock HF Llava, not a reference directory: refused by its model type before anything else
        with pytest.raises(ExportError, match="model_type='llava' is a stock Hugging Face Llava"):
            import_reference(out, tmp_path / "again", encoder=f"tiny_{family}")
        assert not (tmp_path / "again").exists()


def test_stage1_directory_without_config(tmp_path):
    tok = build_tiny_tokenizer()
    proj = random_projector(3 * D)
    src = write_reference_dir(
        tmp_path / "stage1", llm=tiny_llama(tok), tokenizer=tok, projector=proj, vision_tower="x", mm_hidden_size=3 * D,
        dense_connector_type="dci", stage1=True, stage1_config=False,
    )  # fmt: skip
    assert sorted(p.name for p in src.iterdir()) == ["mm_projector.bin"]
    with pytest.raises(ExportError, match="pass --connector TYPE"):
        import_reference(src, encoder="tiny_clip")
    result = import_reference(src, encoder="tiny_clip", connector="dci")
    assert result.llm is None
    assert result.connector_args["groups"] == [[0, 11], [12, 23]]
    for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(result.connector_state[f"projector.{key}"], proj[key])
    vlm = build_vlm(tiny_cfg(*result.overrides())).eval()  # the user's own LLM (here llm=tiny)
    vlm.connector.load_state_dict(result.connector_state, strict=True)


@pytest.mark.parametrize(
    ("tower", "kind", "encoder", "args"),
    [
        ("openai/clip-vit-large-patch14-336", "dci", "clip_l336", {"final_layer": -2, "groups": [[0, 11], [12, 23]]}),
        ("google/siglip-so400m-patch14-384", "dci", "siglip", {"final_layer": -2, "groups": [[0, 12], [13, 25]]}),
        ("google/siglip-so400m-patch14-384", "sci", "siglip", {"final_layer": -2, "layers": [7, 15]}),
        ("openai/clip-vit-large-patch14-336", "sti", "clip_l336", {"final_layer": -2, "layers": [7, 15], "pool": 8}),
    ],
)
def test_known_hub_ids_select_the_encoder_config(tmp_path, tower, kind, encoder, args):
    """Released checkpoints name their tower by hub id: matched exactly to configs/encoder/*.yaml, no override."""
    width = (1024 if "clip" in encoder else 1152) * (1 if kind == "sti" else 3)
    tok = build_tiny_tokenizer()
    small = {
        "0.weight": torch.zeros(8, width),
        "0.bias": torch.zeros(8),
        "2.weight": torch.zeros(8, 8),
        "2.bias": torch.zeros(8),
    }
    src = write_reference_dir(
        tmp_path / "s1", llm=tiny_llama(tok), tokenizer=tok, projector=small, vision_tower=tower, mm_hidden_size=width,
        dense_connector_type=kind, stage1=True,
    )  # fmt: skip
    result = import_reference(src)
    assert (result.encoder, result.encoder_pretrained, result.connector) == (encoder, None, kind)
    assert {k: v for k, v in result.connector_args.items() if k not in ("projector", "downsample")} == args


def test_refusals(tmp_path):
    tok = build_tiny_tokenizer()
    llm = tiny_llama(tok)

    def stage1(name: str, tower: str, width: int, **config_changes) -> Path:
        src = write_reference_dir(
            tmp_path / name, llm=llm, tokenizer=tok, projector=random_projector(width), vision_tower=tower,
            mm_hidden_size=width, dense_connector_type="dci", stage1=True,
        )  # fmt: skip
        config = json.loads((src / "config.json").read_text())
        config.update(config_changes)
        (src / "config.json").write_text(json.dumps(config))
        return src

    with pytest.raises(ExportError, match="--encoder NAME"):  # an unknown tower: never guessed
        import_reference(stage1("a", "my-org/my-clip-variant", 3 * D))
    with pytest.raises(ExportError, match="runs the reference's SigLIP code path"):
        import_reference(stage1("b", "/models/siglip-tiny", 3 * D), encoder="tiny_clip")
    with pytest.raises(ExportError, match="mm_projector_type='linear'"):
        import_reference(stage1("c", "x", 3 * D, mm_projector_type="linear"), encoder="tiny_clip")
    with pytest.raises(ExportError, match="mm_hidden_size"):
        import_reference(stage1("d", "x", 2 * D), encoder="tiny_clip")
    with pytest.raises(ExportError, match="image_aspect_ratio='anyres'"):
        import_reference(stage1("e", "x", 3 * D, image_aspect_ratio="anyres"), encoder="tiny_clip")


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _main_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `python -m dc.export.reference <argv>` prints."""
    from dc.export.reference import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: ") :].rstrip("\n")


def test_command_line_writes_the_pieces(tmp_path, capsys, umask_027):
    """The pieces, written through OUT.tmp: dc.ckpt reads the LLM from OUT/llm; files get the umask's modes;
    transformers' warning about LLaVA's unknown model type (read for the tokenizer) is not shown; an existing OUT
    is refused unless --overwrite, and a failed --overwrite keeps it."""
    from dc.export.reference import main

    tower = write_tower("clip", tmp_path)
    tok = build_tiny_tokenizer()
    src = write_reference_dir(
        tmp_path / "ref", llm=tiny_llama(tok), tokenizer=tok, projector=random_projector(3 * D),
        vision_tower=str(tower), mm_hidden_size=3 * D, dense_connector_type="sci",
    )  # fmt: skip
    out = tmp_path / "out"
    seen = _Messages()
    config_logger, library = logging.getLogger("transformers.configuration_utils"), logging.getLogger("transformers")
    level = library.level
    library.setLevel(logging.WARNING)
    config_logger.addHandler(seen)
    try:
        main([str(src), str(out), "--encoder", "tiny_clip"])
    finally:
        config_logger.removeHandler(seen)
        library.setLevel(level)
    assert not [m for m in seen.messages if "to instantiate a model of type" in m]
    record = json.loads((out / "import.json").read_text())
    assert "connector=sci" in record["overrides"] and "connector.layers=[7,15]" in record["overrides"]
    weights = load_file(out / "connector.safetensors")
    assert sorted(weights) == ["projector.0.bias", "projector.0.weight", "projector.2.bias", "projector.2.weight"]
    assert (out / "llm" / "config.json").exists()
    assert "connector=sci" in capsys.readouterr().out
    ckpt = torch.load(out / "dc.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["llm"]["pretrained"] == str((out / "llm").resolve())
    assert f"llm.pretrained='{(out / 'llm').resolve()}'" in record["overrides"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref", "tiny-clip-tower"]  # no OUT.tmp left
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640} and len(files) == 8  # safetensors' 0600 too

    (out / "mine.txt").write_text("keep")
    assert _main_error([str(src), str(out), "--encoder", "tiny_clip"], capsys) == (
        f"OUT={out} exists; choose a new folder, or pass --overwrite"
    )
    bad = write_reference_dir(  # fails after reading its weights: projector width 2D for SCI
        tmp_path / "bad", llm=tiny_llama(tok), tokenizer=tok, projector=random_projector(2 * D), vision_tower="x",
        mm_hidden_size=2 * D, dense_connector_type="sci", stage1=True,
    )  # fmt: skip
    assert "mm_hidden_size" in _main_error([str(bad), str(out), "--encoder", "tiny_clip", "--overwrite"], capsys)
    assert (out / "mine.txt").read_text() == "keep" and (out / "dc.ckpt").exists()
    assert not (tmp_path / "out.tmp").exists()
    main([str(src), str(out), "--encoder", "tiny_clip", "--overwrite"])
    assert not (out / "mine.txt").exists() and (out / "dc.ckpt").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--template", "vicuna"], "--template='vicuna': expected one of ['chatml', 'llama_3', 'llama_3_dc', 'phi2', "),
        (["--encoder", "tiny_clipx"], "--encoder='tiny_clipx': expected one of ["),
        (["--encoder", "tiny_clip", "llm=nope"], "train.yaml overrides: In 'train': Could not find 'llm/nope'"),
        (["--encoder", "tiny_clip", "trainer.max_steps=["], "train.yaml override 'trainer.max_steps=[': "),
    ],
)
def test_command_line_checks_options_before_writing(tmp_path, capsys, argv, message):
    """Options are refused in one line (naming the flag, listing the valid names) and nothing is written."""
    tok = build_tiny_tokenizer()
    src = write_reference_dir(
        tmp_path / "ref", llm=tiny_llama(tok), tokenizer=tok, projector=random_projector(3 * D), vision_tower="x",
        mm_hidden_size=3 * D, dense_connector_type="dci",
    )  # fmt: skip
    assert _main_error([str(src), str(tmp_path / "out"), *argv], capsys).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]


def test_llama3_reference_gets_the_dc_template_and_pad(tmp_path):
    """A Llama-3 tokenizer selects the reference's llama_3_dc template; without a saved pad token, the
    reference's <|reserved_special_token_0|> (Llama-3 has no unk token)."""
    tower = write_tower("siglip", tmp_path)
    tok = llama3_tokenizer(pad=False)
    src = write_reference_dir(
        tmp_path / "ref", llm=tiny_llama(tok), tokenizer=tok, projector=random_projector(3 * D),
        vision_tower=str(tower), mm_hidden_size=3 * D, dense_connector_type="dci",
    )  # fmt: skip
    result = import_reference(src, tmp_path / "out", encoder="tiny_siglip")
    assert result.template == "llama_3_dc"
    assert result.llm["pad_token"] == "<|reserved_special_token_0|>"
    vlm, cfg = build_imported(result)
    assert vlm.llm.template.name == "llama_3_dc"
    assert vlm.llm.tokenizer.pad_token == "<|reserved_special_token_0|>"
    model, _ = to_hf_llava(vlm, cfg.encoder.image)  # its own checks: prompt ids, pixels, logits
    assert model.config.vision_feature_layer == list(range(27))
