"""Checks and merges of the layers' call inputs and masks (Keras-style
messages, at the public layer that received them)."""

import keras

from keras_selfattn.ops.checks import (
    check_bias,
    check_dtype,
    check_float_input,
    check_mask,
)
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
