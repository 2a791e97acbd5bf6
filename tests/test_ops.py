"""scaled_dot_product_attention and the mask helpers vs the NumPy oracle."""

import numpy as np
import pytest
from support import BACKEND
from support import grads
from support import jit
from support import numpy_attention
from support import to_numpy
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

from keras_selfattn.ops.masks import causal_mask
from keras_selfattn.ops.masks import merge_masks
from keras_selfattn.ops.masks import padding_to_attention_mask
from keras_selfattn.ops import scaled_dot_product_attention

TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}


def random_qkv(rng, batch, q_len, k_len, heads, kv_heads, dim, dtype="float32"):
    query = rng.standard_normal((batch, q_len, heads, dim)).astype(dtype)
    key = rng.standard_normal((batch, k_len, kv_heads, dim)).astype(dtype)
    value = rng.standard_normal((batch, k_len, kv_heads, dim + 2)).astype(dtype)
    return query, key, value


def test_matches_oracle_with_mask_causal_scale_and_groups():
    # Coprime sizes: a transposed axis cannot line up by accident.
    rng = np.random.default_rng(1)
    query, key, value = random_qkv(rng, 2, 5, 7, 6, 3, 11)
    mask = rng.random((2, 1, 5, 7)) > 0.3
    out, probs = scaled_dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        is_causal=True,
        scale=0.37,
        return_attention_scores=True,
    )
    want_out, want_probs = numpy_attention(
        query, key, value, mask, is_causal=True, scale=0.37
    )
    np.testing.assert_allclose(to_numpy(out), want_out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        to_numpy(probs), want_probs, atol=1e-5, rtol=1e-5
    )


def test_golden_numbers():
    # Produced by: numpy_attention(q, k, v) in tests/conftest.py with
    # q = k = [[[[1, 0]], [[0, 1]]]], v = [[[[1, 2]], [[3, 4]]]] (float64).
    q = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]], "float32")
    v = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]], "float32")
    out = to_numpy(scaled_dot_product_attention(q, q, v))
    weight = 1.0 / (1.0 + np.exp(-1.0 / np.sqrt(2.0)))  # softmax of 1/sqrt2
    golden = [
        [1 * weight + 3 * (1 - weight), 2 * weight + 4 * (1 - weight)],
        [1 * (1 - weight) + 3 * weight, 2 * (1 - weight) + 4 * weight],
    ]
    np.testing.assert_allclose(out[0, :, 0], golden, atol=1e-6)
    # 3 - 2w, 4 - 2w with w = sigmoid(1/sqrt(2)) = 0.669762
    np.testing.assert_allclose(out[0, 0, 0], [1.660477, 2.660477], atol=1e-6)


# 24 examples per backend (72 in `make test`); each path also has its own
# oracle tests (test_attention_paths.py, test_attention_features.py).
@settings(max_examples=24, deadline=None)
@given(
    batch=st.integers(1, 3),
    q_len=st.integers(1, 7),
    k_len=st.integers(1, 7),
    kv_heads=st.integers(1, 3),
    groups=st.integers(1, 3),
    dim=st.integers(1, 5),
    is_causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "2d", "4d"]),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    seed=st.integers(0, 2**16),
    implementation=st.sampled_from(["einsum", "fused", "blockwise"]),
)
def test_property_matches_oracle(
    implementation,
    batch,
    q_len,
    k_len,
    kv_heads,
    groups,
    dim,
    is_causal,
    mask_kind,
    dtype,
    seed,
):
    rng = np.random.default_rng(seed)
    heads = kv_heads * groups
    query, key, value = random_qkv(
        rng, batch, q_len, k_len, heads, kv_heads, dim
    )
    # Quantise once, so the oracle sees exactly the inputs the op sees.
    query, key, value = (
        to_numpy(ops.cast(t, dtype)) for t in (query, key, value)
    )
    mask = None
    if mask_kind == "2d":
        mask = rng.random((q_len, k_len)) > 0.4
    elif mask_kind == "4d":
        mask = rng.random((batch, 1, q_len, k_len)) > 0.4
        mask[0, 0, 0, :] = False  # always one fully masked row
    out = scaled_dot_product_attention(
        ops.cast(query, dtype),
        ops.cast(key, dtype),
        ops.cast(value, dtype),
        mask=mask,
        is_causal=is_causal,
        implementation=implementation,
    )
    assert ops.dtype(out) == dtype
    want, _ = numpy_attention(query, key, value, mask, is_causal)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(to_numpy(out), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("implementation", ["einsum", "fused", "blockwise"])
def test_fully_masked_rows_are_zero_with_zero_finite_gradients(
    implementation,
):
    rng = np.random.default_rng(2)
    query, key, value = random_qkv(rng, 2, 3, 5, 2, 2, 4)
    mask = np.ones((2, 1, 3, 5), bool)
    mask[0, :, 1, :] = False
    mask[1, :, :, :] = False

    def attend(q, k, v):
        return scaled_dot_product_attention(
            q, k, v, mask=mask, implementation=implementation
        )

    out = to_numpy(attend(query, key, value))
    assert np.all(out[0, 1] == 0.0) and np.all(out[1] == 0.0)
    assert np.any(out[0, 0] != 0.0)
    dq, dk, dv = grads(attend, query, key, value)
    for grad in (dq, dk, dv):
        assert np.all(np.isfinite(grad))
    assert np.all(dq[0, 1] == 0.0) and np.all(dq[1] == 0.0)
    assert np.all(dk[1] == 0.0) and np.all(dv[1] == 0.0)
    assert np.any(dq[0, 0] != 0.0)


def test_fully_masked_rows_under_jit():
    rng = np.random.default_rng(3)
    query, key, value = random_qkv(rng, 1, 3, 4, 2, 1, 4)
    mask = np.ones((1, 1, 3, 4), bool)
    mask[0, 0, 2, :] = False

    @jit
    def attend(q, k, v, m):
        return scaled_dot_product_attention(q, k, v, mask=m)

    out = to_numpy(attend(query, key, value, ops.convert_to_tensor(mask)))
    want, _ = numpy_attention(query, key, value, mask)
    assert np.all(out[0, 2] == 0.0)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_softmax_in_float32_keeps_large_logits_finite(dtype):
    # Logits near 600: exp() overflows float16, and the masked-logit constant
    # must not overflow the compute dtype either.
    query = np.full((1, 2, 1, 4), 12.0, "float32")
    key = np.full((1, 3, 1, 4), 25.0, "float32")
    key[0, 1] = 24.0
    value = np.arange(12, dtype="float32").reshape(1, 3, 1, 4)
    mask = np.array([[[[True, True, False], [False, False, False]]]])
    out = scaled_dot_product_attention(
        ops.cast(query, dtype),
        ops.cast(key, dtype),
        ops.cast(value, dtype),
        mask=mask,
    )
    assert ops.dtype(out) == dtype
    want, _ = numpy_attention(query, key, value, mask)
    got = to_numpy(out)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=1e-2, rtol=1e-2)


def test_integer_mask_equals_boolean_mask():
    rng = np.random.default_rng(4)
    query, key, value = random_qkv(rng, 2, 3, 5, 2, 2, 3)
    mask = rng.random((2, 1, 3, 5)) > 0.5
    as_bool = scaled_dot_product_attention(query, key, value, mask=mask)
    as_int = scaled_dot_product_attention(
        query, key, value, mask=mask.astype("int32")
    )
    np.testing.assert_array_equal(to_numpy(as_bool), to_numpy(as_int))


def test_dropout_zeroes_some_weights_and_rescales():
    rng = np.random.default_rng(5)
    query, key, value = random_qkv(rng, 2, 7, 7, 2, 2, 3)
    _, probs = scaled_dot_product_attention(
        query, key, value, return_attention_scores=True
    )
    dropped = scaled_dot_product_attention(
        query, key, value, dropout_rate=0.5, seed=3
    )
    plain = scaled_dot_product_attention(query, key, value)
    assert not np.allclose(to_numpy(dropped), to_numpy(plain))
    # Returned scores are the probabilities before dropout.
    np.testing.assert_allclose(to_numpy(probs).sum(-1), 1.0, atol=1e-6)


def test_causal_mask_is_top_left_aligned():
    got = to_numpy(causal_mask(2, 3)).astype(bool)
    np.testing.assert_array_equal(got, [[1, 0, 0], [1, 1, 0]])


def test_padding_to_attention_mask_and_merge():
    keys = np.array([[1, 1, 0]], bool)
    queries = np.array([[1, 0]], bool)
    got = to_numpy(padding_to_attention_mask(keys, queries)).astype(bool)
    np.testing.assert_array_equal(got, [[[1, 1, 0], [0, 0, 0]]])
    assert merge_masks(None, None) is None
    merged = merge_masks(keys, None, np.array([[0, 1, 1]], "int32"))
    np.testing.assert_array_equal(to_numpy(merged).astype(bool), [[0, 1, 0]])


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(query=np.zeros((2, 3, 4), "float32")), ValueError, "query.shape"),
        (
            dict(
                key=np.zeros((2, 5, 3, 4), "float32"),
                value=np.zeros((2, 5, 3, 4), "float32"),
            ),
            ValueError,
            "divide",
        ),
        (dict(value=np.zeros((2, 6, 1, 4), "float32")), ValueError, "value"),
        (dict(query=np.zeros((2, 3, 2, 4), "int32")), TypeError, "query.dtype"),
        (dict(mask=np.ones((2, 3, 5), bool)), ValueError, "rank 2"),
        (dict(mask=np.ones((2, 1, 3, 4), bool)), ValueError, "mask.shape"),
        (dict(mask=np.ones((3, 5), "float32")), TypeError, "mask.dtype"),
        (dict(dropout_rate=1.0), ValueError, "dropout_rate=1.0"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, message):
    args = dict(
        query=np.zeros((2, 3, 2, 4), "float32"),
        key=np.zeros((2, 5, 1, 4), "float32"),
        value=np.zeros((2, 5, 1, 4), "float32"),
    )
    args.update(change)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        scaled_dot_product_attention(**args)


@pytest.mark.skipif(BACKEND != "jax", reason="symbolic-shape check: one run")
def test_dynamic_shapes_are_not_rejected():
    import keras

    query = keras.KerasTensor((None, None, 2, 4))
    key = keras.KerasTensor((None, None, 1, 4))
    mask = keras.KerasTensor((None, 1, None, None), dtype="bool")
    out = scaled_dot_product_attention(query, key, key, mask=mask)
    assert tuple(out.shape) == (None, None, 2, 4)
