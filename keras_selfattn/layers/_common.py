"""Small helpers shared by the layers (not public API)."""

import keras
from keras import ops

from keras_selfattn.ops import (
    check_dtype,
    check_float_input,
    check_mask,
    merge_masks,
    padding_to_attention_mask,
)


def clone_initializer(initializer):
    """A fresh copy, so sublayers never share one stateless initializer."""
    return initializer.__class__.from_config(initializer.get_config())


def initializers_config(layer):
    """The `kernel_initializer`/`bias_initializer` entries of a config."""
    return {
        "kernel_initializer": keras.initializers.serialize(
            layer.kernel_initializer
        ),
        "bias_initializer": keras.initializers.serialize(
            layer.bias_initializer
        ),
    }


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
