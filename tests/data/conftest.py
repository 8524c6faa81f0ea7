"""Fixtures for the data tests: tiny tokenizer, chat template and visual processor (helpers: data_helpers.py)."""

from __future__ import annotations

import pytest
from transformers import CLIPImageProcessor

from dc.data.visual import VisualProcessor
from dc.models.visual import SingleView, ViewTokens

from data_helpers import NUM_VISUAL_TOKENS
from dc_testing import make_template, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def template():
    return make_template("vicuna_v1")


@pytest.fixture(scope="session")
def visual():
    """32 px padded single views with a 4 × 4 token grid per image (NUM_VISUAL_TOKENS = 16)."""
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert NUM_VISUAL_TOKENS == 16
    return VisualProcessor(SingleView("pad"), proc, ViewTokens(4, 4), image_size=32)
