"""Functional attention ops on `keras.ops` (all backends).

`scaled_dot_product_attention` checks its inputs, then runs
`attention_core`, which trusts them; the `check_*` functions are the
checks, for callers (the layers) that validate their own inputs and then
call `attention_core` directly.
"""

from keras_selfattn.ops.attention import (
    BLOCK_SIZE,
    BLOCKWISE_MIN_LENGTH,
    IMPLEMENTATIONS,
    attention_core,
    check_implementation,
    choose_implementation,
    scaled_dot_product_attention,
)
from keras_selfattn.ops.checks import (
    check_attention_bias,
    check_bias,
    check_dtype,
    check_float_input,
    check_mask,
)
from keras_selfattn.ops.masks import (
    causal_mask,
    index_range,
    merge_masks,
    padding_to_attention_mask,
)
from keras_selfattn.ops.positions import (
    PositionBias,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    relative_position_bias,
    relative_position_buckets,
    rotary_cos_sin,
)

__all__ = [
    "BLOCK_SIZE",
    "BLOCKWISE_MIN_LENGTH",
    "IMPLEMENTATIONS",
    "PositionBias",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "attention_core",
    "causal_mask",
    "check_attention_bias",
    "check_bias",
    "check_dtype",
    "check_float_input",
    "check_implementation",
    "check_mask",
    "choose_implementation",
    "index_range",
    "merge_masks",
    "padding_to_attention_mask",
    "relative_position_bias",
    "relative_position_buckets",
    "rotary_cos_sin",
    "scaled_dot_product_attention",
]
