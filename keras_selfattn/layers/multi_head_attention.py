"""MultiHeadAttention: a drop-in for `keras.layers.MultiHeadAttention`."""

import keras
from keras import ops

from keras_selfattn._validation import check_positive_int
from keras_selfattn.layers._attention_axes import (
    AttentionAxes,
    projection_equation,
)
from keras_selfattn.layers.attention_config import (
    OPTION_NAMES,
    AttentionConfig,
    forward_options,
)
from keras_selfattn.layers.call_inputs import (
    check_attention_bias,
    check_cache_call,
)
from keras_selfattn.layers.composite import CompositeLayer, clone_initializer
from keras_selfattn.layers.relative_position_bias import (
    RelativePositionBias,
)
from keras_selfattn.layers.rotary_embedding import RotaryEmbedding
from keras_selfattn.ops.attention import (
    AttentionProblem,
    attention_core,
)
from keras_selfattn.ops.checks import check_float_input, check_mask
from keras_selfattn.ops.compiling import compile_function, is_eager
from keras_selfattn.ops.kv_cache import (
    cached_attention,
    is_ring_cache,
    key_positions,
)
from keras_selfattn.ops.masks import (
    index_range,
    merge_masks,
    zero_masked_rows,
)
from keras_selfattn.ops.positions import alibi_bias


@keras.saving.register_keras_serializable(package="keras_selfattn")
@forward_options(*OPTION_NAMES)
class MultiHeadAttention(CompositeLayer):
    """Multi-head (and grouped-query) dot-product attention.

    Takes every argument of keras 3.15's `keras.layers.MultiHeadAttention`,
    in the same order and with the same meaning, builds the same weights
    (`set_weights(keras_layer.get_weights())` copies them) and loads the
    configs keras' layer writes. On top: `num_key_value_heads` (grouped
    query heads), `implementation=`, an optional `value`
    (self-attention); query rows whose keys are all masked give zeros
    (keras: an average of the values); a `query_mask` passed by hand is
    applied (keras reads only the query's implicit mask); causal and
    sliding-window masks over several `attention_axes` run over their
    flattened positions (keras' apply to the first axis only); returned
    scores have their true shape also symbolically.

    Args:
        num_heads: number of query heads.
        key_dim: size of each query/key head.
        value_dim: size of each value head; defaults to `key_dim`.
        dropout: dropout rate on the attention probabilities, in [0, 1).
        use_bias: whether the projections have biases.
        output_shape: int or tuple, the output's trailing shape; defaults
            to the query's width.
        attention_axes: the input axes attended over (int or tuple);
            None: every axis between batch and features. The other axes
            act as batch axes.
        sliding_window: positive int or None: query `i` attends only to
            keys `j` with `|i - j| < sliding_window` (with
            `use_causal_mask`, the last `sliding_window` keys up to `i`).
        flash_attention: None (the backend decides, following
            `keras.config.disable_flash_attention()`), False (never the
            backend's flash kernel) or True (always; needs
            `implementation` "auto" or "fused", no dropout, no returned
            scores, and hardware with a flash kernel). Kept as given (keras
            turns False into None).
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, activity_regularizer, kernel_constraint,
        bias_constraint: for the projections (the activity regularizer on
            each projection's output, as keras).
        use_gate: a sigmoid gate, projected from the query, on each head's
            output (Qiu et al., 2025), keras' weight layout.
        seed: seed for the dropout.
        num_key_value_heads: number of key/value heads; must divide
            `num_heads`. Defaults to `num_heads`.
        implementation: `"auto"`, `"einsum"`, `"fused"` or `"blockwise"`,
            the attention kernel (see `keras_selfattn.ops`); dropout > 0
            needs `"einsum"` or `"auto"`.
        logit_soft_cap: positive float or None: logits `x` become
            `cap * tanh(x / cap)` (Gemma 2), on every path but `"fused"`.
        rotary_max_wavelength: positive number or None: rotary position
            embeddings (`RotaryEmbedding`) on the queries and keys, with
            this `max_wavelength`; needs an even `key_dim`.
        rotary_scaling_factor: the rotary `scaling_factor`.
        position_bias: None, `"alibi"` (`AlibiBias`, slopes from
            `alibi_bias_max`) or `"relative"` (T5's learned bias, a
            `RelativePositionBias` sublayer with `relative_num_buckets` and
            `relative_max_distance`), added to the logits; the blockwise
            path computes it tile by tile.
        alibi_bias_max, relative_num_buckets, relative_max_distance: see
            `position_bias`.
        attention_config: an `AttentionConfig` holding the attention
            options above (`num_heads` to `relative_max_distance`), as a
            layer that builds this one hands its own down; the arguments
            it holds are then left at their defaults.
        **kwargs: base layer arguments (`name`, `dtype`...); `output_dim`,
            the former name of an int `output_shape`, is still read.

    Call arguments:
        query: `(B, T, query_width)`, or `(B, d1, ..., dn, query_width)`.
        value: `(B, S, value_width)` (same rank as `query`); `None` means
            `query` (self-attention).
        key: like `value`; defaults to `value`.
        query_mask, value_mask, key_mask: boolean masks of the positions,
            `(B, T)` / `(B, S)` (the inputs' shapes without the features);
            Keras fills them from the inputs' implicit masks.
        attention_mask: boolean `(B, T, S)`, True = may attend; broadcast
            as in keras (`(T, S)`, `(B, 1, S)`, `(B, heads, T, S)`...).
        attention_bias: float added to the logits, `(T, S)`, `(B, T, S)`
            or `(B, heads, T, S)` (or 1 on broadcast axes); 3-D inputs
            only. Differentiable.
        return_attention_scores: also return the probabilities.
        training: enables dropout.
        use_causal_mask: query `i` attends to keys `0..i` only.

    Returns:
        `(B, T) + output_shape` in the compute dtype, and with
        `return_attention_scores=True` also the probabilities
        `(B, num_heads, T, S)` (with `attention_axes`: keras' score shape).
        The output carries the query's mask.

    Example:

    >>> import numpy as np
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=4, use_gate=True)
    >>> x = np.random.rand(3, 5, 8).astype("float32")
    >>> y = np.random.rand(3, 7, 6).astype("float32")
    >>> out, scores = layer(x, y, return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape)
    ((3, 5, 8), (3, 2, 5, 7))
    >>> image = np.random.rand(2, 4, 6, 8).astype("float32")
    >>> rows = MultiHeadAttention(2, 4, attention_axes=2, output_shape=(3,))
    >>> tuple(rows(image, image).shape)
    (2, 4, 6, 3)

    References:
        Vaswani et al., "Attention Is All You Need", 2017.
        Ainslie et al., "GQA", 2023.
        Qiu et al., "Gated Attention for Large Language Models", 2025.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        attention_axes=None,
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
        num_key_value_heads=None,
        implementation="auto",
        logit_soft_cap=None,
        rotary_max_wavelength=None,
        rotary_scaling_factor=1.0,
        position_bias=None,
        alibi_bias_max=8,
        relative_num_buckets=32,
        relative_max_distance=128,
        attention_config=None,
        **kwargs,
    ):
        # The attention arguments, by name (`AttentionConfig`'s fields).
        options = {k: v for k, v in locals().items() if k in OPTION_NAMES}
        output_dim = kwargs.pop("output_dim", None)  # former name
        super().__init__(**kwargs)
        self.attention_config = AttentionConfig.from_arguments(
            attention_config, **options
        )
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = True
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.attention_config.check_head_size(self.key_dim)
        self.value_dim = (
            check_positive_int("value_dim", value_dim, allow_none=True)
            or self.key_dim
        )
        self._output_shape = _check_output_shape(output_shape, output_dim)
        self.attention_axes = _check_attention_axes(attention_axes)
        self.use_bias = bool(use_bias)
        self.use_gate = bool(use_gate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.projection_activity_regularizer = keras.regularizers.get(
            activity_regularizer
        )
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def _einsum_dense(self, name, free_dims, bound_dims, output_shape, **kw):
        equation, bias_axes = projection_equation(
            free_dims, bound_dims, len(output_shape)
        )
        dense = keras.layers.EinsumDense(
            equation,
            output_shape=[None] * (free_dims - 1) + list(output_shape),
            bias_axes=bias_axes if self.use_bias else None,
            name=name,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            activity_regularizer=self.projection_activity_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.sublayer_dtype(name),
            **kw,
        )
        # Inputs may carry Keras masks; the projection passes them through
        # (this layer reads them itself) instead of warning that it drops them.
        dense.supports_masking = True
        return dense

    def build(self, query_shape, value_shape=None, key_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        key_shape = value_shape if key_shape is None else key_shape
        _check_build_shapes(query_shape, value_shape, key_shape)
        rank = len(query_shape)
        self._axes = AttentionAxes(rank, self.attention_axes)
        self._input_shapes = {
            "query": tuple(query_shape),
            "value": tuple(value_shape),
            "key": tuple(key_shape),
        }
        self._build_projections(query_shape, value_shape, key_shape)
        self._build_positions()
        self.restore_sublayers()

    def _build_projections(self, query_shape, value_shape, key_shape):
        """The query, key, gate, value and output projections, in the
        order (and with the names) of keras' layer."""
        free = len(query_shape) - 1
        kv_heads = self.attention_config.kv_heads
        self.query_dense = self._einsum_dense(
            "query", free, 1, (self.num_heads, self.key_dim)
        )
        self.query_dense.build(query_shape)
        self.key_dense = self._einsum_dense(
            "key", free, 1, (kv_heads, self.key_dim)
        )
        self.key_dense.build(key_shape)
        if self.use_gate:
            self.gate_dense = self._einsum_dense(
                "gate",
                free,
                1,
                (self.num_heads, self.value_dim),
                activation="sigmoid",
            )
            self.gate_dense.build(query_shape)
        self.value_dense = self._einsum_dense(
            "value", free, 1, (kv_heads, self.value_dim)
        )
        self.value_dense.build(value_shape)
        self.output_dense = self._einsum_dense(
            "attention_output",
            free,
            2,
            self._output_shape or (query_shape[-1],),
        )
        self.output_dense.build(
            tuple(query_shape[:-1]) + (self.num_heads, self.value_dim)
        )

    def _build_positions(self):
        """The rotary embedding and the T5 bias, where the options ask."""
        if self.rotary_max_wavelength is not None:
            self.rotary_embedding = RotaryEmbedding(
                self.rotary_max_wavelength,
                self.rotary_scaling_factor,
                dtype=self.dtype_policy,
                name="rotary_embedding",
            )
        if self.position_bias == "relative":
            self.relative_position_bias = RelativePositionBias(
                self.num_heads,
                self.relative_num_buckets,
                self.relative_max_distance,
                dtype=self.dtype_policy,
                name="relative_position_bias",
            )
            self.relative_position_bias.build()

    def call(
        self,
        query,
        value=None,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        attention_bias=None,
        mask=None,
        cache=None,
        cache_update_index=None,
    ):
        self_attention = value is None
        value = query if value is None else value
        key = value if key is None else key
        self._check_inputs(query, value, key)
        self.attention_config.check_call(return_attention_scores)
        if cache is not None or cache_update_index is not None:
            check_cache_call(
                self,
                query,
                cache,
                cache_update_index,
                value_mask=value_mask,
                key_mask=key_mask,
                attention_mask=attention_mask,
                attention_bias=attention_bias,
            )
            attend, cache_update_index = self._cached_call(
                query, training, cache_update_index
            )
            return attend(
                query,
                value,
                key,
                merge_masks(query_mask, mask),
                attention_mask,
                use_causal_mask,
                return_attention_scores,
                training,
                cache,
                cache_update_index,
            )
        self._check_masks(
            query,
            value,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
        )
        check_attention_bias(attention_bias, query, value, self.num_heads)
        if self_attention:
            query_mask = merge_masks(query_mask, mask)
            value_mask = merge_masks(value_mask, query_mask)
        return self._attend(
            query,
            value,
            key,
            query_mask=query_mask,
            key_mask=merge_masks(value_mask, key_mask),
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            attention_bias=attention_bias,
        )

    def _check_inputs(self, query, value, key):
        for name, tensor in (("query", query), ("value", value), ("key", key)):
            check_float_input(name, tensor)
            built = self._input_shapes[name]
            shape = tuple(tensor.shape)
            if len(shape) != len(built) or shape[-1] != built[-1]:
                raise ValueError(
                    f"`{name}` must have rank {len(built)} and width "
                    f"{built[-1]}, as when the layer was built. Received: "
                    f"{name}.shape={shape}"
                )
        if _known(key.shape[1:-1]) and _known(value.shape[1:-1]):
            if tuple(key.shape[1:-1]) != tuple(value.shape[1:-1]):
                raise ValueError(
                    "`key` and `value` must have the same shape except the "
                    f"last axis. Received: key.shape={tuple(key.shape)}, "
                    f"value.shape={tuple(value.shape)}"
                )
        for axis in self._axes.others:
            if None not in (query.shape[axis], key.shape[axis]):
                if query.shape[axis] != key.shape[axis]:
                    raise ValueError(
                        "`query` and `key` must have the same size on the "
                        f"axes outside `attention_axes`. Received: "
                        f"query.shape={tuple(query.shape)}, "
                        f"key.shape={tuple(key.shape)}, "
                        f"attention_axes={self._axes.attention}"
                    )

    def _check_masks(self, query, value, **masks):
        """Check the query mask `query.shape[:-1]`, the value/key masks
        `value.shape[:-1]` and the keras-broadcast attention mask given in
        `masks` (None ones are skipped)."""
        shapes = {
            "query_mask": tuple(query.shape[:-1]),
            "value_mask": tuple(value.shape[:-1]),
            "key_mask": tuple(value.shape[:-1]),
        }
        for name, mask in masks.items():
            if mask is None:
                continue
            if name != "attention_mask":
                check_mask(name, mask, shapes[name])
                continue
            scores = self._axes.scores_shape(
                query.shape, value.shape, self.num_heads
            )
            low, high = self._axes.mask_rank_range()
            rank = len(mask.shape)
            expected = self._axes.expected_mask_shape(
                scores, min(max(rank, low), high)
            )
            check_mask(name, mask, expected)

    def _attend(
        self,
        query,
        value,
        key,
        query_mask,
        key_mask,
        attention_mask,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        attention_bias=None,
    ):
        """The attention of checked inputs and masks.

        `key_mask` (the value and key masks merged) masks keys as a
        `(B', 1, 1, S)` mask; `query_mask` zeroes the rows of padded
        queries instead, so a padding mask never grows to `(B', T, S)`.
        """
        axes = self._axes
        projected_query = self.query_dense(query)
        keys = axes.to_sequences(self.key_dense(key))
        values = axes.to_sequences(self.value_dense(value))
        if attention_mask is not None:
            attention_mask = axes.attention_mask(
                attention_mask, query, key, self.num_heads
            )
        key_mask = axes.positions_mask(key_mask)
        if key_mask is not None:  # (B', S) -> (B', 1, 1, S)
            key_mask = ops.expand_dims(ops.expand_dims(key_mask, 1), 1)
        mask = merge_masks(attention_mask, key_mask)
        queries = axes.to_sequences(projected_query)
        queries, keys = self._rotate(queries), self._rotate(keys)
        if attention_bias is not None and len(attention_bias.shape) == 3:
            attention_bias = ops.expand_dims(attention_bias, 1)
        problem = AttentionProblem(
            queries,
            keys,
            values,
            mask=mask,
            is_causal=use_causal_mask,
            scale=1.0 / float(self.key_dim) ** 0.5,
            seed=self.seed_generator,
            return_attention_scores=return_attention_scores,
            attention_bias=attention_bias,
            position_bias=self._position_bias(),
            **self.attention_config.problem_options(training),
        )
        output, scores = self._finish(
            _output_and_scores(attention_core(problem, self.implementation)),
            query,
            projected_query,
            query_mask,
        )
        if not return_attention_scores:
            return output
        return output, axes.scores_from_sequences(scores, query, key)

    def _rotate(self, tensor, start_index=0):
        """Queries or keys `(B, L, heads, D)` rotated at positions
        `start_index...`, where the options ask for rotary embeddings."""
        if self.rotary_max_wavelength is None:
            return tensor
        return self.rotary_embedding(tensor, start_index=start_index)

    def _finish(self, result, query, projected_query, query_mask):
        """The attention's `(output, probabilities or None)` projected
        back to the query's shape, padded query rows zero."""
        output, scores = result
        # Padded queries attend to nothing: their rows are zeros.
        query_mask = self._axes.positions_mask(query_mask)
        output = zero_masked_rows(output, query_mask, query_axis=1)
        output = self._axes.from_sequences(output, projected_query)
        if self.use_gate:
            output = ops.multiply(output, self.gate_dense(query))
        output = self.output_dense(output)
        if scores is not None:
            scores = zero_masked_rows(scores, query_mask, query_axis=2)
        return output, scores

    def _cached_call(self, query, training, cache_update_index):
        """`(call, cache_update_index)` for a cached call: eagerly on JAX or
        TensorFlow without attention dropout (a Python loop of decoding
        steps), `_compiled_cached_call` with the index as a tensor (one
        trace for every position), not a few dozen eager ops; otherwise
        `_attend_cached` as it is."""
        dropout = self.attention_config.problem_options(training)
        if not is_eager(query) or dropout["dropout_rate"]:
            return self._attend_cached, cache_update_index
        if cache_update_index is not None:
            cache_update_index = ops.convert_to_tensor(
                cache_update_index, "int32"
            )
        return self._compiled_cached_call, cache_update_index

    def _compiled_cached_call(self, *args):
        """`_attend_cached` compiled once per layer object (kept with the
        object's id, so a copy of the layer compiles its own)."""
        owner, compiled = self.__dict__.get("_compiled_cached", (None, None))
        if owner != id(self):
            compiled = compile_function(
                self._attend_cached,
                static_argnums=(5, 6, 7),
                variables=lambda: self.variables,
            )
            self.__dict__["_compiled_cached"] = (id(self), compiled)
        return compiled(*args)

    def _attend_cached(
        self,
        query,
        value,
        key,
        query_mask,
        attention_mask,
        use_causal_mask,
        return_attention_scores,
        training,
        cache,
        cache_update_index,
    ):
        """A call with a key/value `cache` (checked by `check_cache_call`):
        keras-hub `CachedMultiHeadAttention`'s contract, with masks, window
        and position biases at absolute positions."""
        projected_query = self.query_dense(query)
        length = ops.shape(query)[1]
        ring = is_ring_cache(cache, self.sliding_window)
        start = cache_update_index
        if start is None:  # read only: the cache as it is
            start, new_keys, new_values = 0, None, None
        else:
            new_keys = self._rotate(self.key_dense(key), start)
            new_values = self.value_dense(value)
        attention_bias = None
        if self.position_bias is not None:  # from the absolute positions
            attention_bias = self._position_bias_at(
                start + index_range(length),
                key_positions(
                    cache.shape[2],
                    cache_update_index,
                    ops.shape(value)[1],
                    ring,
                ),
            )
        if attention_mask is not None:  # (T, S) or (B, T, S)
            attention_mask = ops.cast(attention_mask, "bool")
            if len(attention_mask.shape) == 2:
                attention_mask = attention_mask[None]
        options = self.attention_config.problem_options(training)
        result, cache = cached_attention(
            self._rotate(projected_query, start),
            new_keys,
            new_values,
            cache,
            cache_update_index,
            ring,
            self.implementation,
            use_causal_mask=use_causal_mask,
            attention_mask=attention_mask,
            scale=1.0 / float(self.key_dim) ** 0.5,
            seed=self.seed_generator,
            return_attention_scores=return_attention_scores,
            attention_bias=attention_bias,
            **options,
        )
        output, scores = self._finish(
            result, query, projected_query, query_mask
        )
        if return_attention_scores:
            return output, scores, cache
        return output, cache

    def _position_bias_at(self, query_positions, key_positions):
        """The position bias `(1, heads, T, S)` of `position_bias` at
        these positions."""
        tile = self._position_bias().tile(
            ops.cast(query_positions, "int32")[:, None],
            ops.cast(key_positions, "int32")[None, :],
            ops.shape(key_positions)[0],
        )
        return ops.broadcast_to(
            tile,
            (self.num_heads,)
            + (ops.shape(query_positions)[0], ops.shape(key_positions)[0]),
        )[None]

    def _position_bias(self):
        """The `PositionBias` of `position_bias`, or None."""
        if self.position_bias == "alibi":
            return alibi_bias(self.num_heads, self.alibi_bias_max)
        if self.position_bias == "relative":
            return self.relative_position_bias.position_bias()
        return None

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask

    def compute_output_shape(
        self, query_shape, value_shape=None, key_shape=None
    ):
        trailing = self._output_shape or (query_shape[-1],)
        return tuple(query_shape[:-1]) + tuple(trailing)

    def compute_output_spec(
        self,
        query,
        value=None,
        key=None,
        return_attention_scores=False,
        cache=None,
        **kwargs,
    ):
        outputs = [
            keras.KerasTensor(
                self.compute_output_shape(query.shape),
                dtype=self.compute_dtype,
            )
        ]
        if return_attention_scores:
            value = query if value is None else value
            if cache is not None:
                value = keras.KerasTensor(query.shape[:1] + cache.shape[2:3])
            axes = getattr(self, "_axes", None) or AttentionAxes(
                len(query.shape), self.attention_axes
            )
            scores_shape = axes.scores_shape(
                query.shape, value.shape, self.num_heads
            )
            outputs.append(
                keras.KerasTensor(scores_shape, dtype=self.compute_dtype)
            )
        if cache is not None:
            outputs.append(keras.KerasTensor(cache.shape, dtype=cache.dtype))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "use_bias": self.use_bias,
                "use_gate": self.use_gate,
                "output_shape": self._output_shape,
                "attention_axes": self.attention_axes,
                **self.initializers_config(),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": keras.regularizers.serialize(
                    self.bias_regularizer
                ),
                "activity_regularizer": keras.regularizers.serialize(
                    self.projection_activity_regularizer
                ),
                "kernel_constraint": keras.constraints.serialize(
                    self.kernel_constraint
                ),
                "bias_constraint": keras.constraints.serialize(
                    self.bias_constraint
                ),
                **self.attention_config.options(),
            }
        )
        return config


def _check_build_shapes(query_shape, value_shape, key_shape):
    """Raise unless the inputs have one rank (3 or more), known widths,
    and key and value the same positions."""
    rank = len(query_shape)
    for name, shape in (
        ("query", query_shape),
        ("value", value_shape),
        ("key", key_shape),
    ):
        if len(shape) < 3 or len(shape) != rank or shape[-1] is None:
            raise ValueError(
                f"`{name}` must have shape (batch, positions..., width) "
                "with a known width and the same rank as `query`. "
                f"Received: {name}.shape={tuple(shape)}, "
                f"query.shape={tuple(query_shape)}"
            )
    if tuple(value_shape[1:-1]) != tuple(key_shape[1:-1]):
        raise ValueError(
            "`key` and `value` must have the same shape except the last "
            f"axis. Received: key.shape={tuple(key_shape)}, "
            f"value.shape={tuple(value_shape)}"
        )


def _check_output_shape(output_shape, output_dim):
    """`output_shape` (int or sequence of positive ints, or None) as a
    tuple or None; `output_dim`, its former name, is read too."""
    if output_dim is not None:
        if output_shape is not None:
            raise ValueError(
                "Pass `output_shape` only (`output_dim` is its former "
                f"name). Received: output_shape={output_shape!r}, "
                f"output_dim={output_dim!r}"
            )
        output_shape = output_dim
    if output_shape is None:
        return None
    dims = (output_shape,) if isinstance(output_shape, int) else output_shape
    try:
        dims = tuple(dims)
        for dim in dims:
            check_positive_int("output_shape", dim)
    except (TypeError, ValueError):
        raise ValueError(
            "`output_shape` must be a positive int or a tuple of them. "
            f"Received: output_shape={output_shape!r}"
        ) from None
    return tuple(int(dim) for dim in dims) or None


def _check_attention_axes(attention_axes):
    """`attention_axes` (None, an int or a sequence of ints) as a tuple or
    None; which axes exist is checked at build."""
    if attention_axes is None:
        return None
    axes = (attention_axes,) if isinstance(attention_axes, int) else None
    if axes is None and isinstance(attention_axes, (list, tuple)):
        axes = tuple(attention_axes)
    if not axes or any(
        isinstance(a, bool) or not isinstance(a, int) for a in axes
    ):
        raise ValueError(
            "`attention_axes` must be an int or a tuple of ints. Received: "
            f"attention_axes={attention_axes!r}"
        )
    return axes


def _known(dims):
    return all(d is not None for d in dims)


def _output_and_scores(result):
    """`attention_core`'s result as `(output, probabilities or None)`."""
    return result if isinstance(result, tuple) else (result, None)
