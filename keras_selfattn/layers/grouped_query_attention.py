"""GroupedQueryAttention: a drop-in for `keras.layers.GroupedQueryAttention`."""

import keras

from keras_selfattn._validation import check_positive_int
from keras_selfattn.layers.multi_head_attention import MultiHeadAttention

# `MultiHeadAttention` config keys that this layer names its own way or
# fixes (keras' GroupedQueryAttention has no value_dim, output_shape or
# attention_axes).
_RENAMED = {"num_heads": "num_query_heads", "key_dim": "head_dim"}
_FIXED = ("value_dim", "output_shape", "attention_axes")


@keras.saving.register_keras_serializable(package="keras_selfattn")
class GroupedQueryAttention(MultiHeadAttention):
    """Grouped-query attention with keras' `GroupedQueryAttention` arguments.

    `MultiHeadAttention` with `num_key_value_heads`, under the argument
    names, config and weight layout of keras 3.15's
    `keras.layers.GroupedQueryAttention` (query head `u` reads key/value
    head `u // (num_query_heads // num_key_value_heads)`), so keras'
    configs load and `set_weights(keras_layer.get_weights())` copies its
    weights. As keras, the `activity_regularizer` applies to every
    projection's output and to the layer's output. What
    `MultiHeadAttention` adds holds here too (`implementation=`, optional
    `value`, zeros for fully masked query rows).

    Args:
        head_dim: size of each query, key and value head.
        num_query_heads: number of query heads.
        num_key_value_heads: number of key/value heads; must divide
            `num_query_heads` (1: multi-query attention).
        dropout, use_bias, sliding_window, flash_attention,
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, activity_regularizer, kernel_constraint,
        bias_constraint, use_gate, seed, implementation: as in
            `MultiHeadAttention`.

    Call arguments, returns: as `MultiHeadAttention`; scores are
    `(B, num_query_heads, T, S)`.

    Example:

    >>> import numpy as np
    >>> layer = GroupedQueryAttention(
    ...     head_dim=4, num_query_heads=4, num_key_value_heads=2
    ... )
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> out, scores = layer(x, x, return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape)
    ((2, 5, 8), (2, 4, 5, 5))

    References:
        Ainslie et al., "GQA: Training Generalized Multi-Query Transformer
        Models from Multi-Head Checkpoints", 2023.
    """

    def __init__(
        self,
        head_dim,
        num_query_heads,
        num_key_value_heads,
        dropout=0.0,
        use_bias=True,
        sliding_window=None,
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        implementation="auto",
        **kwargs,
    ):
        query_heads = check_positive_int("num_query_heads", num_query_heads)
        kv_heads = check_positive_int(
            "num_key_value_heads", num_key_value_heads
        )
        if query_heads % kv_heads:
            raise ValueError(
                "`num_key_value_heads` must divide `num_query_heads`. "
                f"Received: num_query_heads={num_query_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        super().__init__(
            num_heads=query_heads,
            key_dim=check_positive_int("head_dim", head_dim),
            num_key_value_heads=kv_heads,
            dropout=dropout,
            use_bias=use_bias,
            sliding_window=sliding_window,
            flash_attention=flash_attention,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            use_gate=use_gate,
            seed=seed,
            implementation=implementation,
            **kwargs,
        )
        self.activity_regularizer = self.projection_activity_regularizer

    @property
    def head_dim(self):
        return self.key_dim

    @property
    def num_query_heads(self):
        return self.num_heads

    def get_config(self):
        config = super().get_config()
        for ours, theirs in _RENAMED.items():
            config[theirs] = config.pop(ours)
        for name in _FIXED:
            config.pop(name)
        return config
