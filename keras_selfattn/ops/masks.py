"""Boolean attention masks (True = may attend) and the masked-logit value."""

import keras
from keras import ops

# The finite float32 minimum: a masked logit never makes inf - inf, and
# logits stay float32, so it never overflows a half-precision dtype.
MASKED_LOGIT = float(-3.4028234663852886e38)


# The finite minimum of the half-precision dtypes, for logits kept in them.
_FINITE_MINIMUM = {"float16": -65504.0, "bfloat16": -3.3895313892515355e38}


def masked_logit(dtype):
    """The masked-logit value for logits of `dtype`: its finite minimum.

    Example:

    >>> masked_logit("float16")
    -65504.0
    """
    dtype = keras.backend.standardize_dtype(dtype)
    return _FINITE_MINIMUM.get(dtype, MASKED_LOGIT)


def index_range(count, dtype="int32"):
    """`0, 1, ..., count - 1`: `ops.arange(count)` for a count that is an
    int or known only at run time, in a form every exporter keeps.

    A count not known as an int counts ones instead, because jax2onnx's
    export of `arange` loses a symbolic size (and then fails to broadcast
    it against the input's own).

    Example:

    >>> from keras import ops
    >>> ops.convert_to_numpy(index_range(4)).tolist()
    [0, 1, 2, 3]
    """
    if isinstance(count, int):
        return ops.arange(0, count, dtype=dtype)
    return ops.cumsum(ops.ones((count,), dtype)) - ops.cast(1, dtype)


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
    rows = ops.expand_dims(index_range(query_length), -1)
    cols = ops.expand_dims(index_range(key_length), 0)
    return ops.greater_equal(rows, cols)


def sliding_window_mask(query_length, key_length, window):
    """Boolean `(query_length, key_length)` band: True where `|i - j| <
    window`, as `keras.layers.MultiHeadAttention(sliding_window=window)`.

    Example:

    >>> from keras import ops
    >>> ops.convert_to_numpy(sliding_window_mask(3, 3, 2)).astype(int).tolist()
    [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    """
    rows = ops.expand_dims(index_range(query_length), -1)
    cols = ops.expand_dims(index_range(key_length), 0)
    return ops.less(ops.abs(rows - cols), window)


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
    mask = ops.expand_dims(as_bool(key_padding_mask), 1)
    if query_padding_mask is not None:
        query = ops.expand_dims(as_bool(query_padding_mask), 2)
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
        mask = as_bool(mask)
        merged = mask if merged is None else ops.logical_and(merged, mask)
    return merged


def as_bool(mask):
    """`mask` as a boolean tensor (0/1 integers become False/True)."""
    if keras.backend.standardize_dtype(mask.dtype) == "bool":
        return mask
    return ops.cast(mask, "bool")


def zero_masked_rows(tensor, query_mask, query_axis):
    """Zero the query rows (along `query_axis`) where `query_mask` is False.

    `query_mask` is `(B, T)` or None; `tensor` has batch on axis 0 and the
    queries on `query_axis`.
    """
    if query_mask is None:
        return tensor
    mask = ops.cast(query_mask, "bool")
    for axis in range(1, len(tensor.shape)):
        if axis != query_axis:
            mask = ops.expand_dims(mask, axis)
    return ops.where(mask, tensor, ops.zeros_like(tensor))
