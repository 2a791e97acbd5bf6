"""Functional attention ops on `keras.ops` (all backends)."""

from keras_selfattn.ops.attention import (
    causal_mask,
    merge_masks,
    padding_to_attention_mask,
    scaled_dot_product_attention,
)

__all__ = [
    "causal_mask",
    "merge_masks",
    "padding_to_attention_mask",
    "scaled_dot_product_attention",
]
