"""Small helpers shared by the layers (not public API)."""

import keras
from keras import ops

from keras_selfattn.ops.attention import check_dtype, check_mask, merge_masks


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


def self_attention_mask(inputs, padding_mask, attention_mask, implicit_mask):
    """Check and merge the masks of a self-attention call.

    `padding_mask` and `implicit_mask` (Keras' mask of `inputs`) are `(B, L)`
    key masks; `attention_mask` is `(B, L, L)`. Returns a boolean mask
    broadcastable to `(B, L, L)`, or None.
    """
    batch, length = inputs.shape[0], inputs.shape[1]
    if padding_mask is not None:
        check_mask("padding_mask", padding_mask, (batch, length))
    if attention_mask is not None:
        check_mask("attention_mask", attention_mask, (batch, length, length))
    key_mask = merge_masks(padding_mask, implicit_mask)
    if key_mask is not None:
        key_mask = ops.expand_dims(key_mask, 1)
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
