"""Fixtures for every test: a clean Keras session and float32 policy."""

import keras
import pytest
from support import gguf_reference


@pytest.fixture(autouse=True)
def _fresh_session():
    """Each test starts with float32 policy and a clean Keras session."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)  # gc: 0.5 s a test on TF


@pytest.fixture(scope="module")
def reference(gguf_file):
    """transformers' tokenizer and model of the module's `gguf_file`,
    loaded once."""
    return gguf_reference(gguf_file)


@pytest.fixture(scope="module")
def reference_tokenizer(reference):
    return reference[0]


@pytest.fixture(scope="module")
def reference_model(reference):
    return reference[1]
