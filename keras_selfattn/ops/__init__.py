"""Functional attention ops on `keras.ops` (all backends)."""

from keras_selfattn.ops.attention import causal_mask
from keras_selfattn.ops.attention import merge_masks
from keras_selfattn.ops.attention import padding_to_attention_mask
from keras_selfattn.ops.attention import scaled_dot_product_attention

__all__ = [
    "causal_mask",
    "merge_masks",
    "padding_to_attention_mask",
    "scaled_dot_product_attention",
]
