"""TransformerDecoder: causal self-attention, optional cross-attention and a
feed-forward network, with keras-hub's contract and key/value caches."""

import dataclasses

import keras
from keras import ops

from keras_selfattn._validation import check_positive_int
from keras_selfattn.layers._transformer_block import (
    ATTENTION_OPTIONS,
    TransformerBlock,
    block_arguments,
)
from keras_selfattn.layers.attention_config import forward_options
from keras_selfattn.layers.call_inputs import check_width
from keras_selfattn.layers.composite import clone_initializer
from keras_selfattn.layers.multi_head_attention import MultiHeadAttention
from keras_selfattn.ops.checks import check_mask
from keras_selfattn.ops.masks import merge_masks

# What cross-attention keeps of the block's options: positions, windows
# and biases belong to the decoder's own sequence.
_CROSS_ATTENTION_RESETS = {
    "sliding_window": None,
    "rotary_max_wavelength": None,
    "position_bias": None,
}


@keras.saving.register_keras_serializable(package="keras_selfattn")
@forward_options(*ATTENTION_OPTIONS)
class TransformerDecoder(TransformerBlock):
    """One Transformer decoder block, a drop-in for keras-hub's.

    Causal self-attention, cross-attention over an encoder's output when
    the layer is built (first called) with one, and a feed-forward
    network; each followed by a norm (post-norm, `normalize_first=False`)
    or preceded by one (pre-norm, as GPT-2 and LLaMA). keras-hub
    `TransformerDecoder`'s arguments, call, return forms, sublayer names
    and weight order (`set_weights(hub_layer.get_weights())` copies them),
    and its configs load. On top: our attention options (grouped heads,
    `implementation`, rotary, ALiBi, T5 bias, window, soft cap) and
    LLaMA-family blocks (`normalization="rms_norm"`,
    `gated_feedforward=True` with `activation="silu"`, `use_bias=False`).

    Decoding: `self_attention_cache` `(B, 2, S, kv_heads, head_dim)` (see
    `cache_shape`) holds the keys and values of the positions before
    `self_attention_cache_update_index`; the call writes its own at that
    index and returns the cache with the output. With `sliding_window=w`
    a cache of `w` slots is a ring buffer, so memory stays `w` positions
    however long the text.

    Args:
        intermediate_dim: hidden size of the feed-forward network.
        num_heads: query heads; must divide the input width.
        dropout: dropout rate in [0, 1) of the residual branches, and of
            the attention unless `attention_dropout` is given.
        activation: the feed-forward activation (of the gate, with
            `gated_feedforward`).
        layer_norm_epsilon: epsilon of the norms.
        kernel_initializer, bias_initializer: for every dense sublayer.
        normalize_first: pre-norm if True, post-norm if False.
        num_key_value_heads: grouped-query attention, also in the cache;
            defaults to `num_heads`.
        seed: seed for the dropouts.
        attention_dropout: dropout on the attention probabilities.
        implementation, sliding_window, logit_soft_cap,
        rotary_max_wavelength, rotary_scaling_factor, position_bias,
        alibi_bias_max, relative_num_buckets, relative_max_distance: the
            self-attention's options, as in `MultiHeadAttention`
            (cross-attention keeps the heads, implementation and soft cap).
        normalization: `"layer_norm"` or `"rms_norm"`.
        gated_feedforward: `output(activation(gate(x)) * intermediate(x))`.
        use_bias: whether the dense and attention projections have biases.

    Call arguments:
        decoder_sequence: `(B, T, width)`.
        encoder_sequence: `(B, S_enc, width_enc)`, for a layer with
            cross-attention (every call, or none).
        decoder_padding_mask: boolean `(B, T)` of the decoder's keys
            (with a cache, `(B, S)` of its slots); defaults to the
            implicit mask of `decoder_sequence`.
        decoder_attention_mask: boolean `(B, T, T)` (with a cache
            `(B, T, S)`), True = may attend.
        encoder_padding_mask: boolean `(B, S_enc)`.
        encoder_attention_mask: boolean `(B, T, S_enc)`.
        self_attention_cache: the self-attention's cache, or None.
        self_attention_cache_update_index: where this call's positions
            start (int or int tensor); None reads the cache unchanged.
        cross_attention_cache: the cross-attention's cache (needed with
            `self_attention_cache` when the layer has cross-attention).
        cross_attention_cache_update_index: 0 fills it from
            `encoder_sequence`; None reuses it.
        use_causal_mask: each query sees the keys up to its own position.
        training: enables dropout.

    Returns:
        `(B, T, width)`; with `self_attention_cache`, `(output,
        self_attention_cache)`, or `(output, self_attention_cache,
        cross_attention_cache)` for a layer with cross-attention.

    Example:

    >>> import numpy as np
    >>> decoder = TransformerDecoder(
    ...     intermediate_dim=16, num_heads=2, num_key_value_heads=1
    ... )
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> full = decoder(x)
    >>> cache = np.zeros(decoder.cache_shape(2, 5), "float32")
    >>> out, cache = decoder(
    ...     x[:, :4],
    ...     self_attention_cache=cache,
    ...     self_attention_cache_update_index=0,
    ... )
    >>> last, cache = decoder(
    ...     x[:, 4:],
    ...     self_attention_cache=cache,
    ...     self_attention_cache_update_index=4,
    ... )
    >>> from keras import ops
    >>> last, full = ops.convert_to_numpy(last), ops.convert_to_numpy(full)
    >>> bool(np.allclose(last, full[:, 4:], atol=1e-5))
    True

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
        Touvron et al., "LLaMA", 2023 (RMS norm, SwiGLU, rotary).
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
        arguments = block_arguments(locals())
        # keras-hub's configs carry the build shapes, so that a loaded
        # layer has its cross-attention before its weights load.
        decoder_sequence_shape = kwargs.pop("decoder_sequence_shape", None)
        encoder_sequence_shape = kwargs.pop("encoder_sequence_shape", None)
        super().__init__(**arguments, **kwargs)
        self._decoder_sequence_shape = None
        self._encoder_sequence_shape = None
        if decoder_sequence_shape:
            self.build(decoder_sequence_shape, encoder_sequence_shape)

    def _attention(self, name, config, query_shape, value_shape):
        layer = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self.head_dim,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            attention_config=config,
            dtype=self.dtype_policy,
            name=name,
        )
        layer.build(query_shape, value_shape)
        return layer

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        shape = tuple(decoder_sequence_shape)
        width = shape[-1]
        if len(shape) != 3 or width is None or width < self.num_heads:
            raise ValueError(
                "`decoder_sequence` must have shape (batch, length, width) "
                "with a known width of at least `num_heads`. Received: "
                f"decoder_sequence.shape={shape}, num_heads={self.num_heads}"
            )
        self._decoder_sequence_shape = shape
        self._encoder_sequence_shape = (
            None
            if encoder_sequence_shape is None
            else tuple(encoder_sequence_shape)
        )
        self.width = width
        self.head_dim = width // self.num_heads
        self.self_attention = self._attention(
            "self_attention", self.attention_config, shape, shape
        )
        self.self_attention_layer_norm = self._norm(
            "self_attention_layer_norm", shape
        )
        self.self_attention_dropout = self._dropout("self_attention_dropout")
        self.cross_attention = None
        if encoder_sequence_shape is not None:
            cross = dataclasses.replace(
                self.attention_config, **_CROSS_ATTENTION_RESETS
            )
            self.cross_attention = self._attention(
                "cross_attention", cross, shape, encoder_sequence_shape
            )
            self.cross_attention_layer_norm = self._norm(
                "cross_attention_layer_norm", shape
            )
            self.cross_attention_dropout = self._dropout(
                "cross_attention_dropout"
            )
        self._build_feedforward(shape)
        self.feedforward_layer_norm = self._norm(
            "feedforward_layer_norm", shape
        )
        self.feedforward_dropout = self._dropout("feedforward_dropout")
        self.restore_sublayers()

    def cache_shape(self, batch_size, max_length):
        """The shape of a self-attention cache for texts of up to
        `max_length` positions: `(batch_size, 2, slots, kv_heads,
        head_dim)`, `slots = min(max_length, sliding_window)` (a ring).

        The layer must be built (its width sets `head_dim`).
        """
        check_positive_int("max_length", max_length)
        if not self.built:
            raise ValueError(
                "`cache_shape` needs a built layer (its width sets the "
                "head size); call or build it first."
            )
        slots = max_length
        if self.sliding_window is not None:
            slots = min(max_length, self.sliding_window)
        return (
            batch_size,
            2,
            slots,
            self.attention_config.kv_heads,
            self.head_dim,
        )

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        cross_attention_cache_update_index=None,
        use_causal_mask=True,
        training=None,
        mask=None,
    ):
        check_width("decoder_sequence", decoder_sequence, self.width)
        self._check_inputs(
            encoder_sequence, self_attention_cache, cross_attention_cache
        )
        if self_attention_cache is None:  # else `mask` covers new tokens
            decoder_padding_mask = merge_masks(decoder_padding_mask, mask)
        self_mask = self._decoder_mask(
            decoder_sequence,
            self_attention_cache,
            decoder_padding_mask,
            decoder_attention_mask,
        )
        x, self_attention_cache = self._residual(
            "self_attention",
            decoder_sequence,
            lambda x: self.self_attention(
                x,
                attention_mask=self_mask,
                use_causal_mask=use_causal_mask,
                cache=self_attention_cache,
                cache_update_index=self_attention_cache_update_index,
                training=training,
            ),
            training,
            self_attention_cache is not None,
        )
        if self.cross_attention is not None:
            cross_mask = _padding_and_attention_mask(
                encoder_padding_mask, encoder_attention_mask
            )
            x, cross_attention_cache = self._residual(
                "cross_attention",
                x,
                lambda x: self.cross_attention(
                    x,
                    encoder_sequence,
                    attention_mask=cross_mask,
                    cache=cross_attention_cache,
                    cache_update_index=cross_attention_cache_update_index,
                    training=training,
                ),
                training,
                cross_attention_cache is not None,
            )
        x, _ = self._residual(
            "feedforward", x, self._feedforward, training, False
        )
        if self_attention_cache is None:
            return x
        if self.cross_attention is None:
            return x, self_attention_cache
        return x, self_attention_cache, cross_attention_cache

    def _residual(self, name, x, sublayer, training, returns_cache):
        """`x + dropout(sublayer(x))`, normalized before (pre-norm) or
        after; returns it and the sublayer's cache (or None)."""
        norm = getattr(self, f"{name}_layer_norm")
        dropout = getattr(self, f"{name}_dropout")
        residual = x
        if self.normalize_first:
            x = norm(x)
        x = sublayer(x)
        cache = None
        if returns_cache:
            x, cache = x
        x = residual + self._drop(dropout, x, training)
        if not self.normalize_first:
            x = norm(x)
        return x, cache

    def _check_inputs(self, encoder_sequence, self_cache, cross_cache):
        """Raise unless the call has the inputs the layer was built for."""
        has_cross = self.cross_attention is not None
        if has_cross != (encoder_sequence is not None):
            raise ValueError(
                "The number of call arguments to `TransformerDecoder` should "
                "not change: this layer was built "
                f"{'with' if has_cross else 'without'} cross-attention. Use "
                "`layer(decoder_sequence, encoder_sequence)` for a layer "
                "with it, `layer(decoder_sequence)` for one without. "
                "Received: encoder_sequence="
                f"{'None' if encoder_sequence is None else 'a tensor'}"
            )
        if has_cross and (self_cache is None) != (cross_cache is None):
            raise ValueError(
                "With cross-attention, `self_attention_cache` and "
                "`cross_attention_cache` must both be set or both be None. "
                f"Received: self_attention_cache is "
                f"{'None' if self_cache is None else 'set'}, "
                f"cross_attention_cache is "
                f"{'None' if cross_cache is None else 'set'}"
            )

    def _decoder_mask(self, sequence, cache, padding_mask, attention_mask):
        """The self-attention's `(B, T or 1, S)` mask, or None: the
        padding of its keys (the cache's slots, with one) and the attention
        mask (the causal mask is the attention layer's)."""
        batch, length = sequence.shape[0], sequence.shape[1]
        keys = length if cache is None else cache.shape[2]
        if padding_mask is not None:
            check_mask("decoder_padding_mask", padding_mask, (batch, keys))
        if attention_mask is not None:
            check_mask(
                "decoder_attention_mask", attention_mask, (batch, length, keys)
            )
        return _padding_and_attention_mask(padding_mask, attention_mask)

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask

    def compute_output_shape(self, decoder_sequence_shape, *args, **kwargs):
        return tuple(decoder_sequence_shape)

    def compute_output_spec(
        self,
        decoder_sequence,
        encoder_sequence=None,
        self_attention_cache=None,
        cross_attention_cache=None,
        **kwargs,
    ):
        output = keras.KerasTensor(
            decoder_sequence.shape, dtype=self.compute_dtype
        )
        if self_attention_cache is None:
            return output
        caches = [self_attention_cache]
        if encoder_sequence is not None:
            caches.append(cross_attention_cache)
        return (output,) + tuple(
            keras.KerasTensor(cache.shape, dtype=cache.dtype)
            for cache in caches
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                **self._block_config(),
                "decoder_sequence_shape": self._decoder_sequence_shape,
                "encoder_sequence_shape": self._encoder_sequence_shape,
            }
        )
        return config


def _padding_and_attention_mask(padding_mask, attention_mask):
    """A `(B, S)` key padding mask and a `(B, T, S)` attention mask
    merged, broadcastable to `(B, T, S)`; None if both are."""
    if padding_mask is not None:
        padding_mask = ops.expand_dims(ops.cast(padding_mask, "bool"), 1)
    if attention_mask is not None:
        attention_mask = ops.cast(attention_mask, "bool")
    return merge_masks(padding_mask, attention_mask)
