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

import keras
from keras import ops

from keras_selfattn.ops.attention import (
    PATHS,
    AttentionProblem,
    decode_implementation,
    path_for,
)
from keras_selfattn.ops.einsum import einsum_in_parts
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
    """The positions of the keys a call attends over (see
    `cached_attention`): a read-only call (`index` None) the `length`
    slots (slot = position); a call writing `count` positions from
    `index`, the slots as they were, then the new positions. A slot
    about to be overwritten shows position -1 (hidden).

    Example:

    >>> from keras import ops
    >>> ops.convert_to_numpy(key_positions(4, 1, 2, ring=False)).tolist()
    [0, -1, -1, 3, 1, 2]
    >>> ops.convert_to_numpy(key_positions(3, 4, 1, ring=True)).tolist()
    [3, 1, 2, 4]
    """
    slots = index_range(length)
    if index is None:
        return slots
    index = ops.cast(index, "int32")
    if ring:
        old = ring_positions(length, index)
    else:
        rewritten = ops.logical_and(slots >= index, slots < index + count)
        old = ops.where(rewritten, -1, slots)
    return ops.concatenate([old, index + index_range(count)], axis=0)


def slot_mask_to_keys(mask, index, count):
    """A boolean mask `(..., T, S)` over a linear cache's slots as over
    the keys of `key_positions`: the slots, then the new positions'
    columns (slots `index .. index + count - 1`) again."""
    if index is None:
        return mask
    shape = ops.shape(mask)
    start = [0] * (len(mask.shape) - 1) + [index]
    new = ops.slice(mask, start, tuple(shape[:-1]) + (count,))
    return ops.concatenate([mask, new], axis=-1)


def write_cache(cache, keys, values, index, ring):
    """The cache with `keys`, `values` `(B, T, kv_heads, D)` written at
    positions `index .. index + T - 1`: a linear cache in slots
    `index...`; a ring position `p` in slot `p % S`, keeping the latest
    `S` positions when `T > S`."""
    update = ops.stack([keys, values], axis=1)
    if not ring:
        return _write_slots(cache, update, index)
    length = cache.shape[2]
    index = ops.cast(index, "int32")
    if update.shape[2] == 1:
        return _write_slots(cache, update, ops.mod(index, length))
    combined = ops.concatenate([cache, update], axis=2)
    kept = ring_positions(length, index + ops.shape(update)[2])
    # Slot s keeps its old entry, or takes the new position it now holds.
    source = ops.where(
        kept >= index, length + kept - index, index_range(length)
    )
    return ops.take(combined, source, axis=2)


def _write_slots(cache, update, index):
    """`cache` with `update` written at slots `index...` (axis 2)."""
    start, count = static_index(index), update.shape[2]
    if start is None or count is None:
        return ops.slice_update(cache, [0, 0, index, 0, 0], update)
    if writes_in_place(cache):
        cache[:, :, start : start + count] = update
        return cache
    # One copy, where `slice_update` may clone the cache and then write.
    before, after = cache[:, :, :start], cache[:, :, start + count :]
    return ops.concatenate([before, update, after], axis=2)


def writes_in_place(cache):
    """Whether a write goes into `cache` itself: an eager torch tensor
    with autograd off (`torch.no_grad()`, as generation runs), as Hugging
    Face's static cache is written. The step then reads the cache once
    instead of copying it; a caller that keeps the cache as it was must
    copy it first (`ops.copy`). With autograd on, or on JAX and
    TensorFlow (immutable tensors), the cache given is left as it was."""
    if keras.backend.backend() != "torch" or torch_compiling():
        return False
    import torch

    return not torch.is_grad_enabled() and not cache.requires_grad


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
    queries,
    keys,
    values,
    cache,
    index,
    ring,
    implementation,
    use_causal_mask=False,
    sliding_window=None,
    attention_mask=None,
    **problem,
):
    """Attend `queries` `(B, T, H, D)` over a cache and the positions the
    call adds; return `((output, probabilities or None), new cache)`.

    `keys`, `values` `(B, T', kv_heads, D)` are written at `index`
    (`write_cache`; `index` None: a read-only call, which attends over
    the cache alone and ignores them). A causal call writing a linear
    cache with no mask or bias over its slots (`_attends_written`)
    attends over the cache just written (`_write_and_attend`). Any other
    call attends over the cache's slots as they were and the new keys
    (positions: `key_positions`), in two parts (`einsum_in_parts`) or, on
    the other paths, concatenated (`"auto"`: `decode_implementation`'s
    path). The queries sit at positions `index...`; the mask comes from
    the positions (`cache_mask`) and `attention_mask` (`(B, T, S)` over a
    linear cache's slots). `problem` holds the other `AttentionProblem`
    fields (`attention_bias` over the keys of `key_positions`). The
    probabilities are over the cache's slots after the write (a ring
    taking several positions: its slots, then the new positions).
    """
    if _attends_written(index, ring, use_causal_mask, attention_mask, problem):
        return _write_and_attend(
            queries,
            keys,
            values,
            cache,
            index,
            implementation,
            sliding_window,
            **problem,
        )
    cached = (cache[:, 0], cache[:, 1])
    if index is not None:
        cache = write_cache(cache, keys, values, index, ring)
    result = _attend_cache(
        queries,
        keys,
        values,
        cached,
        index,
        ring,
        implementation,
        use_causal_mask,
        sliding_window,
        attention_mask,
        **problem,
    )
    return result, cache


def _attend_cache(
    queries,
    keys,
    values,
    cached,
    index,
    ring,
    implementation,
    use_causal_mask,
    sliding_window,
    attention_mask,
    **problem,
):
    implementation = decode_implementation(
        implementation, problem.get("flash_attention")
    )
    length = cached[0].shape[1]
    count = None if index is None else ops.shape(keys)[1]
    start = 0 if index is None else index
    query_length = ops.shape(queries)[1]
    mask = cache_mask(
        start + index_range(query_length),
        key_positions(length, index, count, ring),
        use_causal_mask,
        sliding_window,
    )[None, None]
    if attention_mask is not None:
        attention_mask = slot_mask_to_keys(attention_mask, index, count)
        mask = ops.logical_and(mask, attention_mask[:, None])
    if index is None:
        problem = AttentionProblem(queries, *cached, mask=mask, **problem)
        return PATHS[implementation].run(problem)
    if implementation == "einsum":
        problem = AttentionProblem(queries, keys, values, mask=mask, **problem)
        output, probabilities = einsum_in_parts(
            problem, (cached[0], keys), (cached[1], values)
        )
    else:
        keys = ops.concatenate([cached[0], keys], axis=1)
        values = ops.concatenate([cached[1], values], axis=1)
        problem = AttentionProblem(queries, keys, values, mask=mask, **problem)
        output, probabilities = PATHS[implementation].run(problem)
    if problem.return_attention_scores:
        probabilities = _probabilities_by_slot(
            probabilities, length, index, count, ring
        )
    return output, probabilities


def _attends_written(index, ring, use_causal_mask, attention_mask, problem):
    """Whether a call may attend over the cache just written
    (`_write_and_attend`): a causal call writing a linear cache, with no
    mask or bias over the slots and no probabilities to return by slot.
    Other calls (a read-only or non-causal one, a ring) take the general
    path."""
    return not (
        index is None
        or ring
        or not use_causal_mask
        or attention_mask is not None
        or problem.get("attention_bias") is not None
        or problem.get("return_attention_scores")
    )


def _write_and_attend(
    queries,
    keys,
    values,
    cache,
    index,
    implementation,
    sliding_window,
    **problem,
):
    """`((output, None), cache)` of a call `_attends_written` admits: the
    write, then `_attend_written` from the index, known now or traced."""
    cache = write_cache(cache, keys, values, index, ring=False)
    start = static_index(index)
    result = _attend_written(
        queries,
        keys,
        values,
        cache,
        index if start is None else start,
        implementation,
        sliding_window,
        problem,
    )
    return result, cache


def _attend_written(
    queries, keys, values, cache, start, implementation, sliding_window, problem
):
    """A causal call at `start` on a linear `cache` just written. Known
    now (an int), the queries attend over its slots up to their last
    position (a view, no copy), the positions a window hides left out;
    at 0 (a prefill) it is the full pass's attention over the new keys
    alone, on the path `implementation` picks for it (`path_for`). Traced,
    they attend over every slot, the later ones masked."""
    count = ops.shape(keys)[1]
    known = isinstance(start, int)
    if known and start == 0:
        problem = AttentionProblem(
            queries,
            keys,
            values,
            is_causal=True,
            sliding_window=sliding_window,
            **problem,
        )
        return PATHS[path_for(implementation, problem)].run(problem)
    end = start + count if known else ops.shape(cache)[2]
    first, mask = 0, None
    if known and count == 1 and sliding_window is not None:
        first = max(0, end - sliding_window)  # the window's keys only
    elif not known or count > 1 or sliding_window is not None:
        mask = cache_mask(
            start + index_range(count), index_range(end), True, sliding_window
        )
    problem = AttentionProblem(
        queries,
        cache[:, 0, first:end],
        cache[:, 1, first:end],
        mask=mask,
        **problem,
    )
    implementation = decode_implementation(
        implementation, problem.flash_attention
    )
    return PATHS[implementation].run(problem)


def _probabilities_by_slot(probabilities, length, index, count, ring):
    """Probabilities over (old slots, new positions) as over the slots
    after the write: a new position takes its slot, where the old entry
    was hidden (probability 0)."""
    if ring and count != 1:
        return probabilities
    old, new = probabilities[..., :length], probabilities[..., length:]
    start = ops.mod(ops.cast(index, "int32"), length) if ring else index
    return ops.slice_update(old, [0, 0, 0, start], new)
