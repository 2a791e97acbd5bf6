"""Checks and merges of the layers' call inputs and masks (Keras-style
messages, at the public layer that received them)."""

import keras

from keras_selfattn.ops.checks import (
    check_bias,
    check_dtype,
    check_float_input,
    check_mask,
)
from keras_selfattn.ops.kv_cache import is_ring_cache
from keras_selfattn.ops.masks import merge_masks, padding_to_attention_mask


def check_attention_bias(bias, query, value, num_heads):
    """Raise unless `bias` (or None) is a float `(T, S)`, `(B, T, S)` or
    `(B, heads, T, S)` tensor for 3-D `query`/`value` inputs."""
    if bias is None:
        return
    if len(query.shape) != 3:
        raise ValueError(
            "`attention_bias` needs 3-D inputs (batch, length, width). "
            f"Received: query.shape={tuple(query.shape)}"
        )
    batch, length, key_length = query.shape[0], query.shape[1], value.shape[1]
    expected = {
        2: (length, key_length),
        3: (batch, length, key_length),
        4: (batch, num_heads, length, key_length),
    }.get(len(bias.shape))
    if expected is None:
        raise ValueError(
            "`attention_bias` must have shape (T, S), (B, T, S) or "
            f"(B, heads, T, S). Received: attention_bias.shape="
            f"{tuple(bias.shape)}"
        )
    check_bias("attention_bias", bias, expected)


def check_self_attention_call(
    inputs, width, padding_mask, attention_mask, implicit_mask
):
    """Check a self-attention call's inputs; return its merged mask.

    `inputs` must be float `(B, L, width)`. `padding_mask` and
    `implicit_mask` (Keras' mask of `inputs`, trusted) are `(B, L)` key
    masks; `attention_mask` is `(B, L, L)`. Returns a boolean mask
    broadcastable to `(B, L, L)`, or None.
    """
    check_float_input("inputs", inputs)
    check_width("inputs", inputs, width)
    batch, length = inputs.shape[0], inputs.shape[1]
    if padding_mask is not None:
        check_mask("padding_mask", padding_mask, (batch, length))
    if attention_mask is not None:
        check_mask("attention_mask", attention_mask, (batch, length, length))
    return combine_masks(attention_mask, padding_mask, implicit_mask)


def combine_masks(attention_mask, *key_masks):
    """AND of a `(B, T, S)` attention mask and `(B, S)` key masks.

    Returns a boolean mask broadcastable to `(B, T, S)` (`(B, 1, S)` with
    key masks only), or None when every mask is None.
    """
    key_mask = merge_masks(*key_masks)
    if key_mask is not None:
        key_mask = padding_to_attention_mask(key_mask)
    return merge_masks(attention_mask, key_mask)


def check_int_input(name, tensor):
    """Raise TypeError unless `tensor` has an integer dtype (token ids)."""
    check_dtype(
        name,
        tensor,
        keras.backend.is_int_dtype,
        "an integer tensor of token ids",
    )


def check_width(name, tensor, width):
    """Raise ValueError unless `tensor` is rank 3 with last dim `width`."""
    shape = tuple(tensor.shape)
    if len(shape) != 3 or shape[-1] != width:
        raise ValueError(
            f"`{name}` must have shape (batch, length, {width}), as when the "
            f"layer was built. Received: {name}.shape={shape}"
        )


def check_cache_call(layer, query, cache, cache_update_index, **unsupported):
    """Raise unless an attention layer's call with a key/value `cache` fits
    keras-hub `CachedMultiHeadAttention`'s contract and the layer.

    `cache` must be float `(B, 2, S, kv_heads, key_dim)` (keys and values
    of one size) for 3-D inputs; `cache_update_index` None, an int in the
    cache or an integer scalar tensor; `attention_mask` (in
    `unsupported`, with the other arguments a cached call does not take)
    `(T, S)` or `(B, T, S)` over the slots of a linear cache.
    """
    if cache is None:
        raise ValueError(
            "`cache_update_index` should not be set if `cache` is `None`. "
            f"Received: cache=None, cache_update_index={cache_update_index}"
        )
    if len(query.shape) != 3 or layer.attention_axes not in (None, (1,), (-2,)):
        raise ValueError(
            "A key/value `cache` needs 3-D inputs (batch, length, width) and "
            "the default `attention_axes`. Received: "
            f"query.shape={tuple(query.shape)}, "
            f"attention_axes={layer.attention_axes}"
        )
    check_float_input("cache", cache)
    expected = (
        query.shape[0],
        2,
        cache.shape[2] if len(cache.shape) == 5 else None,
        layer.attention_config.kv_heads,
        layer.key_dim,
    )
    if layer.value_dim != layer.key_dim or not _fits(cache.shape, expected):
        raise ValueError(
            "`cache` must have shape (batch, 2, length, num_key_value_heads, "
            f"key_dim) = {expected}, keys and values of one size "
            f"(value_dim={layer.value_dim}, key_dim={layer.key_dim}). "
            f"Received: cache.shape={tuple(cache.shape)}"
        )
    _check_cache_index(cache_update_index, cache, query, layer.sliding_window)
    attention_mask = unsupported.pop("attention_mask")
    for name, value in unsupported.items():
        if value is not None:
            raise ValueError(
                f"`{name}` is not supported with a `cache`: mask keys "
                "through `attention_mask` (batch, length, cache length). "
                f"Received: {name} of shape {tuple(value.shape)}"
            )
    if attention_mask is None:
        return
    if is_ring_cache(cache, layer.sliding_window):
        raise ValueError(
            "`attention_mask` is not supported with a ring cache (one of "
            "`sliding_window` slots), whose slots hold changing positions. "
            f"Received: attention_mask of shape {tuple(attention_mask.shape)}"
        )
    length = query.shape[1]
    expected = (
        (length, cache.shape[2])
        if len(attention_mask.shape) == 2
        else (query.shape[0], length, cache.shape[2])
    )
    check_mask("attention_mask", attention_mask, expected)


def _check_cache_index(index, cache, query, sliding_window):
    """Raise unless `index` is None, a non-negative int that leaves room
    for the new positions of a linear cache, or an integer scalar
    tensor."""
    if index is None:
        return
    if isinstance(index, bool) or not isinstance(index, int):
        if not hasattr(index, "shape") or len(index.shape) != 0:
            raise ValueError(
                "`cache_update_index` must be None, an int or an integer "
                f"scalar tensor. Received: cache_update_index={index!r}"
            )
        check_dtype(
            "cache_update_index",
            index,
            keras.backend.is_int_dtype,
            "an integer scalar",
        )
        return
    length, room = query.shape[1], cache.shape[2]
    ring = is_ring_cache(cache, sliding_window)
    if index < 0 or (not ring and length is not None and index + length > room):
        raise ValueError(
            "`cache_update_index` must be >= 0 and leave room in the cache "
            f"for the {length} new positions. Received: "
            f"cache_update_index={index}, cache of {room} positions"
        )


def _fits(shape, expected):
    return len(shape) == len(expected) and all(
        None in (have, want) or have == want
        for have, want in zip(shape, expected)
    )
