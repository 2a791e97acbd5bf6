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

from keras import ops

from keras_selfattn.ops.masks import index_range


def is_ring_cache(cache, sliding_window):
    """Whether `cache` is a ring: exactly `sliding_window` slots. (Until
    the text outgrows it, a ring holds what a linear cache would.)"""
    return sliding_window is not None and cache.shape[2] == sliding_window


def linear_positions(length):
    """The position each slot of a linear cache holds: `0 .. length-1`."""
    return index_range(length)


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


def write_linear(cache, keys, values, index):
    """Write `keys`, `values` `(B, T, kv_heads, D)` at positions `index ..
    index + T - 1` of a linear cache.

    Returns `(cache, keys, values, key_positions)`: the new cache and what
    the call attends over (every slot).
    """
    update = ops.stack([keys, values], axis=1)
    cache = ops.slice_update(cache, [0, 0, index, 0, 0], update)
    return cache, cache[:, 0], cache[:, 1], linear_positions(cache.shape[2])


def write_ring(cache, keys, values, index):
    """Write `keys`, `values` `(B, T, kv_heads, D)` at positions `index ..
    index + T - 1` of a ring cache.

    One new position (`T == 1`, decoding) replaces the slot of the position
    one window back, which no query of the call still sees, and the call
    attends over the `S` slots. Several (a prompt) are attended together
    with the slots written before, and the ring then keeps the latest `S`
    positions, so the first new queries still see the keys their own
    window holds.

    Returns `(cache, keys, values, key_positions)`.
    """
    length = cache.shape[2]
    update = ops.stack([keys, values], axis=1)
    if update.shape[2] == 1:
        slot = ops.mod(ops.cast(index, "int32"), length)
        cache = ops.slice_update(cache, [0, 0, slot, 0, 0], update)
        positions = ring_positions(length, ops.cast(index, "int32") + 1)
        return cache, cache[:, 0], cache[:, 1], positions
    count = ops.shape(update)[2]
    combined = ops.concatenate([cache, update], axis=2)
    positions = ops.concatenate(
        [ring_positions(length, index), index + index_range(count)], axis=0
    )
    kept = ring_positions(length, index + count)
    # Slot s keeps its old entry, or takes the new position it now holds.
    slots = index_range(length)
    source = ops.where(kept >= index, length + kept - index, slots)
    cache = ops.take(combined, source, axis=2)
    return cache, combined[:, 0], combined[:, 1], positions


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
