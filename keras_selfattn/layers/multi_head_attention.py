"""MultiHeadAttention: a drop-in for `keras.layers.MultiHeadAttention`."""

import keras
from keras import ops

from keras_selfattn._validation import check_positive_int
from keras_selfattn.layers._common import (
    attend,
    check_width,
    clone_initializer,
    combine_masks,
    initializers_config,
    set_attention_options,
    zero_masked_rows,
)
from keras_selfattn.ops import (
    check_float_input,
    check_implementation,
    check_mask,
    merge_masks,
)


@keras.saving.register_keras_serializable(package="keras_selfattn")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head (and grouped-query) dot-product attention.

    Same call signature and weight layout as `keras.layers.MultiHeadAttention`
    for `(batch, length, width)` inputs, so weights copy across one to one.
    Differences: `value` may be omitted (self-attention); `output_dim` is an
    int (keras: `output_shape`); `num_key_value_heads < num_heads` gives
    grouped-query attention; query rows whose keys are all masked give zeros
    (keras: a uniform average); returned scores have shape
    `(batch, heads, T, S)` also symbolically in cross-attention.

    Args:
        num_heads: number of query heads.
        key_dim: size of each query/key head.
        value_dim: size of each value head; defaults to `key_dim`.
        output_dim: width of the output; defaults to the query's width.
        num_key_value_heads: number of key/value heads; must divide
            `num_heads`. Defaults to `num_heads`.
        dropout: dropout rate on the attention probabilities, in [0, 1).
        use_bias: whether the projections have biases.
        implementation: `"auto"`, `"einsum"`, `"fused"` or `"blockwise"`,
            the attention kernel (see `keras_selfattn.ops`); dropout > 0
            needs `"einsum"` or `"auto"`.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: for the four
            projections.
        seed: seed for the dropout.

    Call arguments:
        query: `(B, T, query_width)`.
        value: `(B, S, value_width)`; `None` means `query` (self-attention).
        key: `(B, S, key_width)`; defaults to `value`.
        query_mask, value_mask, key_mask: boolean `(B, T)` / `(B, S)` padding
            masks; Keras fills them from the inputs' implicit masks.
        attention_mask: boolean `(B, T, S)`, True = may attend.
        use_causal_mask: query `i` attends to keys `0..i` only.
        return_attention_scores: also return the probabilities.
        training: enables dropout.
        mask: the implicit mask of `query` when `value` is omitted (Keras
            fills it); same meaning as `query_mask`.

    Returns:
        `(B, T, output_dim)` in the compute dtype, and with
        `return_attention_scores=True` also the probabilities
        `(B, num_heads, T, S)`. The output carries the query's mask.

    Example:

    >>> import numpy as np
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(3, 5, 8).astype("float32")
    >>> y = np.random.rand(3, 7, 6).astype("float32")
    >>> out, scores = layer(x, y, return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape)
    ((3, 5, 8), (3, 2, 5, 7))

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
        Ainslie et al., "GQA", 2023.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        output_dim=None,
        num_key_value_heads=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.value_dim = check_positive_int(
            "value_dim", value_dim, allow_none=True
        )
        self.output_dim = check_positive_int(
            "output_dim", output_dim, allow_none=True
        )
        self.num_key_value_heads = check_positive_int(
            "num_key_value_heads", num_key_value_heads, allow_none=True
        )
        if self.num_heads % (self.num_key_value_heads or self.num_heads):
            raise ValueError(
                "`num_key_value_heads` must divide `num_heads`. Received: "
                f"num_heads={num_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        set_attention_options(self, dropout, seed, implementation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    @property
    def _value_head_dim(self):
        return self.value_dim or self.key_dim

    @property
    def _kv_heads(self):
        return self.num_key_value_heads or self.num_heads

    def _projection(self, name, heads, head_dim):
        dense = keras.layers.EinsumDense(
            "btd,dhk->bthk",
            output_shape=(None, heads, head_dim),
            bias_axes="hk" if self.use_bias else None,
            name=name,
            **self._sublayer_kwargs(),
        )
        # Inputs may carry Keras masks; the projection passes them through
        # (this layer reads them itself) instead of warning that it drops them.
        dense.supports_masking = True
        return dense

    def _sublayer_kwargs(self):
        return dict(
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
        )

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        for name, shape in (
            ("query", query_shape),
            ("value", value_shape),
            ("key", key_shape),
        ):
            if len(shape) != 3 or shape[-1] is None:
                raise ValueError(
                    f"`{name}` must have shape (batch, length, width) with a "
                    f"known width. Received: {name}.shape={tuple(shape)}"
                )
        self._input_widths = {
            "query": query_shape[-1],
            "value": value_shape[-1],
            "key": key_shape[-1],
        }
        self.query_dense = self._projection(
            "query", self.num_heads, self.key_dim
        )
        self.query_dense.build(query_shape)
        self.key_dense = self._projection("key", self._kv_heads, self.key_dim)
        self.key_dense.build(key_shape)
        self.value_dense = self._projection(
            "value", self._kv_heads, self._value_head_dim
        )
        self.value_dense.build(value_shape)
        self.output_dense = keras.layers.EinsumDense(
            "bthk,hko->bto",
            output_shape=(None, self.output_dim or query_shape[-1]),
            bias_axes="o" if self.use_bias else None,
            name="attention_output",
            **self._sublayer_kwargs(),
        )
        self.output_dense.build(
            (None, None, self.num_heads, self._value_head_dim)
        )

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        mask=None,
        _inputs_checked=False,
    ):
        self_attention = value is None
        value = query if value is None else value
        key = value if key is None else key
        # `_inputs_checked`: the caller (`TransformerEncoder`) checked the
        # tensors and masks and merged its masks into `attention_mask`.
        if not _inputs_checked:
            self._check_inputs(query, value, key)
            self._check_masks(
                query,
                value,
                query_mask=query_mask,
                value_mask=value_mask,
                key_mask=key_mask,
                attention_mask=attention_mask,
            )
            check_implementation(self.implementation, return_attention_scores)
        if self_attention:
            query_mask = merge_masks(query_mask, mask)
            value_mask = merge_masks(value_mask, query_mask)
        return self._attend(
            query,
            value,
            key,
            query_mask,
            combine_masks(attention_mask, value_mask, key_mask),
            use_causal_mask=use_causal_mask,
            return_attention_scores=return_attention_scores,
            training=training,
        )

    def _check_inputs(self, query, value, key):
        for name, tensor in (("query", query), ("value", value), ("key", key)):
            check_float_input(name, tensor)
            check_width(name, tensor, self._input_widths[name])
        if key.shape[1] is not None and value.shape[1] is not None:
            if key.shape[1] != value.shape[1]:
                raise ValueError(
                    "`key` and `value` must have the same length. Received: "
                    f"key.shape={tuple(key.shape)}, "
                    f"value.shape={tuple(value.shape)}"
                )

    def _check_masks(self, query, value, **masks):
        """Check the `(B, T)` query mask, `(B, S)` value/key masks and the
        `(B, T, S)` attention mask given in `masks` (None ones are skipped)."""
        batch, query_length = query.shape[0], query.shape[1]
        value_length = value.shape[1]
        shapes = {
            "query_mask": (batch, query_length),
            "value_mask": (batch, value_length),
            "key_mask": (batch, value_length),
            "attention_mask": (batch, query_length, value_length),
        }
        for name, mask in masks.items():
            if mask is not None:
                check_mask(name, mask, shapes[name])

    def _attend(
        self,
        query,
        value,
        key,
        query_mask,
        attention_mask,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        """The attention of checked inputs.

        `attention_mask` is the merged boolean mask of allowed keys,
        broadcastable to `(B, T, S)`, or None; `query_mask` `(B, T)` (or
        None) zeroes the rows of padded queries instead, so a padding mask
        stays `(B, 1, S)` and never grows to `(B, T, S)`.
        """
        if attention_mask is not None:
            attention_mask = ops.expand_dims(attention_mask, 1)
        result = attend(
            self,
            self.query_dense(query),
            self.key_dense(key),
            self.value_dense(value),
            attention_mask,
            use_causal_mask,
            1.0 / float(self.key_dim) ** 0.5,
            training,
            return_attention_scores,
        )
        # Padded queries attend to nothing: their rows are zeros.
        if return_attention_scores:
            output, scores = result
            output = zero_masked_rows(output, query_mask, query_axis=1)
            scores = zero_masked_rows(scores, query_mask, query_axis=2)
            return self.output_dense(output), scores
        return self.output_dense(
            zero_masked_rows(result, query_mask, query_axis=1)
        )

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask

    def compute_output_shape(
        self, query_shape, value_shape=None, key_shape=None
    ):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def compute_output_spec(
        self,
        query,
        value=None,
        key=None,
        return_attention_scores=False,
        **kwargs,
    ):
        output = keras.KerasTensor(
            self.compute_output_shape(query.shape), dtype=self.compute_dtype
        )
        if not return_attention_scores:
            return output
        value = query if value is None else value
        scores_shape = (
            query.shape[0],
            self.num_heads,
            query.shape[1],
            value.shape[1],
        )
        return output, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "output_dim": self.output_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                **initializers_config(self),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": keras.regularizers.serialize(
                    self.bias_regularizer
                ),
                "kernel_constraint": keras.constraints.serialize(
                    self.kernel_constraint
                ),
                "bias_constraint": keras.constraints.serialize(
                    self.bias_constraint
                ),
                "seed": self.seed,
                "implementation": self.implementation,
            }
        )
        return config
