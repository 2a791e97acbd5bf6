"""The attention implementations vs the NumPy oracle and each other.

Outputs and gradients over several key blocks (the last one padded, one
masked for every row and so skipped), padding and random masks, causal,
grouped heads, compiled and eager; the "auto" choice; the blockwise path's
memory.
"""

import numpy as np
import pytest
from support import BACKEND
from support import grads
from support import jit
from support import numpy_attention
from support import numpy_attention_grads
from support import to_numpy
from keras import ops

from keras_selfattn.ops.blockwise import BLOCK_SIZE
from keras_selfattn.ops.attention import BLOCKWISE_MIN_LENGTH
from keras_selfattn.ops.attention import choose_implementation
from keras_selfattn.ops import scaled_dot_product_attention

PATHS = ["einsum", "fused", "blockwise"]
# Three key blocks, the last one padded up to a whole block.
LONG = 2 * BLOCK_SIZE + 5


def long_case(mask_kind, seed=0):
    rng = np.random.default_rng(seed)
    batch, q_len, heads, kv_heads = 2, 9, 4, 2
    query = rng.standard_normal((batch, q_len, heads, 8)).astype("float32")
    key = rng.standard_normal((batch, LONG, kv_heads, 8)).astype("float32")
    value = rng.standard_normal((batch, LONG, kv_heads, 6)).astype("float32")
    if mask_kind == "padding":
        mask = np.ones((batch, 1, 1, LONG), bool)
        mask[1, ..., 100:] = False  # a short sequence
    else:
        mask = rng.random((batch, 1, q_len, LONG)) > 0.5
        mask[0, 0, 3, :] = False  # a query row with no key at all
    mask[..., BLOCK_SIZE : 2 * BLOCK_SIZE] = False  # masked for every row
    upstream = rng.standard_normal((batch, q_len, heads, 6))
    return query, key, value, mask, upstream.astype("float32")


def weighted_grads(attend, upstream, query, key, value):
    """Gradients of `sum(upstream * attend(q, k, v))` in q, k and v."""
    return grads(
        lambda q, k, v: ops.multiply(attend(q, k, v), upstream),
        query,
        key,
        value,
    )


def check_long_case(implementation, is_causal, mask_kind, seed=0):
    """One path's outputs and q, k, v gradients on `long_case` against the
    oracle's, with a scale of 0.3."""
    query, key, value, mask, upstream = long_case(mask_kind, seed)
    if is_causal:  # queries sit at the end, so causal masks many keys
        mask = mask.copy()
        mask[..., :300] = True

    def attend(q, k, v):
        return scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=is_causal,
            scale=0.3,
            implementation=implementation,
        )

    want, _ = numpy_attention(query, key, value, mask, is_causal, 0.3)
    got = to_numpy(attend(query, key, value))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    got_grads = weighted_grads(attend, upstream, query, key, value)
    want_grads = numpy_attention_grads(
        query, key, value, upstream, mask, is_causal, 0.3
    )
    for name, got_grad, want_grad in zip("qkv", got_grads, want_grads):
        np.testing.assert_allclose(
            got_grad, want_grad, atol=2e-5, rtol=1e-4, err_msg=name
        )
        assert np.any(got_grad != 0.0)


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", ["padding", "random"])
def test_long_outputs_and_gradients_match_oracle(
    implementation, is_causal, mask_kind
):
    check_long_case(implementation, is_causal, mask_kind)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", ["padding", "random"])
def test_long_sequence_tiles_match_oracle(monkeypatch, is_causal, mask_kind):
    # Long sequences run the blockwise path with key blocks of twice
    # BLOCK_SIZE and, without a band, blocks of query rows: here made to
    # apply at LONG keys, with query blocks of 4 rows (the last padded).
    from keras_selfattn.ops import blockwise

    monkeypatch.setattr(blockwise, "LARGE_BLOCKS_FROM_KEYS", LONG)
    monkeypatch.setattr(blockwise, "UNBANDED_QUERY_BLOCKS_FROM", 8)
    monkeypatch.setattr(blockwise, "UNBANDED_QUERY_BLOCK", 4)
    check_long_case("blockwise", is_causal, mask_kind, seed=7)


@pytest.mark.parametrize("implementation", PATHS)
def test_compiled_matches_eager(implementation):
    query, key, value, mask, _ = long_case("random", seed=1)

    def attend(q, k, v, m):
        return scaled_dot_product_attention(
            q, k, v, mask=m, implementation=implementation
        )

    eager = to_numpy(attend(query, key, value, mask))
    compiled = to_numpy(jit(attend)(query, key, value, mask))
    np.testing.assert_allclose(compiled, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["fused", "blockwise"])
def test_half_precision_long_sequences(implementation):
    query, key, value, mask, _ = long_case("padding", seed=2)
    for dtype in ("float16", "bfloat16"):
        inputs = [ops.cast(t, dtype) for t in (query, key, value)]
        out = scaled_dot_product_attention(
            *inputs, mask=mask, implementation=implementation
        )
        assert ops.dtype(out) == dtype
        want, _ = numpy_attention(*(to_numpy(t) for t in inputs), mask)
        np.testing.assert_allclose(to_numpy(out), want, atol=2e-2, rtol=2e-2)


def test_auto_choice_on_this_backend():
    long, short = BLOCKWISE_MIN_LENGTH, BLOCKWISE_MIN_LENGTH - 1
    for length in (short, long, None):
        assert choose_implementation("auto", length, True) == "einsum"
    # A JAX or torch length is unknown only under export, whose
    # converters need a path without loops.
    unknown = {"jax": "einsum", "torch": "fused"}.get(BACKEND, "blockwise")
    if BACKEND == "torch":
        expected = {short: "fused", long: "fused", None: "fused"}
    else:  # JAX (on a CPU) and TensorFlow
        expected = {short: "einsum", long: "blockwise", None: unknown}
    for length, implementation in expected.items():
        assert choose_implementation("auto", length, False) == implementation
    for implementation in PATHS:
        assert choose_implementation(implementation, 8, False) == implementation
    # A window leaves the fused kernel once the band is sparse; biases and
    # caps always do.
    narrow = dict(sliding_window=256)
    dense_band = "fused" if BACKEND == "torch" else "blockwise"
    assert choose_implementation("auto", 2048, False, **narrow) == dense_band
    assert choose_implementation("auto", 4096, False, **narrow) == "blockwise"
    choice = choose_implementation("auto", None, False, **narrow)
    assert choice == unknown
    tiled = choose_implementation("auto", long, False, tiled_features=True)
    assert tiled == "blockwise"
    tiled = choose_implementation("auto", None, False, tiled_features=True)
    assert tiled == ("blockwise" if BACKEND == "tensorflow" else "einsum")


@pytest.mark.parametrize("implementation", ["fused", "blockwise"])
@pytest.mark.parametrize(
    "kwargs", [{"dropout_rate": 0.1}, {"return_attention_scores": True}]
)
def test_explicit_implementation_is_never_swapped(implementation, kwargs):
    query, key, value, *_ = long_case("padding")
    with pytest.raises(ValueError, match=f"implementation='{implementation}'"):
        scaled_dot_product_attention(
            query, key, value, implementation=implementation, **kwargs
        )


def test_unknown_implementation_is_named():
    query, key, value, *_ = long_case("padding")
    with pytest.raises(ValueError, match="implementation='flash'"):
        scaled_dot_product_attention(query, key, value, implementation="flash")


@pytest.mark.skipif(BACKEND != "jax", reason="XLA memory analysis via JAX")
def test_blockwise_gradient_memory_grows_linearly():
    import jax
    import jax.numpy as jnp

    def temp_bytes(implementation, length):
        shape = jax.ShapeDtypeStruct((1, length, 4, 64), jnp.float32)

        def loss(q, k, v):
            out = scaled_dot_product_attention(
                q, k, v, implementation=implementation
            )
            return jnp.sum(out)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        compiled = grad.lower(shape, shape, shape).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    blockwise = [temp_bytes("blockwise", n) for n in (2048, 4096)]
    einsum_4096 = temp_bytes("einsum", 4096)
    score_matrix = 4 * 4096 * 4096 * 4  # one float32 (H, T, S) tensor
    tile = 4 * 4096 * BLOCK_SIZE * 4  # one float32 (H, T, block) tile
    assert blockwise[1] / blockwise[0] < 2.5  # linear, not quadratic
    assert blockwise[1] < 8 * tile < score_matrix
    assert einsum_4096 >= score_matrix  # the materialised path, for scale


@pytest.mark.skipif(BACKEND != "tensorflow", reason="dynamic graph shapes")
def test_blockwise_with_unknown_length_in_a_graph():
    # The key length is known only at run time: keys are padded up to a
    # whole block in-graph, and the padding masked, forward and backward.
    import tensorflow as tf

    spec = tf.TensorSpec((1, None, 2, 8), tf.float32)

    @tf.function(input_signature=[spec, spec, spec])
    def attend_and_grads(query, key, upstream):
        with tf.GradientTape() as tape:
            tape.watch([query, key])
            output = scaled_dot_product_attention(
                query, key, key, implementation="blockwise"
            )
            total = tf.reduce_sum(output * upstream)
        return output, tape.gradient(total, [query, key])

    rng = np.random.default_rng(3)
    for length in (7, 2 * BLOCK_SIZE + 3):
        query = rng.standard_normal((1, 5, 2, 8)).astype("float32")
        key = rng.standard_normal((1, length, 2, 8)).astype("float32")
        upstream = rng.standard_normal((1, 5, 2, 8)).astype("float32")
        output, (grad_query, grad_key) = attend_and_grads(query, key, upstream)
        want, _ = numpy_attention(query, key, key)
        np.testing.assert_allclose(to_numpy(output), want, atol=1e-5, rtol=1e-5)
        want_query, want_key, want_value = numpy_attention_grads(
            query, key, key, upstream
        )
        np.testing.assert_allclose(
            to_numpy(grad_query), want_query, atol=2e-5, rtol=1e-4
        )
        # The key tensor is also the value: its gradient is the sum.
        np.testing.assert_allclose(
            to_numpy(grad_key), want_key + want_value, atol=2e-5, rtol=1e-4
        )


@pytest.mark.parametrize("implementation", PATHS)
def test_sliding_window_matches_oracle(implementation):
    # Causal self-attention over three key blocks: the window moves across
    # them, so the blockwise path visits a range of blocks and masks the
    # band in each tile; the oracle gets the band as part of its mask.
    # (The window alone, against keras' layer: test_keras_compat.py.)
    is_causal = True
    rng = np.random.default_rng(5)
    query, key, value = (
        rng.standard_normal((2, LONG, heads, 8)).astype("float32")
        for heads in (4, 2, 2)
    )
    mask = rng.random((2, 1, LONG, LONG)) > 0.3
    window = 70
    positions = np.arange(LONG)
    band = np.abs(positions[:, None] - positions[None, :]) < window
    upstream = rng.standard_normal((2, LONG, 4, 8)).astype("float32")

    def attend(q, k, v):
        return scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=is_causal,
            sliding_window=window,
            implementation=implementation,
        )

    want, _ = numpy_attention(query, key, value, mask & band, is_causal)
    np.testing.assert_allclose(
        to_numpy(attend(query, key, value)), want, atol=1e-5, rtol=1e-5
    )
    got_grads = weighted_grads(attend, upstream, query, key, value)
    want_grads = numpy_attention_grads(
        query, key, value, upstream, mask & band, is_causal
    )
    for name, got_grad, want_grad in zip("qkv", got_grads, want_grads):
        np.testing.assert_allclose(
            got_grad, want_grad, atol=2e-5, rtol=1e-4, err_msg=name
        )


def key_gradients_of_every_path(query, key, value, mask, upstream):
    """Check every path's outputs and q, k, v gradients under `mask`
    against the oracle's; return each path's key gradient."""
    want, _ = numpy_attention(query, key, value, mask)
    want_grads = numpy_attention_grads(query, key, value, upstream, mask)
    key_grads = []
    for implementation in PATHS:

        def attend(q, k, v):
            return scaled_dot_product_attention(
                q, k, v, mask=mask, implementation=implementation
            )

        got = to_numpy(attend(query, key, value))
        np.testing.assert_allclose(
            got, want, atol=1e-5, rtol=1e-4, err_msg=implementation
        )
        got_grads = weighted_grads(attend, upstream, query, key, value)
        for got_grad, want_grad in zip(got_grads, want_grads):
            assert got_grad.shape == want_grad.shape
            np.testing.assert_allclose(
                got_grad, want_grad, atol=2e-5, err_msg=implementation
            )
        key_grads.append(got_grads[1])
    return key_grads


@pytest.mark.parametrize("visible", [300, 0])
def test_keys_no_query_can_see_are_exact(visible):
    # The fused path trims such a tail on eager torch; every path must give
    # the oracle's outputs and zero gradients for the hidden keys.
    query, key, value, _, upstream = long_case("padding", seed=4)
    mask = np.zeros((2, 1, 1, LONG), bool)
    mask[..., :visible] = True
    key_grads = key_gradients_of_every_path(query, key, value, mask, upstream)
    for key_grad in key_grads:
        assert np.all(key_grad[:, visible:] == 0)


@pytest.mark.parametrize("hides_inside", [False, True])
@pytest.mark.parametrize("second_row", [40, LONG - 3])
def test_rows_padded_to_different_lengths_are_exact(second_row, hides_inside):
    # The fused path on eager torch runs rows this different one call each
    # (40), rows this alike in one call (LONG - 3), each call up to its
    # last visible key and with no mask if the rest hides nothing; every
    # path must give the oracle's outputs and gradients.
    query, key, value, _, upstream = long_case("padding", seed=6)
    mask = np.zeros((2, 1, query.shape[1], LONG), bool)
    mask[0, ..., :LONG] = True
    mask[1, ..., :second_row] = True
    if hides_inside:
        mask[0, 0, 3, 7] = False  # one pair inside the first row's keys
        mask[1, 0, 2] = False  # a query of the second row sees no key
    key_grads = key_gradients_of_every_path(query, key, value, mask, upstream)
    for key_grad in key_grads:
        assert np.all(key_grad[1, second_row:] == 0)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's in-place fast path")
def test_in_place_writes_match_the_portable_twin(monkeypatch):
    # Two query blocks in a band, a bias with a gradient: every loop that
    # writes blocks (forward rows, backward key and query rows, the bias'
    # gradient) runs both ways and must agree exactly.
    from keras_selfattn.ops import blockwise

    rng = np.random.default_rng(5)
    length = blockwise.QUERY_BLOCK_SIZE + 44
    query, key, value, upstream = (
        rng.standard_normal((1, length, 2, 8)).astype("float32")
        for _ in range(4)
    )
    bias = rng.standard_normal((length, length)).astype("float32")

    def attend(q, k, v, b):
        output = scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            sliding_window=100,
            attention_bias=b,
            implementation="blockwise",
        )
        return ops.multiply(output, upstream)

    results = {}
    for in_place in (True, False):
        monkeypatch.setattr(blockwise, "WRITE_IN_PLACE", in_place)
        args = (query, key, value, bias)
        results[in_place] = [to_numpy(attend(*args))] + list(
            grads(attend, *args)
        )
    for fast, portable in zip(results[True], results[False]):
        np.testing.assert_array_equal(fast, portable)


@pytest.mark.parametrize(
    "length, heads, kv_heads", [(1, 8, 8), (3, 8, 2), (1, 9, 3), (2, 4, 1)]
)
def test_block_diagonal_products_equal_head_major(length, heads, kv_heads):
    """The products XLA runs for a few query rows (the keys and values as
    stored, a block-diagonal query) against NumPy, on every backend."""
    from keras_selfattn.ops import einsum

    rng = np.random.default_rng(7)
    query = rng.normal(size=(2, length, heads, 16)).astype("float32")
    key, value = rng.normal(size=(2, 2, 37, kv_heads, 16)).astype("float32")
    weights = rng.random((2, heads, length, 37)).astype("float32")
    groups = heads // kv_heads
    keys, values = (np.repeat(t, groups, axis=2) for t in (key, value))
    logits = einsum._logits_by_key_rows(query, key)
    np.testing.assert_allclose(
        to_numpy(logits),
        np.einsum("bthd,bshd->bhts", query, keys),
        atol=1e-5,
    )
    attended = einsum._attend_by_value_rows(weights, value)
    np.testing.assert_allclose(
        to_numpy(attended),
        np.einsum("bhts,bshd->bthd", weights, values),
        atol=1e-5,
    )
