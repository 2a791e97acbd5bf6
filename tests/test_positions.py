"""Rotary embeddings, ALiBi and T5 biases, soft caps and windows in the
layers: keras-hub's layers as peers, a NumPy oracle of the whole
attention, training, mixed precision and bad values."""

import keras
import keras_hub
import numpy as np
import pytest
from support import numpy_attention, rand, to_numpy
from test_attention_features import numpy_alibi, numpy_t5_buckets

import keras_selfattn as ksa


@pytest.mark.parametrize(
    "shape, kwargs, call",
    [
        ((2, 7, 3, 8), {}, {}),
        ((2, 7, 6), dict(max_wavelength=100, scaling_factor=2.5), {}),
        ((2, 8, 3, 7), dict(sequence_axis=-1, feature_axis=1), {}),
        ((2, 7, 3, 8), {}, dict(start_index=5)),
    ],
)
def test_rotary_embedding_matches_keras_hub(shape, kwargs, call):
    x = rand(np.random.default_rng(0), *shape)
    got = ksa.RotaryEmbedding(**kwargs)(x, **call)
    want = keras_hub.layers.RotaryEmbedding(**kwargs)(x, **call)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)


def test_rotary_angles_reused_only_for_the_same_index():
    # An index tensor's angles are reused by the next call with the same
    # tensor (a decoding step's blocks); another tensor, another length or
    # a torch tensor written in place gets its own. An int start index is
    # never reused: the oracle.
    rng = np.random.default_rng(5)
    layer = ksa.RotaryEmbedding(max_wavelength=100)

    def check(x, index, position):
        got = layer(x, start_index=index)
        want = layer(x, start_index=position)
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-6)

    index = keras.ops.convert_to_tensor(3, "int32")
    check(rand(rng, 1, 1, 2, 8), index, 3)
    check(rand(rng, 1, 1, 2, 8), index, 3)
    check(rand(rng, 1, 4, 2, 8), index, 3)
    check(rand(rng, 1, 1, 2, 8), keras.ops.convert_to_tensor(7, "int32"), 7)
    if keras.backend.backend() == "torch":
        check(rand(rng, 1, 1, 2, 8), index, 3)
        index.add_(2)
        check(rand(rng, 1, 1, 2, 8), index, 5)


@pytest.mark.parametrize("heads, bias_max", [(4, 8), (6, 8), (3, 4)])
def test_alibi_bias_matches_keras_hub(heads, bias_max):
    scores = rand(np.random.default_rng(1), 2, heads, 5, 9)
    got = ksa.AlibiBias(bias_max)(scores)
    want = keras_hub.layers.AlibiBias(bias_max)(scores)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-6)


def numpy_rotary(x, max_wavelength):
    """Rotate `(B, L, H, D)` pairs `(x_k, x_{k + D/2})` by `l * theta_k`."""
    depth = x.shape[-1]
    theta = max_wavelength ** (-np.arange(0, depth, 2) / depth)
    angle = np.arange(x.shape[1])[:, None] * theta  # (L, D/2)
    cos, sin = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]
    first, second = x[..., : depth // 2], x[..., depth // 2 :]
    return np.concatenate(
        [first * cos - second * sin, second * cos + first * sin], -1
    )


@pytest.mark.parametrize(
    "position_bias, implementation",
    [("alibi", "einsum"), ("relative", "blockwise")],
)
def test_mha_features_match_numpy(position_bias, implementation):
    # Every option at once, against the projections, rotations and
    # biases done by hand in NumPy. (Each path computes every feature
    # against the oracle in test_attention_features.py.)
    rng = np.random.default_rng(2)
    heads, depth, length, window, cap = 4, 6, 40, 9, 4.0
    layer = ksa.MultiHeadAttention(
        heads,
        depth,
        sliding_window=window,
        logit_soft_cap=cap,
        rotary_max_wavelength=500,
        position_bias=position_bias,
        relative_num_buckets=8,
        relative_max_distance=20,
        bias_initializer="random_normal",
        implementation=implementation,
    )
    x = rand(rng, 2, length, 10)
    bias = rand(rng, 2, length, length)
    layer(x)  # build
    if position_bias == "relative":
        layer.relative_position_bias.embeddings.assign(rand(rng, 8, heads))
    got = layer(x, use_causal_mask=True, attention_bias=bias)

    def project(dense):
        kernel, offset = (to_numpy(w) for w in dense.weights)
        return np.einsum("btd,dhk->bthk", x, kernel) + offset

    query = numpy_rotary(project(layer.query_dense), 500)
    key = numpy_rotary(project(layer.key_dense), 500)
    positions = np.arange(length)
    if position_bias == "alibi":
        slopes = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
        logit_bias = numpy_alibi(slopes, length)
    else:
        table = to_numpy(layer.relative_position_bias.embeddings)
        buckets = numpy_t5_buckets(
            positions[None, :] - positions[:, None], 8, 20
        )
        logit_bias = table.T[:, buckets]
    band = np.abs(positions[:, None] - positions[None, :]) < window
    attended, _ = numpy_attention(
        query,
        key,
        project(layer.value_dense),
        mask=band,
        is_causal=True,
        bias=bias[:, None] + logit_bias[None],
        soft_cap=cap,
    )
    kernel, offset = (to_numpy(w) for w in layer.output_dense.weights)
    want = np.einsum("bthk,hkd->btd", attended, kernel) + offset
    np.testing.assert_allclose(to_numpy(got), want, atol=2e-5, rtol=1e-4)


def test_encoder_trains_its_position_table():
    # The T5 table, rotary queries and keys and a window inside a model
    # that trains on the blockwise path: the table learns.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 8))
    encoder = ksa.TransformerEncoder(
        16,
        2,
        num_key_value_heads=1,
        sliding_window=16,
        logit_soft_cap=5.0,
        rotary_max_wavelength=1000,
        position_bias="relative",
        implementation="blockwise",
    )
    outputs = keras.layers.Dense(1)(encoder(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    table = encoder.self_attention.relative_position_bias.embeddings
    before = to_numpy(table)
    rng = np.random.default_rng(3)
    x, y = rand(rng, 4, 64, 8), rand(rng, 4, 64, 1)
    history = model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(to_numpy(table) - before).max() > 1e-4


def test_mixed_precision_features_follow_float32():
    x = rand(np.random.default_rng(4), 2, 64, 16)
    kwargs = dict(
        num_heads=4,
        key_dim=4,
        sliding_window=20,
        logit_soft_cap=5.0,
        position_bias="alibi",
        rotary_max_wavelength=1000,
        implementation="blockwise",
    )
    full = ksa.MultiHeadAttention(**kwargs)
    want = to_numpy(full(x, use_causal_mask=True))
    half = ksa.MultiHeadAttention(**kwargs, dtype="mixed_bfloat16")
    half(x)
    half.set_weights(full.get_weights())
    got = half(x, use_causal_mask=True)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    np.testing.assert_allclose(to_numpy(got), want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: ksa.MultiHeadAttention(2, 4, logit_soft_cap=0),
            "logit_soft_cap=0",
        ),
        (
            lambda: ksa.MultiHeadAttention(
                2, 4, logit_soft_cap=2.0, implementation="fused"
            ),
            "logit_soft_cap=2.0",
        ),
        (
            lambda: ksa.MultiHeadAttention(2, 3, rotary_max_wavelength=100),
            "key_dim=3",
        ),
        (
            lambda: ksa.MultiHeadAttention(2, 4, position_bias="t5"),
            "position_bias='t5'",
        ),
        (
            lambda: ksa.TransformerEncoder(8, 2, sliding_window=0),
            "sliding_window=0",
        ),
        (lambda: ksa.RelativePositionBias(2, num_buckets=2), "num_buckets=2"),
        (
            lambda: ksa.RelativePositionBias(2, 32, max_distance=8),
            "max_distance=8",
        ),
        (
            lambda: ksa.RotaryEmbedding()(np.ones((1, 3, 5), "float32")),
            "(1, 3, 5)",
        ),
    ],
)
def test_bad_feature_values(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)


def test_bad_attention_bias_shape():
    layer = ksa.MultiHeadAttention(2, 4)
    x = np.ones((2, 5, 8), "float32")
    with pytest.raises(ValueError, match=r"attention_bias.shape=\(2, 5, 4\)"):
        layer(x, attention_bias=np.zeros((2, 5, 4), "float32"))
    with pytest.raises(TypeError, match="attention_bias.dtype=bool"):
        layer(x, attention_bias=np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match=r"attention_bias.shape=\(3, 5, 5\)"):
        ksa.ops.scaled_dot_product_attention(
            np.ones((2, 5, 2, 4), "float32"),
            np.ones((2, 5, 2, 4), "float32"),
            np.ones((2, 5, 2, 4), "float32"),
            attention_bias=np.zeros((3, 5, 5), "float32"),
        )
