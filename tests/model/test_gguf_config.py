"""The architecture read from a GGUF file's metadata is the one its converted config.json gives, so the
simulator prices the same model whether it reads the file or the converted folder."""
import pytest

from fleetserve.model.config import ModelConfig
from fleetserve.model.gguf_config import model_config_from_gguf
from fleetserve.model.loader import DEFAULT_MODEL, default_gguf_path, gguf_file, resolve_model
from fleetserve.sim.perf_setup import load_model_config


def test_the_default_models_gguf_metadata_gives_its_converted_config():
    from_file = ModelConfig.from_file(resolve_model(None) / "config.json")
    from_metadata = model_config_from_gguf(default_gguf_path())
    assert from_metadata == from_file
    assert from_metadata.num_hidden_layers == 30 and from_metadata.tie_word_embeddings


def test_the_simulator_reads_a_gguf_models_architecture_from_the_file():
    assert gguf_file(None) == gguf_file("default") == default_gguf_path()
    assert gguf_file(str(default_gguf_path())) == default_gguf_path()
    assert load_model_config(None, None) == (model_config_from_gguf(default_gguf_path()), DEFAULT_MODEL)


def test_a_file_that_is_not_gguf_is_an_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError):
        model_config_from_gguf(bogus)
