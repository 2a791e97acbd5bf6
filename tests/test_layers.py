"""Layers vs the peers (weights copied), the NumPy oracle and identities."""

import inspect

import keras
import numpy as np
import pytest
from support import keep_one_key_per_row
from support import numpy_attention
from support import rand
from support import to_numpy

import keras_selfattn as ksa

ATOL = 1e-5


# --------------------------------------------------------------------------
# Constructor arguments vs the peers


def _named_arguments(layer_class):
    """`(name, default)` of a constructor's arguments, in order, without
    `self` and `**kwargs`."""
    parameters = inspect.signature(layer_class.__init__).parameters.values()
    return [
        (parameter.name, parameter.default)
        for parameter in list(parameters)[1:]
        if parameter.kind is not parameter.VAR_KEYWORD
    ]


@pytest.mark.once
@pytest.mark.parametrize(
    "ours, peer",
    [
        ("MultiHeadAttention", "keras.layers.MultiHeadAttention"),
        ("GroupedQueryAttention", "keras.layers.GroupQueryAttention"),
        ("TransformerEncoder", "keras_hub.layers.TransformerEncoder"),
        ("TransformerDecoder", "keras_hub.layers.TransformerDecoder"),
    ],
)
def test_peer_arguments_come_first_in_its_order_with_its_defaults(ours, peer):
    """A call written for the peer, positional arguments included, means
    the same to ours; ours adds its own arguments after the peer's."""
    module_name, _, class_name = peer.rpartition(".")
    theirs = _named_arguments(
        getattr(pytest.importorskip(module_name), class_name)
    )
    mine = _named_arguments(getattr(ksa, ours))
    assert mine[: len(theirs)] == theirs


# --------------------------------------------------------------------------
# MultiHeadAttention vs keras.layers.MultiHeadAttention


def paired_mha(query_shape, value_shape, key_shape=None, **kwargs):
    theirs = keras.layers.MultiHeadAttention(**kwargs)
    ours = ksa.MultiHeadAttention(**kwargs)
    theirs.build(query_shape, value_shape, key_shape)
    ours.build(query_shape, value_shape, key_shape)
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    ours.set_weights(theirs.get_weights())
    return ours, theirs


@pytest.mark.parametrize("use_bias", [True, False])
def test_mha_matches_keras_cross_attention(use_bias):
    rng = np.random.default_rng(0)
    query, value, key = (
        rand(rng, 2, 5, 7),
        rand(rng, 2, 3, 11),
        rand(rng, 2, 3, 6),
    )
    mask = keep_one_key_per_row(rng.random((2, 5, 3)) > 0.5)
    ours, theirs = paired_mha(
        query.shape,
        value.shape,
        key.shape,
        num_heads=3,
        key_dim=4,
        value_dim=2,
        use_bias=use_bias,
    )
    got, got_scores = ours(
        query, value, key, attention_mask=mask, return_attention_scores=True
    )
    want, want_scores = theirs(
        query, value, key, attention_mask=mask, return_attention_scores=True
    )
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=ATOL)
    np.testing.assert_allclose(
        to_numpy(got_scores), to_numpy(want_scores), atol=ATOL
    )
    assert tuple(got_scores.shape) == (2, 3, 5, 3)


def test_mha_matches_keras_causal_self_attention():
    rng = np.random.default_rng(1)
    x = rand(rng, 3, 7, 10)
    ours, theirs = paired_mha(x.shape, x.shape, num_heads=2, key_dim=5)
    got = ours(x, use_causal_mask=True)
    want = theirs(x, x, use_causal_mask=True)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=ATOL)


def test_mha_key_mask_applies_when_key_is_omitted():
    # keras' layer applies `key_mask` with `key=None` (the key is `value`).
    rng = np.random.default_rng(13)
    query, value = rand(rng, 2, 5, 7), rand(rng, 2, 3, 7)
    key_mask = np.array([[True, False, True], [False, True, True]])
    ours, theirs = paired_mha(query.shape, value.shape, num_heads=2, key_dim=3)
    got = to_numpy(ours(query, value, key_mask=key_mask))
    with_key = to_numpy(ours(query, value, value, key_mask=key_mask))
    want = to_numpy(theirs(query, value, key_mask=key_mask))
    np.testing.assert_allclose(got, with_key, atol=ATOL)
    np.testing.assert_allclose(got, want, atol=ATOL)
    unmasked = to_numpy(ours(query, value))
    assert not np.allclose(got, unmasked, atol=1e-3)


def test_mha_grouped_query_attention_matches_oracle():
    rng = np.random.default_rng(3)
    query, value = rand(rng, 2, 5, 7), rand(rng, 2, 3, 7)
    layer = ksa.MultiHeadAttention(
        num_heads=6, key_dim=4, num_key_value_heads=2
    )
    mask = keep_one_key_per_row(rng.random((2, 5, 3)) > 0.5)
    got = to_numpy(layer(query, value, attention_mask=mask))
    wq, bq, wk, bk, wv, bv, wo, bo = [to_numpy(w) for w in layer.weights]
    q = np.einsum("btd,dhk->bthk", query, wq) + bq
    k = np.einsum("bsd,dhk->bshk", value, wk) + bk
    v = np.einsum("bsd,dhk->bshk", value, wv) + bv
    assert k.shape[2] == 2
    heads, _ = numpy_attention(q, k, v, mask[:, None])
    want = np.einsum("bthk,hko->bto", heads, wo) + bo
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_mha_fully_masked_query_rows_give_attention_zeros():
    rng = np.random.default_rng(4)
    x = rand(rng, 2, 4, 6)
    layer = ksa.MultiHeadAttention(num_heads=2, key_dim=3, use_bias=False)
    mask = np.ones((2, 4, 4), bool)
    mask[1, 2, :] = False
    out = to_numpy(layer(x, attention_mask=mask))
    # Without biases, a zero attention row stays zero through the output.
    assert np.all(out[1, 2] == 0.0)
    assert np.all(np.abs(out[1, 1]) > 0.0)


def test_mha_implicit_masks_equal_explicit_masks():
    rng = np.random.default_rng(5)
    ids_q = np.array([[3, 4, 5, 0], [6, 0, 0, 0]])
    ids_v = np.array([[1, 2, 0], [7, 8, 9]])
    embed = keras.layers.Embedding(10, 6, mask_zero=True)
    layer = ksa.MultiHeadAttention(num_heads=2, key_dim=3)
    query, value = embed(ids_q), embed(ids_v)
    implicit = to_numpy(layer(query, value))
    q, v = embed(ids_q), embed(ids_v)
    explicit = to_numpy(
        layer(
            keras.ops.convert_to_tensor(to_numpy(q), "float32"),
            keras.ops.convert_to_tensor(to_numpy(v), "float32"),
            query_mask=ids_q != 0,
            value_mask=ids_v != 0,
        )
    )
    np.testing.assert_allclose(implicit, explicit, atol=ATOL)
    unmasked = to_numpy(layer(to_numpy(q), to_numpy(v)))
    assert not np.allclose(unmasked[0, 0], explicit[0, 0], atol=1e-3)
    del rng


def test_mha_symbolic_cross_attention_scores_shape():
    query = keras.Input((5, 8))
    value = keras.Input((7, 6))
    out, scores = ksa.MultiHeadAttention(num_heads=3, key_dim=4)(
        query, value, return_attention_scores=True
    )
    assert tuple(out.shape) == (None, 5, 8)
    assert tuple(scores.shape) == (None, 3, 5, 7)
    model = keras.Model([query, value], [out, scores])
    rng = np.random.default_rng(6)
    got_out, got_scores = model.predict(
        [rand(rng, 2, 5, 8), rand(rng, 2, 7, 6)], verbose=0
    )
    assert got_out.shape == (2, 5, 8) and got_scores.shape == (2, 3, 5, 7)


# --------------------------------------------------------------------------
# TransformerEncoder vs keras-hub


def hub_encoder(**kwargs):
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.layers.TransformerEncoder(**kwargs)


@pytest.mark.parametrize("normalize_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_matches_keras_hub(normalize_first, activation):
    rng = np.random.default_rng(7)
    x = rand(rng, 3, 7, 12)
    padding = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], bool)
    theirs = hub_encoder(
        intermediate_dim=10,
        num_heads=3,
        activation=activation,
        normalize_first=normalize_first,
        layer_norm_epsilon=1e-5,
    )
    # Built from keras-hub's config: the same names mean the same there.
    ours = ksa.TransformerEncoder.from_config(theirs.get_config())
    theirs.build(x.shape)
    ours.build(x.shape)
    # Make the LayerNorm and bias weights non-trivial before copying.
    theirs.set_weights(
        [w + 0.1 * rng.standard_normal(w.shape) for w in theirs.get_weights()]
    )
    # keras-hub's weight order: the list copies as it is.
    ours.set_weights(theirs.get_weights())
    got = to_numpy(ours(x, padding_mask=padding))
    want = to_numpy(theirs(x, padding_mask=padding))
    np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.once
def test_encoder_takes_version_0_1_0_arguments_and_warns_of_swapped_sizes():
    assert ksa.TransformerEncoder(16, 2, norm_first=True).normalize_first
    with pytest.warns(UserWarning, match="intermediate_dim=2, num_heads=16"):
        ksa.TransformerEncoder(2, 16)


def test_encoder_implicit_mask_equals_padding_mask_and_propagates():
    ids = np.array([[5, 6, 7, 0, 0], [8, 9, 1, 2, 3]])
    embed = ksa.TokenAndPositionEmbedding(10, 5, 8, mask_zero=True)
    encoder = ksa.TransformerEncoder(intermediate_dim=16, num_heads=2)
    inputs = keras.Input((None,), dtype="int32")
    hidden = encoder(embed(inputs))
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    model = keras.Model(inputs, [hidden, pooled])
    got_hidden, got_pooled = model.predict(ids, verbose=0)

    dense = to_numpy(embed(ids))
    explicit = to_numpy(
        encoder(
            keras.ops.convert_to_tensor(dense, "float32"), padding_mask=ids != 0
        )
    )
    valid = ids != 0
    np.testing.assert_allclose(got_hidden[valid], explicit[valid], atol=ATOL)
    # The mask reached the pooling layer: padded steps are left out.
    want_pooled = (explicit * valid[..., None]).sum(1) / valid.sum(1)[:, None]
    np.testing.assert_allclose(got_pooled, want_pooled, atol=ATOL)


def test_encoder_return_attention_scores_symbolic():
    x = keras.Input((6, 8))
    out, scores = ksa.TransformerEncoder(16, 2)(x, return_attention_scores=True)
    assert tuple(out.shape) == (None, 6, 8)
    assert tuple(scores.shape) == (None, 2, 6, 6)


# --------------------------------------------------------------------------
# SelfAttention


def test_self_attention_parameter_free_matches_oracle():
    rng = np.random.default_rng(8)
    x = rand(rng, 2, 5, 7)
    padding = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = ksa.SelfAttention()
    out, scores = layer(x, padding_mask=padding, return_attention_scores=True)
    assert layer.weights == []
    want, probs = numpy_attention(
        x[:, :, None], x[:, :, None], x[:, :, None], padding[:, None, None, :]
    )
    np.testing.assert_allclose(to_numpy(out), want[:, :, 0], atol=ATOL)
    np.testing.assert_allclose(to_numpy(scores), probs[:, 0], atol=ATOL)


def test_self_attention_projections_causal_matches_oracle():
    rng = np.random.default_rng(9)
    x = rand(rng, 2, 5, 7)
    layer = ksa.SelfAttention(use_projections=True, units=3)
    out = to_numpy(layer(x, use_causal_mask=True))
    wq, bq, wk, bk, wv, bv = [to_numpy(w) for w in layer.weights]
    q, k, v = (x @ w + b for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    want, _ = numpy_attention(
        q[:, :, None], k[:, :, None], v[:, :, None], is_causal=True
    )
    assert out.shape == (2, 5, 3)
    np.testing.assert_allclose(out, want[:, :, 0], atol=ATOL)


def test_self_attention_implicit_mask():
    ids = np.array([[1, 2, 0], [3, 0, 0]])
    embed = keras.layers.Embedding(5, 4, mask_zero=True)
    layer = ksa.SelfAttention()
    implicit = to_numpy(layer(embed(ids)))
    dense = to_numpy(embed(ids))
    explicit = to_numpy(layer(dense, padding_mask=ids != 0))
    np.testing.assert_allclose(implicit, explicit, atol=ATOL)


# --------------------------------------------------------------------------
# Embeddings


def test_sinusoidal_encoding_formula():
    x = np.zeros((2, 6, 5), "float32")
    got = to_numpy(ksa.SinusoidalPositionEncoding(max_wavelength=100.0)(x))
    pos = np.arange(6)[:, None]
    i = np.arange(5)[None, :]
    angle = pos / 100.0 ** ((i - i % 2) / 5)
    want = np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
    np.testing.assert_allclose(got[1], want, atol=1e-5)
    assert got.shape == (2, 6, 5)


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal"])
def test_token_and_position_embedding(position_encoding):
    layer = ksa.TokenAndPositionEmbedding(
        11, 6, 4, position_encoding=position_encoding, mask_zero=True
    )
    ids = np.array([[3, 4, 0], [5, 0, 0]])
    out = to_numpy(layer(ids))
    tokens = to_numpy(layer.token_embedding.embeddings)[ids]
    if position_encoding == "learned":
        positions = to_numpy(layer.position_embeddings)[:3]
    else:
        positions = to_numpy(
            ksa.SinusoidalPositionEncoding()(np.zeros((1, 3, 4), "float32"))
        )[0]
    np.testing.assert_allclose(out, tokens + positions, atol=1e-6)
    mask = to_numpy(layer.compute_mask(ids)).astype(bool)
    np.testing.assert_array_equal(mask, ids != 0)


# --------------------------------------------------------------------------
# Mixed precision


# Relative tolerance vs float32 for a whole layer. bfloat16 keeps 8
# significant bits (unit roundoff u = 2**-8 = 3.9e-3) and the layer rounds
# about six times in a row (inputs, weights, q/k/v, probabilities, attention
# output, output projection): ~5u. float16 has u = 2**-11.
LAYER_TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 2e-2}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_close_to_float32(policy):
    rng = np.random.default_rng(10)
    x = rand(rng, 2, 6, 8)
    mask = np.ones((2, 6, 6), bool)
    mask[0, 3, :] = False
    full = ksa.MultiHeadAttention(num_heads=2, key_dim=4, use_bias=False)
    half = ksa.MultiHeadAttention(
        num_heads=2, key_dim=4, use_bias=False, dtype=policy
    )
    full.build(x.shape)
    half.build(x.shape)
    half.set_weights(full.get_weights())
    want, want_scores = full(
        x, attention_mask=mask, return_attention_scores=True
    )
    got, got_scores = half(x, attention_mask=mask, return_attention_scores=True)
    assert keras.ops.dtype(got) == policy.split("_")[1]
    got, got_scores = to_numpy(got), to_numpy(got_scores)
    assert np.all(np.isfinite(got)) and np.all(got[0, 3] == 0.0)
    tol = LAYER_TOLERANCE[policy]
    np.testing.assert_allclose(got_scores, to_numpy(want_scores), atol=tol)
    scale = np.abs(to_numpy(want)).max()
    np.testing.assert_allclose(got / scale, to_numpy(want) / scale, atol=tol)


# --------------------------------------------------------------------------
# Bad arguments and inputs


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: ksa.MultiHeadAttention(0, 4), ValueError, "num_heads=0"),
        (lambda: ksa.MultiHeadAttention(2, -1), ValueError, "key_dim=-1"),
        (
            lambda: ksa.MultiHeadAttention(2, 4, dropout=1.0),
            ValueError,
            "dropout=1.0",
        ),
        (
            lambda: ksa.MultiHeadAttention(4, 4, num_key_value_heads=3),
            ValueError,
            "num_key_value_heads=3",
        ),
        (lambda: ksa.MultiHeadAttention(2.5, 4), ValueError, "num_heads=2.5"),
        (
            lambda: ksa.TransformerEncoder(0, 2),
            ValueError,
            "intermediate_dim=0",
        ),
        (
            lambda: ksa.TransformerEncoder(8, 2, dropout=-0.1),
            ValueError,
            "dropout=-0.1",
        ),
        (
            lambda: ksa.TransformerEncoder(8, 2, layer_norm_epsilon=0),
            ValueError,
            "layer_norm_epsilon=0",
        ),
        (lambda: ksa.SelfAttention(units=4), ValueError, "units=4"),
        (
            lambda: ksa.MultiHeadAttention(2, 4, implementation="flash"),
            ValueError,
            "implementation='flash'",
        ),
        (
            lambda: ksa.MultiHeadAttention(
                2, 4, dropout=0.1, implementation="fused"
            ),
            ValueError,
            "implementation='fused'",
        ),
        (
            lambda: ksa.TransformerEncoder(
                8, 2, dropout=0.1, implementation="blockwise"
            ),
            ValueError,
            "implementation='blockwise'",
        ),
        (
            lambda: ksa.SelfAttention(dropout=0.1, implementation="fused"),
            ValueError,
            "implementation='fused'",
        ),
        (
            lambda: ksa.MultiHeadAttention(2, 4, output_shape=(3, 0)),
            ValueError,
            r"output_shape=\(3, 0\)",
        ),
        (
            lambda: ksa.MultiHeadAttention(2, 4, attention_axes="rows"),
            ValueError,
            "attention_axes='rows'",
        ),
        (
            lambda: ksa.MultiHeadAttention(2, 4, attention_axes=3)(
                np.zeros((1, 2, 3, 4), "float32")
            ),
            ValueError,
            "attention_axes=",
        ),
        (
            lambda: ksa.MultiHeadAttention(2, 4, flash_attention="yes"),
            ValueError,
            "flash_attention='yes'",
        ),
        (
            lambda: ksa.GroupedQueryAttention(4, 4, 3),
            ValueError,
            "num_query_heads=4, num_key_value_heads=3",
        ),
        (
            lambda: ksa.TokenAndPositionEmbedding(10, 0, 4),
            ValueError,
            "sequence_length=0",
        ),
        (
            lambda: ksa.TokenAndPositionEmbedding(
                10, 5, 4, position_encoding="rope"
            ),
            ValueError,
            "rope",
        ),
    ],
)
def test_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_encoder_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="width=10, num_heads=3"):
        ksa.TransformerEncoder(8, 3)(np.zeros((1, 2, 10), "float32"))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            dict(padding_mask=np.ones((2, 4, 4), bool)),
            ValueError,
            r"padding_mask.shape=\(2, 4, 4\)",
        ),
        (
            dict(padding_mask=np.ones((2, 5), bool)),
            ValueError,
            r"padding_mask.shape=\(2, 5\)",
        ),
        (
            dict(attention_mask=np.ones((2, 4), bool)),
            ValueError,
            r"attention_mask.shape=\(2, 4\)",
        ),
        (
            dict(padding_mask=np.ones((2, 4), "float32")),
            TypeError,
            "padding_mask.dtype=float32",
        ),
    ],
)
@pytest.mark.parametrize("layer_name", ["SelfAttention", "TransformerEncoder"])
def test_bad_masks_at_call_time(layer_name, kwargs, error, message):
    layer = (
        ksa.SelfAttention()
        if layer_name == "SelfAttention"
        else ksa.TransformerEncoder(8, 2)
    )
    x = np.zeros((2, 4, 6), "float32")
    layer(x)
    with pytest.raises(error, match=message):
        layer(x, **kwargs)


def test_bad_mha_inputs_at_call_time():
    layer = ksa.MultiHeadAttention(2, 3)
    x = np.zeros((2, 4, 6), "float32")
    layer(x)
    with pytest.raises(ValueError, match=r"query_mask.shape=\(2, 3\)"):
        layer(x, query_mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"attention_mask.shape=\(2, 3, 4\)"):
        layer(x, attention_mask=np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match=r"attention_mask.shape=\(4,\)"):
        layer(x, attention_mask=np.ones((4,), bool))
    with pytest.raises(TypeError, match="query.dtype=int32"):
        layer(np.zeros((2, 4, 6), "int32"))
    with pytest.raises(ValueError, match=r"query.shape=\(2, 4, 5\)"):
        layer(np.zeros((2, 4, 5), "float32"))
    with pytest.raises(ValueError, match="value.shape"):
        layer(x, np.zeros((2, 3, 6), "float32"), np.zeros((2, 4, 6), "float32"))


def test_embedding_rejects_float_ids_and_long_inputs():
    layer = ksa.TokenAndPositionEmbedding(10, 3, 4)
    with pytest.raises(TypeError, match="inputs.dtype=float32"):
        layer(np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="sequence_length`=3"):
        layer(np.zeros((1, 4), "int32"))


# --------------------------------------------------------------------------
# Every attention implementation gives the same layer outputs


LAYER_PATHS = ["fused", "blockwise"]


@pytest.mark.parametrize("implementation", LAYER_PATHS)
def test_mha_implementations_agree_with_masks_and_causal(implementation):
    # 300 keys: three key blocks on the blockwise path.
    rng = np.random.default_rng(11)
    x = rand(rng, 2, 300, 16)
    query_mask = np.ones((2, 300), bool)
    query_mask[1, 200:] = False
    kwargs = dict(num_heads=4, key_dim=4, num_key_value_heads=2)
    reference = ksa.MultiHeadAttention(**kwargs, implementation="einsum")
    other = ksa.MultiHeadAttention(**kwargs, implementation=implementation)
    reference.build(x.shape)
    other.build(x.shape)
    other.set_weights(reference.get_weights())
    for causal in (False, True):
        want = reference(x, query_mask=query_mask, use_causal_mask=causal)
        got = other(x, query_mask=query_mask, use_causal_mask=causal)
        np.testing.assert_allclose(
            to_numpy(got), to_numpy(want), atol=ATOL, rtol=ATOL
        )
        assert np.all(to_numpy(got)[1, 200:] == to_numpy(want)[1, 200:])


@pytest.mark.parametrize("implementation", LAYER_PATHS)
def test_encoder_and_self_attention_implementations_agree(implementation):
    rng = np.random.default_rng(12)
    x = rand(rng, 2, 300, 8)
    padding = np.ones((2, 300), bool)
    padding[0, 150:] = False
    pairs = [
        (
            ksa.TransformerEncoder(16, 2, implementation="einsum"),
            ksa.TransformerEncoder(16, 2, implementation=implementation),
        ),
        (
            ksa.SelfAttention(use_projections=True, implementation="einsum"),
            ksa.SelfAttention(
                use_projections=True, implementation=implementation
            ),
        ),
    ]
    for reference, other in pairs:
        reference.build(x.shape)
        other.build(x.shape)
        other.set_weights(reference.get_weights())
        want = reference(x, padding_mask=padding)
        got = other(x, padding_mask=padding)
        np.testing.assert_allclose(
            to_numpy(got), to_numpy(want), atol=ATOL, rtol=ATOL
        )


def test_encoder_attention_dropout_is_separate_from_residual_dropout():
    encoder = ksa.TransformerEncoder(
        16, 2, dropout=0.3, attention_dropout=0.0, implementation="blockwise"
    )
    encoder.build((1, 4, 8))
    assert encoder.self_attention.dropout == 0.0
    assert encoder.feedforward_dropout.rate == 0.3
    assert encoder.self_attention.implementation == "blockwise"
    default = ksa.TransformerEncoder(16, 2, dropout=0.3)
    default.build((1, 4, 8))
    assert default.self_attention.dropout == 0.3  # keras-hub's behaviour
