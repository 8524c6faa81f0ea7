"""Build a `VLM` from the `encoder`, `connector` and `llm` config nodes.

Order matters: the connector validates its layer indices against the encoder's declared layout and the LLM
width read from config before any weights load; the encoder is then built only as deep as the connector's
taps need.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from dc.models.connectors.base import Connector
from dc.models.encoders.base import EncoderLayout
from dc.models.llms.hf_causal import llm_hidden_size
from dc.models.vlm import VLM
from dc.utils.instantiate import instantiate


def encoder_layout(encoder_cfg: DictConfig) -> EncoderLayout:
    """The `EncoderLayout` declared by an `encoder` config node."""
    return EncoderLayout(name=str(encoder_cfg.name), **OmegaConf.to_container(encoder_cfg.layout, resolve=True))


def build_connector(cfg: DictConfig, llm_width: int | None = None) -> Connector:
    """Only the connector (validates indices; loads nothing)."""
    layout = encoder_layout(cfg.encoder)
    width = llm_width if llm_width is not None else llm_hidden_size(cfg.llm)
    return instantiate(cfg.connector, _convert_="all")(layout=layout, llm_hidden_size=width)


def build_vlm(cfg: DictConfig, **llm_overrides: Any) -> VLM:
    """Encoder + connector + LLM from a composed config (`cfg.encoder`, `cfg.connector`, `cfg.llm`)."""
    connector = build_connector(cfg)
    encoder = instantiate(cfg.encoder.model, _convert_="all")(layout=connector.layout, taps=connector.taps)
    llm = instantiate(cfg.llm, _convert_="all", **llm_overrides)
    if llm.hidden_size != connector.llm_hidden_size:
        raise ValueError(f"llm hidden size {llm.hidden_size} != {connector.llm_hidden_size} read from config")
    return VLM(encoder, connector, llm)
