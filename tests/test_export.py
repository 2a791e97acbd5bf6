"""`model.export` of models built from our layers, in every format keras
offers on the backend, each artifact reloaded in its own runtime
(`recipes.deploy.load_artifact`) and matching `model.predict` to 1e-4 at
a length below and one above the blockwise threshold, with a second batch
size and length on the same artifact (dynamic axes).

One model carries every implementation path the backend exports, a
padding mask (`mask_zero`), a causal band over two query blocks and
grouped key/value heads, so one export per format covers them.
"""

from pathlib import Path

import numpy as np
import pytest
from support import BACKEND

import keras
import keras_selfattn as ksa
from keras_selfattn.ops.attention import BLOCKWISE_MIN_LENGTH
from keras_selfattn.ops.blockwise import QUERY_BLOCK_SIZE
from recipes import deploy, exporting

# keras' exporters warn about their own internals.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning",
)

VOCABULARY = 50
# Below the blockwise threshold, and above it by more than one query block.
SHORT, LONG = 16, QUERY_BLOCK_SIZE + 44
assert SHORT < BLOCKWISE_MIN_LENGTH < LONG
# Explicit "blockwise" exports on TensorFlow only: jax2onnx and jax2tf's
# gradient cannot convert its loop's custom gradient under symbolic shapes,
# and torch.export its loop bounds, read from the mask ("auto" picks a
# path without loops there; README, "Deploy").
PATHS = ("auto", "einsum", "fused")
if BACKEND == "tensorflow":
    PATHS += ("blockwise",)


def build_model():
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = ksa.TokenAndPositionEmbedding(VOCABULARY, 2 * LONG, 16, mask_zero=True)(
        token_ids
    )
    for path in PATHS:
        x = ksa.TransformerEncoder(
            32,
            2,
            num_key_value_heads=1,
            activation="gelu",  # exact GELU: TensorFlow computes erfc
            implementation=path,
            name=path,
        )(x)
    x = ksa.MultiHeadAttention(
        2, 8, sliding_window=100, implementation=PATHS[-1], name="band"
    )(x, x, use_causal_mask=True)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(token_ids, keras.layers.Dense(3)(x))


def token_ids(rng, batch, length):
    ids = rng.integers(1, VOCABULARY, (batch, length)).astype("int32")
    ids[0, length // 3 :] = 0  # a padded row
    return ids


@pytest.mark.parametrize("format", deploy.FORMATS_BY_BACKEND[BACKEND])
def test_artifact_matches_predict(format, tmp_path):
    rng = np.random.default_rng(0)
    model = build_model()
    inputs = [token_ids(rng, 2, SHORT), token_ids(rng, 3, LONG)]
    check_artifact(model, inputs, format, tmp_path)


def check_artifact(model, inputs, format, directory):
    """Export `model` (called on `inputs[0]`, exported with the last as
    the sample), run the artifact in its runtime on every input and
    compare with `model.predict`."""
    model(inputs[0])
    path = exporting.export_artifact(model, directory, format, inputs[-1])
    run = deploy.load_artifact(path)
    for batch in inputs:
        expected = model.predict(batch, verbose=0)
        np.testing.assert_allclose(run(batch), expected, atol=1e-4, rtol=0)


def build_static_length_model():
    """`"auto"` paths at a length known when the model is built: they must
    export too (the exporters trace the batch size as unknown)."""
    inputs = keras.Input((LONG, 16), name="features")
    x = ksa.TransformerEncoder(32, 2, activation="gelu")(inputs)
    x = ksa.MultiHeadAttention(2, 8, position_bias="alibi")(x, x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))


@pytest.mark.parametrize("format", deploy.FORMATS_BY_BACKEND[BACKEND])
def test_static_length_model_exports(format, tmp_path):
    rng = np.random.default_rng(1)
    model = build_static_length_model()
    inputs = [rng.random((batch, LONG, 16), "float32") for batch in (2, 3)]
    check_artifact(model, inputs, format, tmp_path)


def test_failed_export_keeps_the_earlier_artifact(tmp_path):
    format = deploy.FORMATS_BY_BACKEND[BACKEND][0]
    artifact = tmp_path / deploy.ARTIFACTS[format]
    artifact.write_bytes(b"an earlier artifact")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    def export_half_then_fail(path, **options):
        Path(path).write_bytes(b"half an artifact")
        raise RuntimeError("the converter failed")

    model.export = export_half_then_fail
    with pytest.raises(RuntimeError, match="the converter failed"):
        exporting.export_artifact(model, tmp_path, format, np.zeros((1, 2)))
    assert artifact.read_bytes() == b"an earlier artifact"
    assert [p.name for p in tmp_path.iterdir()] == [artifact.name]


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(ValueError, match="format='tflite'"):
        exporting.export_artifact(build_model(), tmp_path, "tflite", None)
