"""Biases, position biases, the soft cap and windows on every path, against
the NumPy oracle (outputs and gradients, the bias' and the T5 table's too).

Lengths span two query blocks and three key blocks of the blockwise path,
both padded, so its bands, tiles and per-tile biases are all exercised.
"""

import math

import numpy as np
import pytest
from keras import ops

from keras_selfattn.ops import (
    alibi_bias,
    relative_position_bias,
    scaled_dot_product_attention,
)
from keras_selfattn.ops.blockwise import BLOCK_SIZE, QUERY_BLOCK_SIZE
from support import (
    grads,
    numpy_attention,
    numpy_attention_grads,
    rand,
    to_numpy,
)

LENGTH = QUERY_BLOCK_SIZE + 5
assert LENGTH > 2 * BLOCK_SIZE


def numpy_t5_buckets(relative, num_buckets, max_distance):
    """T5's bidirectional buckets of `key - query` (Raffel et al. 2020)."""
    num_buckets //= 2
    buckets = (relative > 0) * num_buckets
    distance = np.abs(relative)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        large = max_exact + (
            np.log(np.maximum(distance, 1) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


def numpy_alibi(slopes, key_length):
    """`(H, 1, S)`: slope_h * (j - (S - 1)), as keras-hub's AlibiBias."""
    positions = np.arange(key_length) - (key_length - 1)
    return np.asarray(slopes)[:, None, None] * positions[None, None, :]


def band(length, window):
    positions = np.arange(length)
    return np.abs(positions[:, None] - positions[None, :]) < window


CASES = {
    # A user bias with a gradient, causal, soft-capped, one empty row.
    "bias+cap+causal": ("einsum", "blockwise"),
    # T5's learned bias (its table's gradient too) and a (T, S) bias,
    # windowed, padded keys.
    "t5+bias+window": ("einsum", "blockwise", "fused"),
    # ALiBi, causal and windowed, grouped key/value heads.
    "alibi+causal+window": ("einsum", "blockwise", "fused"),
}


@pytest.mark.parametrize(
    "case, implementation",
    [(case, impl) for case, impls in CASES.items() for impl in impls],
)
def test_features_match_oracle(case, implementation):
    rng = np.random.default_rng(11)
    batch, heads, kv_heads, depth = 2, 4, 4, 8
    if case.startswith("alibi"):
        kv_heads = 2
    query = rand(rng, batch, LENGTH, heads, depth)
    key, value = (rand(rng, batch, LENGTH, kv_heads, depth) for _ in "kv")
    upstream = rand(rng, batch, LENGTH, heads, depth)
    options = dict(implementation=implementation)
    oracle_mask = np.ones((batch, heads, LENGTH, LENGTH), bool)
    oracle_bias = np.zeros((batch, heads, LENGTH, LENGTH))
    soft_cap, is_causal = None, False
    extra = []  # differentiable inputs beyond q, k, v: (name, value)

    if case == "bias+cap+causal":
        is_causal, soft_cap = True, 3.0
        mask = rng.random((batch, 1, LENGTH, LENGTH)) > 0.2
        mask[1, 0, 7] = False  # a row with no key: zeros
        options.update(mask=mask, logit_soft_cap=soft_cap)
        oracle_mask &= mask
        extra.append(
            ("attention_bias", 2 * rand(rng, batch, 1, LENGTH, LENGTH))
        )
    elif case == "t5+bias+window":
        window, num_buckets, max_distance = 100, 8, 64
        # The last queries of sequence 1 see only padding in their window.
        valid = np.array([LENGTH, LENGTH - 110])
        mask = (np.arange(LENGTH) < valid[:, None])[:, None, None, :]
        options.update(mask=mask, sliding_window=window)
        oracle_mask &= mask & band(LENGTH, window)
        extra.append(("attention_bias", rand(rng, LENGTH, LENGTH)))
        extra.append(("table", rand(rng, num_buckets, heads)))
        positions = np.arange(LENGTH)
        buckets = numpy_t5_buckets(
            positions[None, :] - positions[:, None], num_buckets, max_distance
        )
    else:
        is_causal, window = True, 70
        options.update(position_bias=alibi_bias(heads), sliding_window=window)
        oracle_mask &= band(LENGTH, window)
        slopes = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]  # H = 4, max 8
        oracle_bias = oracle_bias + numpy_alibi(slopes, LENGTH)

    names = [name for name, _ in extra]

    def attend(q, k, v, *tensors):
        kwargs = dict(options)
        for name, tensor in zip(names, tensors):
            if name == "table":
                kwargs["position_bias"] = relative_position_bias(
                    tensor, max_distance=64
                )
            else:
                kwargs[name] = tensor
        return scaled_dot_product_attention(
            q, k, v, is_causal=is_causal, **kwargs
        )

    for name, tensor in extra:
        if name == "table":
            oracle_bias = oracle_bias + tensor.T[:, buckets]
        else:
            oracle_bias = oracle_bias + tensor
    args = (query, key, value, *(tensor for _, tensor in extra))
    want, _ = numpy_attention(
        query, key, value, oracle_mask, is_causal, None, oracle_bias, soft_cap
    )
    got = to_numpy(attend(*args))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    if case == "bias+cap+causal":
        np.testing.assert_array_equal(got[1, 7], 0.0)
    if case == "t5+bias+window":
        np.testing.assert_array_equal(got[1, -5:], 0.0)

    got_grads = grads(lambda *a: ops.multiply(attend(*a), upstream), *args)
    *want_grads, grad_logits = numpy_attention_grads(
        query,
        key,
        value,
        upstream,
        oracle_mask,
        is_causal,
        None,
        oracle_bias,
        soft_cap,
    )
    for name, tensor in extra:
        if name == "table":
            summed = grad_logits.sum(0)  # (H, T, S)
            want_grads.append(
                np.stack(
                    [
                        np.bincount(
                            buckets.ravel(),
                            summed[h].ravel(),
                            minlength=tensor.shape[0],
                        )
                        for h in range(heads)
                    ],
                    axis=1,
                )
            )
        else:
            axes = tuple(range(4 - tensor.ndim))
            summed = grad_logits.sum(axes)
            keep = [ax for ax in range(tensor.ndim) if tensor.shape[ax] == 1]
            want_grads.append(summed.sum(tuple(keep), keepdims=True))
    labels = ["query", "key", "value", *names]
    for label, got_grad, want_grad in zip(labels, got_grads, want_grads):
        assert np.all(np.isfinite(got_grad)), label
        np.testing.assert_allclose(
            got_grad, want_grad, atol=5e-5, rtol=1e-4, err_msg=label
        )
