"""The one VLM builder: `encoder`, `connector`, `llm` and `image` config nodes → a `VLM`.

Order matters: the connector validates its layer indices against the encoder's declared layout and the LLM width
read from config before any weights load; the encoder is then built only as deep as the connector's taps need.

`build_connector(cfg, device="meta")` answers token counts (`Connector.view_tokens`) without allocating the
projector; `build_vlm(cfg, llm_on_meta=True)` builds the LLM on the meta device from its pretrained *config* only
(FSDP ranks that receive rank 0's weights instead of reading them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from dc.models.connectors.base import Connector
from dc.models.encoders.base import EncoderLayout
from dc.models.encoders.dual import check_mgm_pair
from dc.models.llms.hf_causal import llm_hidden_size
from dc.models.visual.base import ImageMode
from dc.models.visual.single import SingleView
from dc.models.vlm import VLM
from dc.utils.errors import ConfigError
from dc.utils.instantiate import instantiate

Allowed = Callable[[str], bool] | None


def encoder_layout(encoder_cfg: DictConfig) -> EncoderLayout:
    """The `EncoderLayout` declared by an `encoder` config node."""
    return EncoderLayout(name=str(encoder_cfg.name), **OmegaConf.to_container(encoder_cfg.layout, resolve=True))


def build_image_mode(cfg: DictConfig, allowed: Allowed = None) -> ImageMode:
    """The `image` node's mode (a single padded view when the config has none)."""
    node = cfg.get("image")
    if node is None:
        return SingleView("pad")
    mode = instantiate(node, allowed=allowed)
    if not isinstance(mode, ImageMode):
        raise ConfigError(f"image._target_={node.get('_target_')} is not an ImageMode")
    return mode


def build_connector(cfg: DictConfig, *, device: str | torch.device | None = None, allowed: Allowed = None) -> Connector:
    """Only the connector (validates indices; loads nothing). `device="meta"`: arithmetic only, no memory."""
    layout = encoder_layout(cfg.encoder)
    width = llm_hidden_size(cfg.llm)
    mode = build_image_mode(cfg, allowed)
    factory = instantiate(cfg.connector, allowed=allowed)
    kwargs: dict[str, Any] = {"layout": layout, "llm_hidden_size": width, "image_mode": mode}
    mgm = cfg.encoder.get("mgm")
    if mgm is not None:  # Mini-Gemini dual tower: the connector owns the patch-info mining
        kwargs["mgm"] = OmegaConf.to_container(mgm, resolve=True)
    if device is None:
        return factory(**kwargs)
    with torch.device(device):
        return factory(**kwargs)


def _llm_on_meta(llm_cfg: DictConfig, tokenizer: Any, allowed: Allowed) -> Any:
    """The pretrained LLM's architecture on the meta device, from its config file only (no weights read)."""
    from transformers import AutoConfig

    from dc.models.hub import from_pretrained

    hf_config = from_pretrained(AutoConfig.from_pretrained, str(llm_cfg.pretrained), "llm.pretrained").to_dict()
    hf_config.update(OmegaConf.to_container(llm_cfg.get("config") or {}, resolve=True))
    node = OmegaConf.to_container(llm_cfg, resolve=True)
    node.update(pretrained=None, config=hf_config)
    if tokenizer is None and not node.get("tokenizer"):
        node["tokenizer"] = llm_cfg.pretrained
    with torch.device("meta"):
        return instantiate(OmegaConf.create(node), allowed=allowed, **({"tokenizer": tokenizer} if tokenizer else {}))


def build_vlm(
    cfg: DictConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    llm_on_meta: bool = False,
    allowed: Allowed = None,
) -> VLM:
    """Encoder + connector + LLM from a model config (`cfg.encoder`, `cfg.connector`, `cfg.llm`, `cfg.image`).

    Args:
        cfg: a node holding the model groups (the root config of train.py, or a checkpoint's model config).
        tokenizer: an already loaded tokenizer (so it is not read twice); None: the LLM config's.
        llm_on_meta: build a pretrained LLM on the meta device from its config only (random-init LLMs are built
            normally: there is nothing to read).
        allowed: target allow-list (see `dc.utils.instantiate`); checkpoint configs pass the model allow-list.
    """
    connector = build_connector(cfg, allowed=allowed)
    encoder = instantiate(cfg.encoder.model, allowed=allowed)(layout=connector.layout, taps=connector.taps)
    check_mgm_pair(encoder, connector)
    if llm_on_meta and cfg.llm.get("pretrained"):
        llm = _llm_on_meta(cfg.llm, tokenizer, allowed)
    else:
        llm = instantiate(cfg.llm, allowed=allowed, **({"tokenizer": tokenizer} if tokenizer is not None else {}))
    if llm.hidden_size != connector.llm_hidden_size:
        raise ValueError(f"llm hidden size {llm.hidden_size} != {connector.llm_hidden_size} read from config")
    return VLM(encoder, connector, llm)
