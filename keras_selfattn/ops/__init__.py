"""Functional attention ops on `keras.ops` (all backends)."""

from keras_selfattn.ops.attention import (
    IMPLEMENTATIONS,
    causal_mask,
    choose_implementation,
    merge_masks,
    padding_to_attention_mask,
    scaled_dot_product_attention,
)

__all__ = [
    "IMPLEMENTATIONS",
    "causal_mask",
    "choose_implementation",
    "merge_masks",
    "padding_to_attention_mask",
    "scaled_dot_product_attention",
]
