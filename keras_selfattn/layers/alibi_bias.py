"""AlibiBias: ALiBi's linear position bias, as keras-hub's layer."""

import keras
from keras import ops

from keras_selfattn._validation import check_positive_int
from keras_selfattn.ops.positions import alibi_bias


@keras.saving.register_keras_serializable(package="keras_selfattn")
class AlibiBias(keras.layers.Layer):
    """Adds ALiBi's bias (Press et al. 2021) to attention logits.

    The same argument, call and result as `keras_hub.layers.AlibiBias`:
    head `h` of `num_heads` adds `slope_h * (j - (S - 1))` to the logit of
    key `j`, the slopes a geometric sequence from `2 **
    (-alibi_bias_max / num_heads)`. Attention layers compute the same bias
    tile by tile with `position_bias="alibi"`.

    Args:
        alibi_bias_max: sets the slopes (see above).
        **kwargs: base layer arguments (`name`, `dtype`...).

    Call arguments:
        attention_scores: logits `(B, heads, T, S)`.

    Returns:
        The logits plus the bias, same shape.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> scores = np.zeros((1, 2, 3, 3), "float32")
    >>> ops.convert_to_numpy(AlibiBias()(scores))[0, 0, 0].tolist()
    [-0.125, -0.0625, 0.0]

    References:
        Press et al., "Train Short, Test Long: Attention with Linear Biases
        Enables Input Length Extrapolation", 2021.
    """

    def __init__(self, alibi_bias_max=8, **kwargs):
        super().__init__(**kwargs)
        self.alibi_bias_max = check_positive_int(
            "alibi_bias_max", alibi_bias_max
        )

    def position_bias(self, num_heads):
        """The bias as a `keras_selfattn.ops.PositionBias`."""
        return alibi_bias(num_heads, self.alibi_bias_max)

    def call(self, attention_scores):
        if len(attention_scores.shape) != 4:
            raise ValueError(
                "`attention_scores` must have shape (batch, heads, "
                "query_length, key_length). Received: "
                f"attention_scores.shape={tuple(attention_scores.shape)}"
            )
        shape = ops.shape(attention_scores)
        bias = self.position_bias(attention_scores.shape[1]).full(
            shape[2], shape[3]
        )
        bias = ops.cast(bias[None], attention_scores.dtype)
        return attention_scores + bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"alibi_bias_max": self.alibi_bias_max})
        return config
