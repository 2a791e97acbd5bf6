"""The package imports lazily: `keras_selfattn.text` needs no Keras, and
the layers register with Keras however the imports are ordered."""

import subprocess
import sys

import pytest
from support import BACKEND

pytestmark = pytest.mark.once

SCRIPT = """
import sys
import keras_selfattn.text
assert "keras" not in sys.modules, "keras_selfattn.text imported Keras"
import keras_selfattn
assert "keras" not in sys.modules, "keras_selfattn imported Keras"
import keras
for name in ("keras_selfattn>TransformerEncoder", "keras_selfattn>CausalLM"):
    assert keras.saving.get_registered_object(name) is not None, name
ksa = keras_selfattn
assert ksa.GroupQueryAttention is ksa.GroupedQueryAttention
"""


@pytest.mark.parametrize(
    "script",
    [
        SCRIPT,
        # Our own modules import Keras first: nothing half-initialized.
        "import keras_selfattn.lora, keras_selfattn.ops, keras_selfattn.layers",
    ],
    ids=["text-then-keras", "submodules-first"],
)
def test_import_order(script):
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"KERAS_BACKEND": BACKEND, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
