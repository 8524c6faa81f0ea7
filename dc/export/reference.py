"""Import the Dense Connector reference's LLaVA-layout checkpoints into dc's configs and weights.

A reference directory (`HuanjinYao/DenseConnector-v1.5-*`, or any LLaVA-1.5 one) holds `config.json`
(`model_type: llava_llama`, the Llama config plus `mm_*` keys), the weights (`*.bin` or `*.safetensors`, possibly
sharded with an index json) and the tokenizer files; a stage-1 directory holds only `mm_projector.bin` (and
sometimes `config.json`). `import_reference` maps them onto dc, reproducing the reference's computation, never guessing:

* **Encoder**: `mm_vision_tower` matched *exactly* against the `model.pretrained` ids of `configs/encoder/*.yaml`
  (openai/clip-vit-large-patch14-336 → clip_l336, google/siglip-so400m-patch14-384 → siglip); any other value
  needs `encoder=` from the user, and the tower path is then passed as `encoder.model.pretrained`. The reference
  picks its SigLIP code path when "siglip" is in the tower name; the chosen encoder's family must agree.
* **Connector** from `mm_dense_connector_type` (absent: LLaVA-1.5 `mlp`), with the reference's fixed indices:
  SCI/STI layers [7, 15] (STI pool 8); DCI groups CLIP [[0, 11], [12, 23]], SigLIP [[0, 12], [13, 25]]. Final
  feature: CLIP `mm_vision_select_layer`; SigLIP always index L-1 (the reference deletes the last block and
  ignores the select layer), i.e. `final_layer=-2`. `mm_hidden_size` is checked against the encoder width.
* **Projector** `model.mm_projector.{0,2}.*` → dc `projector.{0,2}.*` (only `mm_projector_type=mlp2x_gelu`).
* **LLM**: the Llama tensors (`model.*` minus the multimodal ones, `lm_head`) are written with their config and
  tokenizer to `<out>/llm/` as a plain `LlamaForCausalLM` directory (stale `rotary_emb.inv_freq` buffers of old
  checkpoints dropped); the vision tower weights some checkpoints carry are ignored, as the reference ignores them
  (it loads the tower from `mm_vision_tower`).
* **Template**: `vicuna_v1`, or `llama_3_dc` (the released Llama-3 checkpoint's) when the tokenizer has the
  Llama-3 header tokens; the `template` argument overrides.

Weights load with safetensors or `torch.load(weights_only=True)`; nothing runs remote code. dc checkpoints are
not written here: the result is the pieces (`ReferenceImport`).

    python -m dc.export.reference SRC OUT [--encoder NAME] [--template NAME] [--connector TYPE] [--pad-token TOK]
        [--stage STAGE] [--overwrite] [train.yaml overrides ...]

The command checks every option before it writes anything, writes `OUT.tmp` and renames it to OUT when complete
(`dc.export.staging`), and refuses an existing OUT unless `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from transformers import AutoTokenizer

from dc.export.chat_template import check_template_name
from dc.export.errors import ExportError, export_user_errors
from dc.export.reference_io import (
    check_model_type,
    default_pad,
    load_state,
    projector_state,
    read_config,
    write_llm,
)
from dc.export.staging import check_destination, staged
from dc.utils.cli import errors_as_messages

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
CONNECTOR_TYPES = ("mlp", "sti", "sci", "dci")
SPARSE_LAYERS = [7, 15]
DCI_GROUPS = {"clip": [[0, 11], [12, 23]], "siglip": [[0, 12], [13, 25]]}
LLAMA3_MARKERS = ("<|start_header_id|>", "<|eot_id|>")


@dataclass
class ReferenceImport:
    """What a reference directory becomes in dc (see the module docstring).

    Attributes:
        encoder: dc encoder option (`encoder=<name>`).
        encoder_pretrained: where the tower weights come from when not the option's own (`encoder.model.pretrained`).
        connector: dc connector option (mlp | sti | sci | dci).
        connector_args: `connector.*` values (final_layer, layers / groups, pool).
        connector_state: projector weights under dc's names (`projector.0.weight`, ...).
        llm: the `llm` config node to use (None for a stage-1 directory: bring the base LLM).
        template: dc chat template name.
        notes: decisions worth telling the user.
    """

    encoder: str
    encoder_pretrained: str | None
    connector: str
    connector_args: dict[str, Any]
    connector_state: dict[str, torch.Tensor]
    llm: dict[str, Any] | None
    template: str
    notes: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        """Hydra overrides that build this model with `build_vlm` (connector weights: `connector_state`)."""
        out = [f"encoder={self.encoder}", f"connector={self.connector}"]
        if self.encoder_pretrained:
            out.append(f"encoder.model.pretrained={_quote(self.encoder_pretrained)}")
        out += [f"connector.{k}={_value(v)}" for k, v in self.connector_args.items()]
        if self.llm is not None:
            base = "llama3_8b" if self.template.startswith("llama_3") else "vicuna7b"  # supplies dtype/attn defaults
            out.append(f"llm={base}")
            out += [f"llm.{k}={_value(v)}" for k, v in self.llm.items() if k not in ("_target_", "template")]
        out.append(f"llm/template={self.template}")
        return out


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _value(value: Any) -> str:
    """A Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value).replace(" ", "")


# --------------------------------------------------------------------------------------------------------------
# Mapping


def encoder_options(configs_dir: Path) -> dict[str, dict[str, Any]]:
    """Dc's encoder options: name → parsed YAML."""
    paths = sorted((configs_dir / "encoder").glob("*.yaml"))
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p), resolve=False) for p in paths}


def choose_encoder(tower: str | None, encoder: str | None, configs_dir: Path) -> tuple[str, str | None, list[str]]:
    """(encoder option, `encoder.model.pretrained` override or None, notes) for the reference's vision tower."""
    options = encoder_options(configs_dir)
    notes: list[str] = []
    if encoder is None:
        # Only single HF towers: a dual tower (Mini-Gemini's DualEncoder) names the same CLIP id for its low-res side.
        matches = [
            n
            for n, o in options.items()
            if isinstance(o["model"].get("pretrained"), str)
            and o["model"]["pretrained"] == tower
            and str(o["model"].get("_target_", "")).endswith("HFVisionEncoder")
        ]
        if len(matches) != 1:
            known = sorted(
                {o["model"]["pretrained"] for o in options.values() if isinstance(o["model"].get("pretrained"), str)}
            )
            raise ExportError(
                f"mm_vision_tower={tower!r} is {'matched by several' if matches else 'not one of the'} known hub ids "
                f"{matches or known}; say which dc encoder config it is: --encoder NAME (encoder= in Python), one "
                f"of {sorted(options)}"
            )
        return matches[0], None, notes
    check_encoder_name(encoder, options)
    model = options[encoder]["model"]
    if not str(model.get("_target_", "")).endswith("HFVisionEncoder"):
        raise ExportError(f"encoder={encoder!r} is not a Hugging Face CLIP/SigLIP tower, which the reference uses")
    if tower is None or model.get("pretrained") == tower:
        return encoder, None, notes
    hub_id = tower.count("/") == 1 and not tower.startswith((".", "/", "~"))
    if Path(tower).is_dir() or hub_id:
        notes.append(f"vision tower weights from mm_vision_tower={tower!r} (encoder.model.pretrained)")
        return encoder, tower, notes
    notes.append(
        f"mm_vision_tower={tower!r} is not a directory here nor a hub id; using encoder {encoder!r}'s own weights"
    )
    return encoder, None, notes


def check_encoder_name(encoder: str, options: dict[str, Any], key: str = "encoder") -> None:
    """Refuse an encoder name that is not one of dc's options, naming `key` (`--encoder` on the command line)."""
    if encoder not in options:
        raise ExportError(f"{key}={encoder!r}: expected one of {sorted(options)} (configs/encoder/*.yaml)")


def connector_choice(
    kind: str, family: str, config: dict[str, Any] | None, layout: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """`connector.*` values reproducing the reference's fusion for `kind` on a `family` tower."""
    notes: list[str] = []
    if family == "siglip":
        final = -2  # the reference deletes the last block and takes hidden_states[-1]: index L-1 of the full tower
        if config is not None and config.get("mm_vision_select_layer", -2) != -2:
            notes.append(
                f"mm_vision_select_layer={config['mm_vision_select_layer']} is ignored for SigLIP, "
                "as the reference does"
            )
    else:
        final = int(config.get("mm_vision_select_layer", -2)) if config is not None else -2
    args: dict[str, Any] = {"final_layer": final}
    if kind in ("sti", "sci"):
        args["layers"] = list(SPARSE_LAYERS)
    if kind == "sti":
        args["pool"] = 8
    if kind == "dci":
        args["groups"] = [list(g) for g in DCI_GROUPS[family]]
        deepest = DCI_GROUPS[family][-1][-1]
        if deepest >= layout["num_layers"] + 1:
            raise ExportError(
                f"DCI groups {DCI_GROUPS[family]} need {deepest + 1} hidden states; "
                f"the encoder has {layout['num_layers'] + 1}"
            )
    args["projector"] = "mlp2x_gelu"
    args["downsample"] = None
    return args, notes


def _check_config(config: dict[str, Any], src: Path) -> None:
    """Refuse reference options dc does not reproduce."""
    checks = {
        "mm_projector_type": ("mlp2x_gelu",),
        "mm_vision_select_feature": ("patch",),
        "mm_use_im_start_end": (False,),
        "image_aspect_ratio": ("pad", "square"),
        "mm_patch_merge_type": ("flat",),
    }
    for key, allowed in checks.items():
        if key in config and config[key] not in allowed:
            raise ExportError(
                f"{src}/config.json: {key}={config[key]!r} is not supported by dc (allowed: {list(allowed)})"
            )


def read_source(src: Path) -> dict[str, Any] | None:
    """The reference directory's `config.json` (None: a bare stage-1 folder); what is not a reference directory is
    refused first: a missing path, a file, another model type (a stock HF Llava), settings dc does not reproduce.
    """
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such directory (a reference Dense Connector model or stage-1 folder)")
    if not src.is_dir():
        raise NotADirectoryError(
            f"{src} is a file, not a folder: pass the reference model's folder (config.json, weights, tokenizer) or "
            f"a stage-1 folder (mm_projector.bin)"
        )
    config = read_config(src)
    if config is not None:
        check_model_type(config, src)
        _check_config(config, src)
    return config


def _choose_template(template: str | None, tokenizer: Any) -> tuple[str, list[str]]:
    if template is not None:
        return template, []
    vocab = tokenizer.get_vocab()
    if all(m in vocab for m in LLAMA3_MARKERS):
        return "llama_3_dc", [
            "template llama_3_dc (Llama-3 tokenizer; the reference's assistant-under-system-header template)"
        ]
    return "vicuna_v1", ["template vicuna_v1 (the reference's default)"]


def _llm_part(
    state: dict[str, torch.Tensor], config: dict[str, Any], src: Path, llm_dir: Path, template: str | None,
    pad_token: str | None,
) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """Write the LLM to `llm_dir` and return its `llm` config node (and notes)."""
    llm_config = write_llm(state, config, src, llm_dir)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    template, notes = _choose_template(template, tokenizer)
    if tokenizer.pad_token is None and pad_token is None:
        pad_token = default_pad(tokenizer, src)
    node = {
        "_target_": "dc.models.llms.hf_causal.HFCausalLM",
        "template": template,
        "hidden_size": llm_config.hidden_size,
        "pretrained": str(llm_dir.resolve()),
        "tokenizer": None,
        "pad_token": pad_token,
        "config": {},
    }
    return node, notes


def import_reference(
    src: str | Path,
    out_dir: str | Path | None = None,
    *,
    encoder: str | None = None,
    template: str | None = None,
    connector: str | None = None,
    pad_token: str | None = None,
    configs_dir: str | Path | None = None,
) -> ReferenceImport:
    """Map a reference directory onto dc (see the module docstring).

    Args:
        src: the reference directory (full model, or stage 1 with `mm_projector.bin`).
        out_dir: where to write `llm/` (required when `src` holds LLM weights).
        encoder: dc encoder option; required when `mm_vision_tower` is not a known hub id (or absent).
        template: chat template; default vicuna_v1, or llama_3_dc for a Llama-3 tokenizer.
        connector: connector type for a stage-1 directory without `config.json` (mlp | sti | sci | dci); when
            the config names one, this must agree.
        pad_token: pad token when the saved tokenizer has none (default: its unk token, else Llama-3's
            `<|reserved_special_token_0|>`).
        configs_dir: dc's `configs/` (default: the repository's).

    Raises:
        ExportError: a setting dc does not reproduce, an unknown tower without `encoder`, or malformed weights.
    """
    src = Path(src)
    configs = Path(configs_dir) if configs_dir else CONFIGS_DIR
    config = read_source(src)
    if template is not None:
        check_template_name(template, "template", configs / "llm" / "template")
    kind = (config or {}).get("mm_dense_connector_type", "mlp" if config is not None else None)
    if connector is not None and kind is not None and connector != kind:
        raise ExportError(f"connector={connector!r} but {src}/config.json says mm_dense_connector_type={kind!r}")
    kind = kind or connector
    if kind not in CONNECTOR_TYPES:
        raise ExportError(
            f"connector type {kind!r} for {src}: expected one of {CONNECTOR_TYPES} (pass --connector TYPE, "
            f"connector= in Python)"
        )
    tower = (config or {}).get("mm_vision_tower")
    enc_name, enc_pretrained, notes = choose_encoder(tower, encoder, configs)
    option = encoder_options(configs)[enc_name]
    family = option["model"]["family"]
    if tower is not None and ("siglip" in tower.lower()) != (family == "siglip"):
        raise ExportError(
            f"mm_vision_tower={tower!r} runs the reference's {'SigLIP' if 'siglip' in tower.lower() else 'CLIP'} code "
            f"path (it checks for 'siglip' in the name), but encoder {enc_name!r} is a {family} tower"
        )
    layout = option["layout"]
    args, more = connector_choice(kind, family, config, layout)
    notes += more
    if config is not None and "image_aspect_ratio" in config:
        aspect = config["image_aspect_ratio"]
        notes.append(f"trained with image_aspect_ratio={aspect}: evaluate with image_aspect={aspect}")
    state = load_state(src)
    conn_state = projector_state(state, src)
    width = layout["hidden_size"] * (3 if kind in ("sci", "dci") else 1)
    if conn_state["projector.0.weight"].shape[1] != width or (config and config.get("mm_hidden_size", width) != width):
        raise ExportError(
            f"{src}: projector input {conn_state['projector.0.weight'].shape[1]} / mm_hidden_size "
            f"{(config or {}).get('mm_hidden_size')} != {width} for {kind} on encoder {enc_name!r}"
        )
    llm_node = None
    if any(k.startswith("model.layers.") for k in state):
        if out_dir is None:
            raise ExportError(f"{src} holds LLM weights: pass out_dir to write them as a Hugging Face directory")
        llm_node, more = _llm_part(state, config or {}, src, Path(out_dir) / "llm", template, pad_token)
        template = llm_node["template"]
        notes += more
    else:
        template = template or "vicuna_v1"
        notes.append("stage-1 directory: only the connector is imported; bring the base LLM (llm=...)")
    return ReferenceImport(enc_name, enc_pretrained, kind, args, conn_state, llm_node, template, notes)


def compose_train(overrides: list[str]) -> Any:
    """`configs/train.yaml` composed with `overrides`.

    Raises:
        ExportError: an override Hydra refuses (its message on one line).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ExportError(f"train.yaml overrides: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """Hydra's message on one line, without its config search path."""
    return " ".join(str(exc).split("Config search path")[0].split())


def check_overrides(overrides: list[str]) -> None:
    """Each train.yaml override parses, and train.yaml composes with them (option names, keys).

    Raises:
        ExportError: naming the override Hydra cannot parse, or Hydra's reason on one line.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException as exc:
            raise ExportError(f"train.yaml override {override!r}: {_one_line(exc)}") from None
    compose_train(["run_name=import", "paths.output_dir=.", *overrides])


def write_dc_checkpoint(
    result: ReferenceImport, path: str | Path, *, stage: str | None = None, extra_overrides: list[str] | None = None
) -> Path:
    """Write the import as a dc checkpoint: `eval.py ckpt_path=<path>` scores it and `train.py
    stage.init_connector_from=<path>` continues from it (stage 2 from a released stage-1 projector).

    The model config is train.yaml composed with the import's overrides (plus `extra_overrides`, e.g. the base LLM
    for a stage-1 directory); the state dict holds the connector (the LLM and the tower are `pretrained` sources).
    """
    from dc.training.checkpoint import MODEL_KEYS

    stage = stage or ("finetune" if result.llm is not None else "pretrain")
    overrides = [
        *result.overrides(),
        f"stage={stage}",
        "run_name=import",
        "paths.output_dir=.",
        *(extra_overrides or []),
    ]
    cfg = compose_train(overrides)
    model = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in MODEL_KEYS if cfg.get(k) is not None}
    stage_cfg = OmegaConf.to_container(cfg.stage, resolve=True)
    # The checkpoint holds the connector only: the LLM is the imported `llm/` directory (its `pretrained` source),
    # so the recorded stage says only the connector is held; training continues with any stage the user picks.
    stage_cfg["train"] = ["connector"]
    checkpoint = {
        "state_dict": {f"vlm.connector.{k}": v.contiguous() for k, v in result.connector_state.items()},
        "hyper_parameters": {"model": model, "stage": stage_cfg, "seed": 0},
        "imported_from": {"overrides": overrides, "notes": result.notes},
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Import a reference directory: write `OUT/dc.ckpt` (a dc checkpoint), `OUT/llm/`, `OUT/connector.safetensors`,
    `OUT/import.json`. Every option is checked before anything is written; OUT is written as `OUT.tmp` and renamed
    when complete; an existing OUT is refused unless --overwrite.
    """
    parser = argparse.ArgumentParser(prog="python -m dc.export.reference", description=main.__doc__)
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--encoder", help="dc encoder option (required if mm_vision_tower is not a known hub id)")
    parser.add_argument("--template", help="chat template (default vicuna_v1 / llama_3_dc for Llama-3)")
    parser.add_argument("--connector", choices=CONNECTOR_TYPES, help="for a stage-1 dir without config.json")
    parser.add_argument("--pad-token", help="pad token if the tokenizer has none")
    parser.add_argument(
        "--stage",
        choices=("pretrain", "finetune", "lora"),
        help="stage recorded in dc.ckpt (default: finetune for a full model, pretrain for a stage-1 projector)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (once the import is complete)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra train.yaml overrides for dc.ckpt (a stage-1 directory: the base LLM, e.g. llm=vicuna7b)",
    )
    args = parser.parse_intermixed_args(argv)  # train.yaml overrides may follow the flags
    with errors_as_messages(export_user_errors()):
        _import_to(args)


def check_arguments(args: argparse.Namespace) -> None:
    """The command's options, before any weight is read or anything written: the source folder (its config.json),
    the destination (and its `.tmp`), `--encoder`, `--template` and the train.yaml overrides.
    """
    read_source(Path(args.src))
    check_destination(Path(args.out), "OUT", overwrite=args.overwrite, hint="choose a new folder, or pass --overwrite")
    if args.encoder is not None:
        check_encoder_name(args.encoder, encoder_options(CONFIGS_DIR), "--encoder")
    if args.template is not None:
        check_template_name(args.template, "--template")
    if args.overrides:
        check_overrides(args.overrides)


def _import_to(args: argparse.Namespace) -> None:
    check_arguments(args)
    out = Path(args.out)
    with staged(out, "OUT", overwrite=args.overwrite, hint="choose a new folder, or pass --overwrite") as tmp:
        result = import_reference(
            args.src,
            tmp,
            encoder=args.encoder,
            template=args.template,
            connector=args.connector,
            pad_token=args.pad_token,
        )
        if result.llm is not None:  # written under OUT.tmp, read from OUT once renamed
            result.llm["pretrained"] = str((out / "llm").resolve())
        save_file({k: v.contiguous() for k, v in result.connector_state.items()}, tmp / "connector.safetensors")
        write_dc_checkpoint(result, tmp / "dc.ckpt", stage=args.stage, extra_overrides=args.overrides)
        record = {
            "overrides": result.overrides(),
            "notes": result.notes,
            "connector_weights": str(out / "connector.safetensors"),
            "dc_checkpoint": str(out / "dc.ckpt"),
        }
        (tmp / "import.json").write_text(json.dumps(record, indent=2) + "\n")
    ckpt = out / "dc.ckpt"
    print("\n".join(result.notes))
    print(" ".join(result.overrides()))
    print(
        f"dc checkpoint: {ckpt}  (python eval.py ckpt_path={ckpt} ...; python train.py stage.init_connector_from={ckpt} ...)"
    )


if __name__ == "__main__":
    main()
