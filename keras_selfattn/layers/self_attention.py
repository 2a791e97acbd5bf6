"""SelfAttention: single-head self-attention over one sequence."""

import keras
from keras import ops

from keras_selfattn._validation import check_positive_int
from keras_selfattn.layers.attention_config import (
    AttentionConfig,
    forward_options,
)
from keras_selfattn.layers.call_inputs import check_self_attention_call
from keras_selfattn.layers.composite import CompositeLayer, clone_initializer
from keras_selfattn.ops.attention import AttentionProblem, attention_core


@keras.saving.register_keras_serializable(package="keras_selfattn")
@forward_options("dropout", "seed", "implementation")
class SelfAttention(CompositeLayer):
    """Single-head scaled dot-product self-attention.

    Without projections (the default) it has no weights:
    `softmax(x x^T / sqrt(d)) x`, the parameter-free form. With
    `use_projections=True` it learns `Q = x Wq`, `K = x Wk`, `V = x Wv`
    (each `units` wide) and returns `softmax(Q K^T / sqrt(units)) V`.

    Args:
        use_projections: learn Q/K/V projections.
        units: width of the projections; defaults to the input width. Only
            with `use_projections=True`.
        use_bias: whether the projections have biases.
        dropout: dropout rate on the attention probabilities, in [0, 1).
        kernel_initializer, bias_initializer: for the projections.
        seed: seed for the dropout.
        implementation: the attention kernel, as in `MultiHeadAttention`.

    Call arguments:
        inputs: `(B, L, d)` float tensor.
        padding_mask: boolean `(B, L)`, True for real tokens (keys that may be
            attended to). Defaults to the implicit Keras mask of `inputs`.
        attention_mask: boolean `(B, L, L)`, True = may attend.
        use_causal_mask: position `i` attends to `0..i` only.
        return_attention_scores: also return the `(B, L, L)` probabilities.
        training: enables dropout.

    Returns:
        `(B, L, units or d)`, carrying the input's mask; and the scores if
        asked. Rows with every key masked are zeros.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> out, scores = SelfAttention()(x, return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape)
    ((2, 5, 8), (2, 5, 5))
    >>> tuple(SelfAttention(use_projections=True, units=4)(x).shape)
    (2, 5, 4)

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
    """

    def __init__(
        self,
        use_projections=False,
        units=None,
        use_bias=True,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.use_projections = bool(use_projections)
        self.units = check_positive_int("units", units, allow_none=True)
        if self.units is not None and not self.use_projections:
            raise ValueError(
                "`units` needs `use_projections=True`; the parameter-free form "
                f"keeps the input width. Received: units={units}, "
                f"use_projections={use_projections}"
            )
        self.use_bias = bool(use_bias)
        self.attention_config = AttentionConfig(
            dropout=dropout, seed=seed, implementation=implementation
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape (batch, length, width) with a known "
                f"width. Received: inputs.shape={tuple(inputs_shape)}"
            )
        self.width = inputs_shape[-1]
        if not self.use_projections:
            return
        units = self.units or self.width
        for name in ("query", "key", "value"):
            dense = keras.layers.Dense(
                units,
                use_bias=self.use_bias,
                kernel_initializer=clone_initializer(self.kernel_initializer),
                bias_initializer=clone_initializer(self.bias_initializer),
                dtype=self.sublayer_dtype(name),
                name=name,
            )
            dense.build(inputs_shape)
            setattr(self, f"{name}_dense", dense)
        self.restore_sublayers()

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        mask=None,
    ):
        attention_mask = check_self_attention_call(
            inputs, self.width, padding_mask, attention_mask, mask
        )
        self.attention_config.check_call(return_attention_scores)
        if attention_mask is not None:
            attention_mask = ops.expand_dims(attention_mask, 1)

        if self.use_projections:
            query = self.query_dense(inputs)
            key = self.key_dense(inputs)
            value = self.value_dense(inputs)
        else:
            query = key = value = inputs
        query, key, value = (ops.expand_dims(t, 2) for t in (query, key, value))
        problem = AttentionProblem(
            query,
            key,
            value,
            mask=attention_mask,
            is_causal=use_causal_mask,
            scale=None,  # 1 / sqrt(width)
            seed=self.seed_generator,
            return_attention_scores=return_attention_scores,
            **self.attention_config.problem_options(training),
        )
        result = attention_core(problem, self.implementation)
        if return_attention_scores:
            output, scores = result
            return ops.squeeze(output, 2), ops.squeeze(scores, 1)
        return ops.squeeze(result, 2)

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask

    def compute_output_shape(self, inputs_shape):
        width = inputs_shape[-1]
        if self.use_projections and self.units:
            width = self.units
        return tuple(inputs_shape[:-1]) + (width,)

    def compute_output_spec(
        self, inputs, return_attention_scores=False, **kwargs
    ):
        output = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not return_attention_scores:
            return output
        length = inputs.shape[1]
        return output, keras.KerasTensor(
            (inputs.shape[0], length, length), dtype=self.compute_dtype
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_projections": self.use_projections,
                "units": self.units,
                "use_bias": self.use_bias,
                **self.initializers_config(),
                **self.attention_config.options(
                    "dropout", "seed", "implementation"
                ),
            }
        )
        return config
