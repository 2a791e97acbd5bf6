"""Small helpers shared by the layers (not public API)."""

from keras import ops

from keras_selfattn.ops.attention import check_mask
from keras_selfattn.ops.attention import merge_masks


def clone_initializer(initializer):
    """A fresh copy, so sublayers never share one stateless initializer."""
    return initializer.__class__.from_config(initializer.get_config())


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
