"""Fixtures for the data tests: tiny tokenizer, chat template and image processor (helpers: data_helpers.py)."""

from __future__ import annotations

import pytest
from transformers import CLIPImageProcessor

from dc.data.image import ImagePreprocessor
from dc.models.llms.templates import get_template
from dc.models.llms.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def template():
    return get_template("vicuna_v1")


@pytest.fixture(scope="session")
def images():
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ImagePreprocessor(proc, aspect="pad")
