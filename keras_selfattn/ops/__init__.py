"""Functional attention ops on `keras.ops` (all backends).

The public names (README, "Features" and "Positions, biases, soft caps
and windows"): `scaled_dot_product_attention`, the position biases it
takes (`alibi_bias`, `relative_position_bias`, `PositionBias`) and
`IMPLEMENTATIONS`, the paths it runs. The layers use the submodules'
helpers directly (`ops.attention.attention_core`, `ops.checks`,
`ops.masks`, `ops.positions`).
"""

from keras_selfattn.ops.attention import (
    IMPLEMENTATIONS,
    scaled_dot_product_attention,
)
from keras_selfattn.ops.positions import (
    PositionBias,
    alibi_bias,
    relative_position_bias,
)

__all__ = [
    "IMPLEMENTATIONS",
    "PositionBias",
    "alibi_bias",
    "relative_position_bias",
    "scaled_dot_product_attention",
]
