"""Fixtures for simulator tests."""
from __future__ import annotations

import json

import pytest

from fleetserve.model.config import ModelConfig


@pytest.fixture
def llama3_8b() -> ModelConfig:
    return ModelConfig(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192)


@pytest.fixture
def model_config(tmp_path):
    """A Llama-3-8B config.json for `--model-config`."""
    from test_sim_cli import LLAMA_8B
    path = tmp_path / "llama-8b.json"
    path.write_text(json.dumps(LLAMA_8B))
    return path
