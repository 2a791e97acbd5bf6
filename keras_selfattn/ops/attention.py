"""Scaled dot-product attention and mask helpers, written on `keras.ops`.

Layout follows `keras.ops.dot_product_attention`: query `(B, T, H, D)`,
key `(B, S, Hkv, D)`, value `(B, S, Hkv, Dv)`, output `(B, T, H, Dv)`.
Masks are boolean, True = may attend.

Semantics kept on every backend, eager and compiled:

- a query row whose keys are all masked gives exactly zeros, with finite
  (zero) gradients;
- softmax runs in float32 whatever the input dtype; the result is cast back
  to the value's dtype;
- grouped-query attention when `Hkv` divides `H` (query heads
  `g * (H // Hkv) ... (g + 1) * (H // Hkv) - 1` share key/value head `g`).
"""

import math

import keras
from keras import ops

from keras_selfattn._validation import check_rate

_SOFTMAX_DTYPE = "float32"
# Finite float32 minimum: masked logits never overflow the softmax dtype.
_MASKED_LOGIT = float(-3.4028234663852886e38)


def causal_mask(query_length, key_length=None):
    """Boolean `(query_length, key_length)` mask, True on/below the diagonal.

    Aligned top-left like `keras.layers.MultiHeadAttention`: query `i` may
    attend to keys `0..i`.

    Example:

    >>> from keras import ops
    >>> ops.convert_to_numpy(causal_mask(2, 3)).tolist()
    [[True, False, False], [True, True, False]]
    """
    key_length = query_length if key_length is None else key_length
    rows = ops.expand_dims(ops.arange(query_length, dtype="int32"), -1)
    cols = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
    return ops.greater_equal(rows, cols)


def padding_to_attention_mask(key_padding_mask, query_padding_mask=None):
    """Turn `(B, S)` padding masks into a `(B, T or 1, S)` attention mask.

    `key_padding_mask` marks the keys that exist; `query_padding_mask`, when
    given, also masks the rows of padded queries (their output is zeros).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> m = padding_to_attention_mask(np.array([[True, False]]))
    >>> ops.convert_to_numpy(m).tolist()
    [[[True, False]]]
    """
    mask = ops.expand_dims(_as_bool(key_padding_mask), 1)
    if query_padding_mask is not None:
        query = ops.expand_dims(_as_bool(query_padding_mask), 2)
        mask = ops.logical_and(mask, query)
    return mask


def merge_masks(*masks):
    """Logical AND of the masks that are not None (None if all are None).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> m = merge_masks(None, np.array([True, True]), np.array([True, False]))
    >>> ops.convert_to_numpy(m).tolist()
    [True, False]
    """
    merged = None
    for mask in masks:
        if mask is None:
            continue
        mask = _as_bool(mask)
        merged = mask if merged is None else ops.logical_and(merged, mask)
    return merged


def scaled_dot_product_attention(
    query,
    key,
    value,
    mask=None,
    is_causal=False,
    scale=None,
    dropout_rate=0.0,
    seed=None,
    return_attention_scores=False,
):
    """softmax(Q K^T * scale) V with boolean masks, in float32 softmax.

    Args:
        query: `(B, T, H, D)` float tensor.
        key: `(B, S, Hkv, D)` float tensor; `Hkv` must divide `H`.
        value: `(B, S, Hkv, Dv)` float tensor.
        mask: optional boolean (or 0/1 integer) tensor, True = may attend,
            of rank 2 `(T, S)` or rank 4, broadcastable to `(B, H, T, S)`.
        is_causal: if True, query `i` attends to keys `0..i` only.
        scale: logit scale; defaults to `1 / sqrt(D)`.
        dropout_rate: dropout on the attention probabilities, in [0, 1).
        seed: a `keras.random.SeedGenerator` or int for the dropout.
        return_attention_scores: also return the probabilities
            `(B, H, T, S)` (before dropout).

    Returns:
        `(B, T, H, Dv)`, and the probabilities if asked, in the value's dtype.
        Rows whose keys are all masked are exactly zero.

    Example:

    >>> import numpy as np
    >>> q = np.random.rand(2, 3, 4, 8).astype("float32")
    >>> kv = np.random.rand(2, 5, 2, 8).astype("float32")
    >>> out = scaled_dot_product_attention(q, kv, kv, is_causal=True)
    >>> tuple(out.shape)
    (2, 3, 4, 8)
    """
    _check_qkv(query, key, value)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    if mask is not None:
        _check_sdpa_mask(mask, query, key)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])

    if is_causal:
        mask = merge_masks(
            mask, causal_mask(ops.shape(query)[1], ops.shape(key)[1])
        )
    else:
        mask = merge_masks(mask)
    query = ops.multiply(query, ops.cast(scale, query.dtype))
    logits = _attention_logits(query, key)
    probs = _masked_softmax(logits, mask)
    weights = probs
    if dropout_rate > 0.0:
        weights = keras.random.dropout(weights, dropout_rate, seed=seed)
    output = _attend(ops.cast(weights, value.dtype), value)
    if return_attention_scores:
        return output, ops.cast(probs, value.dtype)
    return output


def _attention_logits(query, key):
    """Float32 logits `(B, H, T, S)`; grouped query heads share a key head.

    Query and key are widened to float32 first, so half-precision inputs
    get float32 products and sums (as fused kernels accumulate) and the
    logits are never rounded to 16 bits.
    """
    query = ops.cast(query, _SOFTMAX_DTYPE)
    key = ops.cast(key, _SOFTMAX_DTYPE)
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    if num_heads == num_kv_heads:
        logits = ops.einsum("bthd,bshd->bhts", query, key)
    else:
        groups = num_heads // num_kv_heads
        query = _split_heads(query, num_kv_heads, groups)
        logits = ops.einsum("btkgd,bskd->bkgts", query, key)
        logits = _merge_group_axes(logits, num_heads)
    return logits


def _masked_softmax(logits, mask):
    """Softmax over keys; masked entries and all-masked rows are zero."""
    if logits.shape[-1] == 1:
        probs = ops.ones_like(logits)  # one key: softmax is constant 1
    else:
        if mask is not None:
            logits = ops.where(mask, logits, _MASKED_LOGIT)
        probs = ops.softmax(logits, axis=-1)
    if mask is None:
        return probs
    return ops.where(mask, probs, ops.zeros_like(probs))


def _attend(weights, value):
    """Weights `(B, H, T, S)` x value `(B, S, Hkv, Dv)` -> `(B, T, H, Dv)`."""
    num_heads, num_kv_heads = weights.shape[1], value.shape[2]
    if num_heads == num_kv_heads:
        return ops.einsum("bhts,bshd->bthd", weights, value)
    groups = num_heads // num_kv_heads
    shape = ops.shape(weights)
    weights = ops.reshape(
        weights, (-1, num_kv_heads, groups, shape[2], shape[3])
    )
    output = ops.einsum("bkgts,bskd->btkgd", weights, value)
    shape = ops.shape(output)
    return ops.reshape(output, (-1, shape[1], num_heads, shape[4]))


def _split_heads(query, num_kv_heads, groups):
    shape = ops.shape(query)
    return ops.reshape(query, (-1, shape[1], num_kv_heads, groups, shape[3]))


def _merge_group_axes(logits, num_heads):
    shape = ops.shape(logits)
    return ops.reshape(logits, (-1, num_heads, shape[3], shape[4]))


def _as_bool(mask):
    if keras.backend.standardize_dtype(mask.dtype) == "bool":
        return mask
    return ops.cast(mask, "bool")


def _check_qkv(query, key, value):
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if len(tensor.shape) != 4:
            raise ValueError(
                f"`{name}` must have rank 4 (batch, length, heads, dim). "
                f"Received: {name}.shape={tuple(tensor.shape)}"
            )
        check_float_input(name, tensor)
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            "`query` and `key` must have the same last dimension. Received: "
            f"query.shape={tuple(query.shape)}, key.shape={tuple(key.shape)}"
        )
    if key.shape[1:3] != value.shape[1:3]:
        raise ValueError(
            "`key` and `value` must have the same length and number of heads. "
            f"Received: key.shape={tuple(key.shape)}, "
            f"value.shape={tuple(value.shape)}"
        )
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    if num_heads is None or num_kv_heads is None:
        raise ValueError(
            "The heads axis (axis 2) must be known statically. Received: "
            f"query.shape={tuple(query.shape)}, key.shape={tuple(key.shape)}"
        )
    if num_heads % num_kv_heads:
        raise ValueError(
            "The number of key/value heads must divide the number of query "
            f"heads. Received: query heads={num_heads}, "
            f"key/value heads={num_kv_heads}"
        )


def check_mask(name, mask, expected_shape):
    """Raise unless `mask` is boolean/integer and fits `expected_shape`.

    Each dim of `mask` must be 1 or equal to the expected one (None in
    either means unknown and passes).
    """
    _check_mask_dtype(name, mask)
    _check_mask_shape(name, mask, expected_shape)


def _check_mask_dtype(name, mask):
    check_dtype(
        name,
        mask,
        lambda dtype: dtype == "bool" or keras.backend.is_int_dtype(dtype),
        "a boolean (True = may attend) or integer tensor",
    )


def _check_mask_shape(name, mask, expected_shape):
    shape = tuple(mask.shape)
    expected_shape = tuple(expected_shape)
    if len(shape) != len(expected_shape):
        raise ValueError(
            f"`{name}` must have rank {len(expected_shape)}, shape "
            f"{_describe(expected_shape)}. Received: {name}.shape={shape}"
        )
    for got, want in zip(shape, expected_shape):
        if got is None or want is None or got == 1 or got == want:
            continue
        raise ValueError(
            f"`{name}` must have shape {_describe(expected_shape)} (or 1 on "
            f"broadcast axes). Received: {name}.shape={shape}"
        )


def _describe(shape):
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _check_sdpa_mask(mask, query, key):
    batch, query_length, num_heads = query.shape[:3]
    key_length = key.shape[1]
    if len(mask.shape) == 2:
        check_mask("mask", mask, (query_length, key_length))
    elif len(mask.shape) == 4:
        check_mask("mask", mask, (batch, num_heads, query_length, key_length))
    else:
        raise ValueError(
            "`mask` must have rank 2 (T, S) or rank 4 (B, H, T, S); for a "
            "(B, T, S) mask use `ops.expand_dims(mask, 1)`. "
            f"Received: mask.shape={tuple(mask.shape)}"
        )


def check_dtype(name, tensor, accepts, description):
    """Raise TypeError unless `accepts(dtype)` for `tensor`'s dtype."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if not accepts(dtype):
        raise TypeError(
            f"`{name}` must be {description}. Received: {name}.dtype={dtype}"
        )


def check_float_input(name, tensor):
    """Raise TypeError unless `tensor` has a floating-point dtype."""
    check_dtype(
        name, tensor, keras.backend.is_float_dtype, "a floating-point tensor"
    )
