"""TransformerEncoder: self-attention + feed-forward block, post- or pre-LN."""

import warnings

import keras

from keras_selfattn.layers._transformer_block import (
    ATTENTION_OPTIONS,
    TransformerBlock,
    block_arguments,
)
from keras_selfattn.layers.attention_config import forward_options
from keras_selfattn.layers.call_inputs import check_self_attention_call
from keras_selfattn.layers.composite import clone_initializer
from keras_selfattn.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_selfattn")
@forward_options(*ATTENTION_OPTIONS)
class TransformerEncoder(TransformerBlock):
    """One Transformer encoder block (Vaswani et al. 2017).

    `x + Dropout(MHA(x))` then `x + Dropout(FFN(x))`, each followed by
    LayerNorm (post-LN, `normalize_first=False`, as in the paper and BERT)
    or preceded by it (pre-LN). The width is taken from the input; heads
    split it evenly. The arguments keras-hub's `TransformerEncoder` takes
    come in its order, with its names and defaults, and its sublayers'
    names, shapes and order match: its configs load, and
    `set_weights(hub_layer.get_weights())` copies its weights.

    Args:
        intermediate_dim: hidden size of the feed-forward network.
        num_heads: attention heads; must divide the input width.
        dropout: dropout rate in [0, 1) for both residual branches, and for
            the attention probabilities unless `attention_dropout` is given.
        attention_dropout: dropout rate on the attention probabilities;
            defaults to `dropout` (keras-hub's behaviour). 0 lets the fused
            and blockwise kernels run in training too.
        activation: feed-forward activation (name or callable).
        layer_norm_epsilon: epsilon of both LayerNorms.
        kernel_initializer, bias_initializer: for every dense sublayer.
        normalize_first: pre-LN if True, post-LN if False (`norm_first`,
            its name in version 0.1.0, is taken too).
        num_key_value_heads: grouped-query attention (see
            `MultiHeadAttention`); defaults to `num_heads`.
        seed: seed for the dropouts.
        implementation: the attention kernel, as in `MultiHeadAttention`.
        sliding_window, logit_soft_cap, rotary_max_wavelength,
        rotary_scaling_factor, position_bias, alibi_bias_max,
        relative_num_buckets, relative_max_distance: the attention's
            window, soft cap and positions, as in `MultiHeadAttention`.

    Call arguments:
        inputs: `(B, L, width)` float tensor.
        padding_mask: boolean `(B, L)`, True for real tokens. Defaults to the
            implicit Keras mask of `inputs` (e.g. from `mask_zero=True`).
        attention_mask: boolean `(B, L, L)`, True = may attend.
        attention_bias: float added to the attention logits, `(L, L)`,
            `(B, L, L)` or `(B, heads, L, L)`.
        training: enables dropout.
        return_attention_scores: also return `(B, heads, L, L)` scores.

    Returns:
        `(B, L, width)`, carrying the input's mask.

    Example:

    >>> import numpy as np
    >>> encoder = TransformerEncoder(intermediate_dim=16, num_heads=2)
    >>> x = np.random.rand(3, 5, 8).astype("float32")
    >>> tuple(encoder(x, padding_mask=np.array([[1] * 5] * 3)).shape)
    (3, 5, 8)

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
        Xiong et al., "On Layer Normalization in the Transformer
        Architecture", 2020 (pre-LN).
    """

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout=0.0,
        activation="relu",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        normalize_first=False,
        num_key_value_heads=None,
        seed=None,
        attention_dropout=None,
        implementation="auto",
        sliding_window=None,
        logit_soft_cap=None,
        rotary_max_wavelength=None,
        rotary_scaling_factor=1.0,
        position_bias=None,
        alibi_bias_max=8,
        relative_num_buckets=32,
        relative_max_distance=128,
        normalization="layer_norm",
        gated_feedforward=False,
        use_bias=True,
        **kwargs,
    ):
        # Version 0.1.0's name for `normalize_first`; its files use it.
        if "norm_first" in kwargs:
            normalize_first = bool(kwargs.pop("norm_first")) or normalize_first
        arguments = block_arguments(locals())
        super().__init__(**arguments, **kwargs)
        if self.intermediate_dim < self.num_heads:
            # Version 0.1.0 took `(num_heads, intermediate_dim)`.
            warnings.warn(
                "TransformerEncoder takes `intermediate_dim` first, then "
                "`num_heads` (keras-hub's order); a feed-forward width below "
                "the number of heads suggests the two are swapped. Received: "
                f"intermediate_dim={self.intermediate_dim}, "
                f"num_heads={self.num_heads}",
                stacklevel=2,
            )

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        if len(inputs_shape) != 3 or width is None:
            raise ValueError(
                "`inputs` must have shape (batch, length, width) with a known "
                f"width. Received: inputs.shape={tuple(inputs_shape)}"
            )
        if width % self.num_heads:
            raise ValueError(
                "The input width must be divisible by `num_heads`. Received: "
                f"width={width}, num_heads={self.num_heads}"
            )
        self.width = width
        self.self_attention = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=width // self.num_heads,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            attention_config=self.attention_config,
            dtype=self.dtype_policy,
            name="self_attention",
        )
        self.self_attention.build(inputs_shape)
        self.self_attention_layer_norm = self._norm(
            "self_attention_layer_norm", inputs_shape
        )
        self.self_attention_dropout = self._dropout("self_attention_dropout")
        # keras-hub's encoder builds this norm before the feed-forward
        # network: the same weight order.
        self.feedforward_layer_norm = self._norm(
            "feedforward_layer_norm", inputs_shape
        )
        self._build_feedforward(inputs_shape)
        self.feedforward_dropout = self._dropout("feedforward_dropout")
        self.restore_sublayers()

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        attention_bias=None,
        mask=None,
    ):
        attention_mask = check_self_attention_call(
            inputs, self.width, padding_mask, attention_mask, mask
        )

        residual = inputs
        x = (
            self.self_attention_layer_norm(inputs)
            if self.normalize_first
            else inputs
        )
        # The masks merged above. Called through `__call__`: Keras hands it
        # the implicit mask of `x` even when masks are passed here too (this
        # call then gets none).
        x = self.self_attention(
            x,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            attention_bias=attention_bias,
        )
        if return_attention_scores:
            x, scores = x
        x = residual + self._drop(self.self_attention_dropout, x, training)
        if not self.normalize_first:
            x = self.self_attention_layer_norm(x)

        residual = x
        if self.normalize_first:
            x = self.feedforward_layer_norm(x)
        x = self._feedforward(x)
        x = residual + self._drop(self.feedforward_dropout, x, training)
        if not self.normalize_first:
            x = self.feedforward_layer_norm(x)
        if return_attention_scores:
            return x, scores
        return x

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def compute_output_spec(
        self, inputs, return_attention_scores=False, **kwargs
    ):
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        length = inputs.shape[1]
        scores_shape = (inputs.shape[0], self.num_heads, length, length)
        return output, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(self._block_config())
        return config
