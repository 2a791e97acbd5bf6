"""Checks of attention tensors and masks (Keras-style messages).

They raise `ValueError` for shapes and `TypeError` for dtypes, naming the
argument and the value received. Symbolic dims (None) always pass.
"""

import keras

from keras_selfattn.ops.positions import PositionBias


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


def check_mask(name, mask, expected_shape):
    """Raise unless `mask` is boolean/integer and fits `expected_shape`.

    Each dim of `mask` must be 1 or equal to the expected one (None in
    either means unknown and passes).

    Example:

    >>> import numpy as np
    >>> check_mask("padding_mask", np.ones((2, 1), bool), (2, 5))
    """
    _check_mask_dtype(name, mask)
    _check_mask_shape(name, mask, expected_shape)


def check_qkv(query, key, value):
    """Raise unless query/key/value are float `(B, L, H, D)` tensors that
    fit together (`scaled_dot_product_attention`'s layout)."""
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


def check_attention_mask(mask, query, key):
    """Raise unless `mask` (or None) fits `scaled_dot_product_attention`."""
    if mask is None:
        return
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


def check_bias(name, bias, expected_shape):
    """Raise unless `bias` is a float tensor that fits `expected_shape`
    (each dim 1 or equal; None passes).

    Example:

    >>> import numpy as np
    >>> check_bias("attention_bias", np.zeros((1, 5), "float32"), (3, 5))
    """
    check_float_input(name, bias)
    _check_mask_shape(name, bias, expected_shape)


def check_attention_bias(bias, query, key, name="attention_bias"):
    """Raise unless `bias` (or None) is a float tensor of rank 2 `(T, S)`
    or rank 4 broadcastable to `(B, H, T, S)`."""
    if bias is None:
        return
    batch, query_length, num_heads = query.shape[:3]
    key_length = key.shape[1]
    if len(bias.shape) == 2:
        check_bias(name, bias, (query_length, key_length))
    elif len(bias.shape) == 4:
        check_bias(name, bias, (batch, num_heads, query_length, key_length))
    else:
        raise ValueError(
            f"`{name}` must have rank 2 (T, S) or rank 4 (B, H, T, S). "
            f"Received: {name}.shape={tuple(bias.shape)}"
        )


def check_position_bias(position_bias):
    """Raise TypeError unless `position_bias` is None or a `PositionBias`."""
    if position_bias is not None and not isinstance(
        position_bias, PositionBias
    ):
        raise TypeError(
            "`position_bias` must be a PositionBias (see "
            "`keras_selfattn.ops.alibi_bias` and `relative_position_bias`) "
            f"or None. Received: position_bias={position_bias!r}"
        )


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
