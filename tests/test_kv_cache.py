"""Key/value caches in the attention layers: keras-hub's contract, and
cached decoding equal to the full causal pass."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_selfattn as ksa
from keras_selfattn.ops.kv_cache import cache_mask, ring_positions
from tests.support import BACKEND, jit, rand, to_numpy

BATCH, LENGTH, WIDTH, HEADS, HEAD_DIM = 2, 11, 12, 3, 4
PROMPT = 5  # positions written by the first (prefill) call


def _cached_hub_layer():
    keras_hub = pytest.importorskip("keras_hub")
    hub = keras_hub.layers.CachedMultiHeadAttention(HEADS, HEAD_DIM)
    hub.build((BATCH, LENGTH, WIDTH), (BATCH, LENGTH, WIDTH))
    ours = ksa.MultiHeadAttention(HEADS, HEAD_DIM)
    ours.build((BATCH, LENGTH, WIDTH))
    ours.set_weights(hub.get_weights())
    return hub, ours


def test_cache_matches_keras_hub():
    """Prefill, a step, and a read-only call: outputs and caches equal
    keras-hub's with weights copied; `use_causal_mask` equals its mask."""
    hub, ours = _cached_hub_layer()
    x = rand(np.random.default_rng(0), BATCH, LENGTH, WIDTH)
    causal = np.tril(np.ones((LENGTH, LENGTH), bool))[None].repeat(BATCH, 0)
    cache = np.zeros((BATCH, 2, LENGTH, HEADS, HEAD_DIM), "float32")
    hub_cache = our_cache = cache
    for start, stop in ((0, PROMPT), (PROMPT, PROMPT + 1)):
        part, mask = x[:, start:stop], causal[:, start:stop]
        want, hub_cache = hub(
            part,
            part,
            attention_mask=mask,
            cache=hub_cache,
            cache_update_index=start,
        )
        got, our_cache = ours(
            part,
            attention_mask=mask,
            cache=our_cache,
            cache_update_index=start,
        )
        flagged, _ = ours(
            part,
            use_causal_mask=True,
            cache=our_cache,
            cache_update_index=start,
        )
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)
        np.testing.assert_allclose(to_numpy(flagged), to_numpy(want), atol=1e-5)
        np.testing.assert_allclose(
            to_numpy(our_cache), to_numpy(hub_cache), atol=1e-6
        )
    # Read only (cross-attention's use): the new inputs are ignored.
    query = x[:, :2]
    want, scores, same = hub(
        query, query, cache=hub_cache, return_attention_scores=True
    )
    got, our_scores, our_same = ours(
        query, cache=our_cache, return_attention_scores=True
    )
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(our_scores), to_numpy(scores), atol=1e-6
    )
    np.testing.assert_array_equal(to_numpy(our_same), to_numpy(our_cache))


OPTIONS = {
    "plain": {},
    "rotary": {"rotary_max_wavelength": 100},
    "alibi": {"position_bias": "alibi"},
    "t5": {"position_bias": "relative", "relative_num_buckets": 8},
    "window": {"sliding_window": 4},
    "soft_cap": {"logit_soft_cap": 2.0},
    "grouped_rotary_window": {
        "num_key_value_heads": 1,
        "rotary_max_wavelength": 50,
        "sliding_window": 3,
    },
}


def _decode(layer, x, slots, prompt=PROMPT):
    """Prefill `x[:, :prompt]` in one call, then one position a call;
    the outputs concatenated and the final cache."""
    kv_heads = layer.attention_config.kv_heads
    cache = ops.zeros((x.shape[0], 2, slots, kv_heads, HEAD_DIM))
    output, cache = layer(
        x[:, :prompt], use_causal_mask=True, cache=cache, cache_update_index=0
    )
    outputs = [to_numpy(output)]
    for position in range(prompt, x.shape[1]):
        output, cache = layer(
            x[:, position : position + 1],
            use_causal_mask=True,
            cache=cache,
            cache_update_index=position,
        )
        outputs.append(to_numpy(output))
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("name", OPTIONS)
def test_cached_decoding_equals_full_pass(name):
    """Every position scheme, window, soft cap and grouped heads: prefill
    + steps == one causal pass, with a full cache and (windows) a ring of
    `sliding_window` slots, also after the text outgrew the ring."""
    options = OPTIONS[name]
    layer = ksa.MultiHeadAttention(HEADS, HEAD_DIM, **options)
    x = rand(np.random.default_rng(1), BATCH, LENGTH, WIDTH)
    full = to_numpy(layer(x, use_causal_mask=True))
    window = options.get("sliding_window")
    for slots in {LENGTH, window or LENGTH}:
        got, cache = _decode(layer, x, slots)
        np.testing.assert_allclose(got, full, atol=1e-5, err_msg=f"{slots}")
        assert tuple(cache.shape) == (
            BATCH,
            2,
            slots,
            layer.attention_config.kv_heads,
            HEAD_DIM,
        )


@pytest.mark.parametrize("name", ["plain", "window", "grouped_rotary_window"])
def test_chunk_after_steps_equals_full_pass(name):
    """Prefill, single steps, then several positions in one call (their
    causal mask at an offset) on a linear cache longer than any window."""
    layer = ksa.MultiHeadAttention(HEADS, HEAD_DIM, **OPTIONS[name])
    x = rand(np.random.default_rng(4), BATCH, LENGTH, WIDTH)
    full = to_numpy(layer(x, use_causal_mask=True))
    kv_heads = layer.attention_config.kv_heads
    cache = ops.zeros((BATCH, 2, LENGTH + 3, kv_heads, HEAD_DIM))
    outputs = []
    for start, stop in ((0, 3), (3, 4), (4, 5), (5, LENGTH)):
        index = ops.convert_to_tensor(start, "int32") if start else start
        output, cache = layer(
            x[:, start:stop],
            use_causal_mask=True,
            cache=cache,
            cache_update_index=index,
        )
        outputs.append(to_numpy(output))
    got = np.concatenate(outputs, axis=1)
    np.testing.assert_allclose(got, full, atol=1e-5)


def test_ring_prefill_longer_than_window():
    """A prompt longer than the ring is attended whole, and the ring keeps
    its last `sliding_window` positions."""
    layer = ksa.GroupedQueryAttention(HEAD_DIM, HEADS, 1, sliding_window=3)
    x = rand(np.random.default_rng(2), BATCH, LENGTH, WIDTH)
    full = to_numpy(layer(x, x, use_causal_mask=True))
    got, _ = _decode(layer, x, slots=3, prompt=7)
    np.testing.assert_allclose(got, full, atol=1e-5)


def test_compiled_decoding_with_tensor_index():
    """A compiled step with the index as a tensor (one trace for every
    position) decodes as the full pass."""
    layer = ksa.MultiHeadAttention(HEADS, HEAD_DIM, **OPTIONS["t5"])
    x = rand(np.random.default_rng(3), 1, LENGTH, WIDTH)
    full = to_numpy(layer(x, use_causal_mask=True))

    def step(token, cache, index):
        return layer(
            token, use_causal_mask=True, cache=cache, cache_update_index=index
        )

    if BACKEND == "torch":
        compiled = step  # torch.compile of a layer call: minutes on CPU
    else:
        compiled = jit(step)
    cache = ops.zeros((1, 2, LENGTH, HEADS, HEAD_DIM))
    outputs = []
    for position in range(LENGTH):
        index = ops.convert_to_tensor(position, "int32")
        output, cache = compiled(x[:, position : position + 1], cache, index)
        outputs.append(to_numpy(output))
    np.testing.assert_allclose(np.concatenate(outputs, 1), full, atol=1e-5)


def test_which_calls_write_into_the_given_cache():
    """A step leaves the cache it is given as it was and returns a new
    one, except on torch with autograd off (as generation runs), where
    it writes into the given cache and returns that."""
    layer = ksa.MultiHeadAttention(HEADS, HEAD_DIM)
    x = rand(np.random.default_rng(4), BATCH, 1, WIDTH)
    cache = ops.convert_to_tensor(
        rand(np.random.default_rng(5), BATCH, 2, LENGTH, HEADS, HEAD_DIM)
    )
    before = to_numpy(cache).copy()
    _, written = layer(
        x, use_causal_mask=True, cache=cache, cache_update_index=3
    )
    np.testing.assert_array_equal(to_numpy(cache), before)
    assert not np.array_equal(to_numpy(written)[:, :, 3], before[:, :, 3])
    if BACKEND == "torch":
        import torch

        with torch.no_grad():
            _, same = layer(
                x, use_causal_mask=True, cache=cache, cache_update_index=3
            )
        assert same is cache
        np.testing.assert_array_equal(to_numpy(cache), to_numpy(written))


def test_cache_positions_and_mask():
    np.testing.assert_array_equal(to_numpy(ring_positions(3, 7)), [6, 4, 5])
    # Query 4 over a ring holding 3, 1, 2: position 1 is out of its window.
    mask = cache_mask(ops.arange(4, 5), ring_positions(3, 4), True, 3)
    np.testing.assert_array_equal(to_numpy(mask), [[1, 0, 1]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cache_update_index": 0}, "`cache_update_index` should not"),
        ({"cache": np.zeros((2, 2, 11, 3, 5), "float32")}, "`cache` must"),
        ({"cache": np.zeros((2, 11, 3, 4), "float32")}, "`cache` must"),
        (
            {
                "cache": np.zeros((2, 2, 11, 3, 4), "float32"),
                "cache_update_index": 9,
            },
            "leave room",
        ),
        (
            {
                "cache": np.zeros((2, 2, 11, 3, 4), "float32"),
                "cache_update_index": 1.5,
            },
            "`cache_update_index` must be None",
        ),
        (
            {
                "cache": np.zeros((2, 2, 11, 3, 4), "float32"),
                "value_mask": np.ones((2, 3), bool),
            },
            "`value_mask` is not supported",
        ),
        (
            {
                "cache": np.zeros((2, 2, 11, 3, 4), "float32"),
                "attention_mask": np.ones((2, 3, 5), bool),
            },
            "attention_mask",
        ),
    ],
)
def test_bad_cache_arguments(kwargs, message):
    layer = ksa.MultiHeadAttention(HEADS, HEAD_DIM)
    x = np.zeros((BATCH, 3, WIDTH), "float32")
    with pytest.raises(ValueError, match=message):
        layer(x, **kwargs)


def test_cache_in_a_functional_model():
    """Symbolic calls give `(output, cache)` shapes, so a decode step is a
    Keras model."""
    layer = ksa.MultiHeadAttention(HEADS, HEAD_DIM, num_key_value_heads=1)
    token = keras.Input((1, WIDTH), batch_size=1)
    cache = keras.Input((2, LENGTH, 1, HEAD_DIM), batch_size=1)
    index = keras.Input((), batch_size=None, dtype="int32")
    output, new_cache = layer(
        token, use_causal_mask=True, cache=cache, cache_update_index=index[0]
    )
    assert tuple(output.shape) == (1, 1, WIDTH)
    assert tuple(new_cache.shape) == (1, 2, LENGTH, 1, HEAD_DIM)
