"""Connectors: encoder hidden states → LLM-width visual tokens (fusion, optional downsampling, projector)."""

from dc.models.connectors.base import Connector
from dc.models.connectors.dci import DenseChannelIntegration
from dc.models.connectors.downsample import Downsample
from dc.models.connectors.mlp import MLPConnector
from dc.models.connectors.sci import SparseChannelIntegration
from dc.models.connectors.sti import SparseTokenIntegration

__all__ = [
    "Connector",
    "DenseChannelIntegration",
    "Downsample",
    "MLPConnector",
    "SparseChannelIntegration",
    "SparseTokenIntegration",
]
