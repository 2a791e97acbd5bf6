"""Key/value caches for decoding, in keras-hub's layout.

A layer's cache is one tensor `(B, 2, S, kv_heads, head_dim)`: keys in
`[:, 0]`, values in `[:, 1]`, as `keras_hub.layers.CachedMultiHeadAttention`
keeps them. Two kinds, told apart by the caller:

- linear: slot `p` holds position `p`; a call writes its `T` new keys and
  values at `cache_update_index` and attends over all `S` slots;
- ring (a sliding window of `S` positions): position `p` lives in slot
  `p % S`, so the cache stays `S` slots long however long the text.

Every function returns the positions of the keys it hands out, so the
mask, the window and the position biases of a cached call come from
absolute positions (`cache_mask`), exactly as in the full pass.
"""

import functools

import keras
from keras import ops

from keras_selfattn.ops.attention import PATHS, AttentionProblem
from keras_selfattn.ops.fused import torch_compiling
from keras_selfattn.ops.masks import index_range


def is_ring_cache(cache, sliding_window):
    """Whether `cache` is a ring: exactly `sliding_window` slots. (Until
    the text outgrows it, a ring holds what a linear cache would.)"""
    return sliding_window is not None and cache.shape[2] == sliding_window


def ring_positions(length, next_position):
    """The position each slot of a `length`-slot ring holds once the
    positions before `next_position` are written: the latest `p <
    next_position` with `p % length == slot`; negative for a slot never
    written.

    Example:

    >>> from keras import ops
    >>> ops.convert_to_numpy(ring_positions(4, 6)).tolist()
    [4, 5, 2, 3]
    >>> ops.convert_to_numpy(ring_positions(4, 1)).tolist()
    [0, -3, -2, -1]
    """
    last = ops.cast(next_position, "int32") - 1
    return last - ops.mod(last - index_range(length), length)


def key_positions(length, index, count, ring):
    """The positions of the keys a call attends over when it writes
    `count` positions from `index` into a cache of `length` slots (see
    `write_cache`); `index` None: a read-only call (slot = position)."""
    if index is None or not ring:
        return index_range(length)
    index = ops.cast(index, "int32")
    if count == 1:
        return ring_positions(length, index + 1)
    return ops.concatenate(
        [ring_positions(length, index), index + index_range(count)], axis=0
    )


def write_cache(cache, keys, values, index, ring):
    """Write `keys`, `values` `(B, T, kv_heads, D)` at positions `index ..
    index + T - 1`; return the new cache and the keys and values the call
    attends over, whose positions `key_positions` gives.

    A linear cache writes slots `index...` and the call attends over all
    its slots. A ring writes position `p` in slot `p % S`: one new
    position (decoding) replaces the one a window back, which no query of
    the call still sees, and the call attends over the `S` slots; several
    (a prompt) are attended together with the slots written before, and
    the ring then keeps the latest `S` positions, so that the first new
    queries still see the keys in their own window.
    """
    update = ops.stack([keys, values], axis=1)
    count = update.shape[2]
    if not ring:
        cache = _write_slots(cache, update, index)
        return cache, cache[:, 0], cache[:, 1]
    length = cache.shape[2]
    index = ops.cast(index, "int32")
    if count == 1:
        cache = _write_slots(cache, update, ops.mod(index, length))
        return cache, cache[:, 0], cache[:, 1]
    combined = ops.concatenate([cache, update], axis=2)
    kept = ring_positions(length, index + ops.shape(update)[2])
    # Slot s keeps its old entry, or takes the new position it now holds.
    source = ops.where(
        kept >= index, length + kept - index, index_range(length)
    )
    return ops.take(combined, source, axis=2), combined[:, 0], combined[:, 1]


def _write_slots(cache, update, index):
    """`cache` with `update` written at slots `index...` (axis 2)."""
    start, count = static_index(index), update.shape[2]
    if start is None or count is None:
        return ops.slice_update(cache, [0, 0, index, 0, 0], update)
    # One copy, where `slice_update` may clone the cache and then write.
    before, after = cache[:, :, :start], cache[:, :, start + count :]
    return ops.concatenate([before, update, after], axis=2)


def static_index(index):
    """`index` as a Python int where its value is known now (an int, or
    an eager torch tensor), else None (a traced tensor)."""
    if isinstance(index, int):
        return index
    if keras.backend.backend() == "torch" and not torch_compiling():
        return int(index)
    return None


def cache_mask(query_positions, key_positions, causal, window=None):
    """Boolean `(T, S)`: which keys each query of a cached call may see.

    A key with a negative position (an unwritten ring slot) is hidden;
    with `causal`, keys after the query; with a `window`, keys `window` or
    more positions away (before the query only, when causal).

    Example:

    >>> from keras import ops
    >>> mask = cache_mask(ops.arange(2, 4), ops.arange(4), True, window=2)
    >>> ops.convert_to_numpy(mask).astype(int).tolist()
    [[0, 1, 1, 0], [0, 0, 1, 1]]
    """
    rows = ops.cast(query_positions, "int32")[:, None]
    cols = ops.cast(key_positions, "int32")[None, :]
    mask = ops.greater_equal(cols, 0)
    if causal:
        mask = ops.logical_and(mask, ops.less_equal(cols, rows))
    if window is not None:
        mask = ops.logical_and(mask, ops.less(ops.abs(rows - cols), window))
    return mask


def cached_attention(
    queries, keys, values, cache, index, ring, implementation, **problem
):
    """Write `keys`, `values` into `cache` (`write_cache`), then attend
    `queries` over what the call sees: `((output, probabilities or None),
    cache)`. `problem` holds the other `AttentionProblem` fields (`mask`
    and `attention_bias` from absolute positions).

    Backend fast path: called eagerly on JAX or TensorFlow (and without
    attention dropout), it runs as one compiled function (`jax.jit`,
    `tf.function(jit_compile=True)`), not as a few dozen eager ops each
    copying the cache; its portable twin is the same function called
    as it is, as every other case (torch, traced, dropout) does.
    """
    run = _attend_cache
    if not problem.get("dropout_rate") and _eager(queries):
        run = _compiled(keras.backend.backend())
        # No dropout: no seed generator in the trace; one trace for every
        # position.
        problem.pop("seed", None)
        problem.pop("dropout_rate", None)
        if index is not None:
            index = ops.convert_to_tensor(index, "int32")
    return run(
        queries, keys, values, cache, index, ring, implementation, **problem
    )


def _attend_cache(
    queries, keys, values, cache, index, ring, implementation, **problem
):
    if index is not None:
        cache, keys, values = write_cache(cache, keys, values, index, ring)
    else:
        keys, values = cache[:, 0], cache[:, 1]
    problem = AttentionProblem(queries, keys, values, **problem)
    output, probabilities = PATHS[implementation].run(problem)
    if not problem.return_attention_scores:
        probabilities = None
    return (output, probabilities), cache


def _eager(tensor):
    """Whether `tensor` is a concrete JAX or eager TensorFlow value."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    return False


@functools.cache
def _compiled(backend):
    """`_attend_cache` compiled with `backend`'s XLA compiler."""
    static = ("ring", "implementation", "scale", "logit_soft_cap")
    static += ("return_attention_scores", "flash_attention", "sliding_window")
    if backend == "jax":
        import jax

        return jax.jit(_attend_cache, static_argnames=static)
    import tensorflow as tf

    return tf.function(_attend_cache, jit_compile=True)
