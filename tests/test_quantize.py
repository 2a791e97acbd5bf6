"""`model.quantize(mode)` on models of our layers: close to the float model,
and a `.keras` round trip that rebuilds the quantized sublayers.

Modes: every keras 3.15 mode that needs no calibration data (int8, int4
(default config) and float8). gptq and awq need a calibration
dataset and a `GPTQConfig`/`AWQConfig` with the model's block structure,
so they are not covered here.
"""

import gc

import keras
import numpy as np
import pytest
from support import to_numpy
from tiny_bert import TINY_CONFIG, random_tensors

import keras_selfattn as ksa
from keras_selfattn import pretrained

# keras warns for each layer without weights to quantize (pooling, norms...).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Layer .* does not have a `quantize` method implemented:UserWarning",
    "ignore:Invalid quantization mode:UserWarning",  # float8 on Embedding
)

# mode -> (keras' mode, its config, the largest RMS error of the quantized
# outputs relative to the RMS of the float outputs). Per weight, the RMS
# rounding error is about step / sqrt(12) relative to the weights' RMS:
# ~0.5% for int8 (step max / 127), ~7% for int4 (max / 7) and ~2% for
# float8 (e4m3, 3 mantissa bits, on the inputs too), and up to ~8
# quantized matmuls run in series. Measured over 5 seeds on tensorflow
# and torch: int8 <= 0.021, int4 <= 0.25, float8 <= 0.14 (the BERT
# encoder: 0.013, 0.155, 0.071); the bounds leave 2-3x. They are sanity
# checks: a kernel quantized along the wrong axis, or a lost scale, is
# off by 100% or more.
MODES = {
    "int8": ("int8", None, 0.05),
    "int4": ("int4", None, 0.5),
    "float8": ("float8", None, 0.3),
}


@pytest.fixture(autouse=True, scope="module")
def _frozen_gc():
    """keras runs `gc.collect()` for every kernel `quantize()` replaces;
    leaving the objects already alive out of it makes that 3x cheaper."""
    gc.freeze()
    yield
    gc.unfreeze()


BATCH, LENGTH, WIDTH, VOCAB = 2, 7, 8, 20


def every_layer_model():
    """Every layer with quantizable sublayers in one model (the encoder's
    attention nested), the attentions side by side on a residual (a deep
    stack without one shrinks the signal below the int4 noise), a Dense
    head last."""
    ids = keras.Input((LENGTH,), dtype="int32")
    x = ksa.TokenAndPositionEmbedding(VOCAB, LENGTH, WIDTH)(ids)
    x = ksa.TransformerEncoder(16, 2)(x)
    x = keras.layers.Add()(
        [
            x,
            ksa.SelfAttention(use_projections=True)(x),
            ksa.GroupedQueryAttention(4, 2, 1)(x, x),
            ksa.MultiHeadAttention(2, 4, use_gate=True)(x, x),
        ]
    )
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(ids, keras.layers.Dense(3)(x))
    rng = np.random.default_rng(0)
    return model, rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32")


def bert_model():
    """The pretrained encoder with a tiny checkpoint's weights, in the
    sizes above (shapes shared with `every_layer_model`: jax compiles
    keras' quantizers once per shape)."""
    sizes = dict(
        TINY_CONFIG,
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=LENGTH,
        num_hidden_layers=1,
    )
    config = pretrained.BertConfig.from_dict(sizes)
    model = pretrained.bert_encoder(config, dropout=0.0)
    tensors = random_tensors(sizes)
    pretrained.assign_weights(model, pretrained.bert_weights(tensors, config))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (BATCH, LENGTH)).astype("int32")
    mask = np.ones((BATCH, LENGTH), bool)
    mask[1, -2:] = False
    return model, {"token_ids": ids, "padding_mask": mask}


CASES = [
    (build, mode) for build in (every_layer_model, bert_model) for mode in MODES
]


def rms(x):
    return np.sqrt(np.mean(np.square(x)))


def modes(model):
    """`{layer path: quantization mode}` of the quantized layers."""
    return {
        layer.path: layer.quantization_mode
        for layer in model._flatten_layers()
        if layer.quantization_mode is not None
    }


def round_trip(model, path):
    model.save(path)
    return keras.saving.load_model(path)


@pytest.mark.parametrize(
    "build, mode_id",
    CASES,
    ids=[f"{build.__name__}-{mode_id}" for build, mode_id in CASES],
)
def test_quantized_model_round_trips(build, mode_id, tmp_path):
    mode, config, tolerance = MODES[mode_id]
    model, data = build()
    expected = to_numpy(model(data))
    model.quantize(mode, config=config)
    quantized = to_numpy(model(data))
    error = rms(quantized - expected) / rms(expected)
    assert error < tolerance, error
    assert not np.array_equal(quantized, expected)

    loaded = round_trip(model, tmp_path / "model.keras")
    np.testing.assert_allclose(to_numpy(loaded(data)), quantized, atol=1e-6)
    assert modes(loaded) == modes(model)
    # Every Dense and EinsumDense, Embedding too unless float8 (keras has
    # no float8 Embedding).
    for layer in loaded._flatten_layers():
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            assert layer.quantization_mode == mode, layer.path
        if isinstance(layer, keras.layers.Embedding):
            expected_mode = None if mode == "float8" else mode
            assert layer.quantization_mode == expected_mode, layer.path

    # A loaded quantized model saves and loads again.
    again = round_trip(loaded, tmp_path / "again.keras")
    np.testing.assert_allclose(to_numpy(again(data)), quantized, atol=1e-6)
    assert modes(again) == modes(model)


def test_float_config_is_unchanged():
    """Unquantized layers keep their plain `dtype` entry (files written
    before quantization support load as before)."""
    model, _ = every_layer_model()
    ours = [
        layer
        for layer in model.layers
        if type(layer).__module__.startswith("keras_selfattn")
    ]
    assert len(ours) == 5
    for layer in ours:
        assert layer.get_config()["dtype"] == (
            keras.dtype_policies.serialize(layer.dtype_policy)
        )
