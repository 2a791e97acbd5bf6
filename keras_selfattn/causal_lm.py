"""CausalLM: a decoder-only language model over a stack of decoder blocks,
with a key/value cache for generation."""

import inspect

import keras
from keras import ops

from keras_selfattn import generation
from keras_selfattn._validation import check_positive_int


@keras.saving.register_keras_serializable(package="keras_selfattn")
class CausalLM(keras.Model):
    """A causal language model: token embedding, decoder blocks, final
    norm and an output projection, with a cached forward pass for
    generation.

    The model speaks keras-hub's generation protocol: the cache stacks the
    layers' caches as `(B, num_layers, 2, cache_length, kv_heads,
    head_dim)`, `call_with_cache` and `next` behave as in
    `keras_hub.models.GPT2CausalLM`, so `keras_hub.samplers` drive it
    (`prefill` builds their `cache` and `hidden_states`). `generate` runs
    `keras_selfattn.generation.generate`, which needs neither keras-hub
    nor TensorFlow.

    Args:
        token_embedding: a layer mapping int token ids `(B, L)` to `(B, L,
            width)`, e.g. `keras.layers.Embedding` or
            `keras_selfattn.TokenAndPositionEmbedding`. A layer that adds
            absolute positions must accept `start_index` in its `call`
            (the position of its first token), as keras-hub's
            `TokenAndPositionEmbedding` does; the cached pass hands it
            `start_index=cache_update_index`. A Keras mask it emits is
            used as the full pass's `padding_mask`; the cached pass
            attends to every position written to the cache.
        decoders: a non-empty list of decoder blocks with keras-hub's
            `TransformerDecoder` call contract: `decoder(x,
            decoder_padding_mask=...)` returns `x` under a causal mask,
            `decoder(x, self_attention_cache=cache,
            self_attention_cache_update_index=index)` returns `(x, cache)`.
            A block with a `cache_shape(batch_size, max_length)` method
            gives its cache's shape (a sliding-window block a ring of
            `min(max_length, sliding_window)` slots); otherwise the cache
            is keras-hub's `(B, 2, max_length, num_heads, width //
            num_heads)`.
        final_norm: optional layer applied after the last block (e.g.
            `keras.layers.LayerNormalization`).
        head: a layer mapping `(B, L, width)` to logits `(B, L, vocab)`, or
            None to tie the output projection to the token embedding
            matrix (the `embeddings` of `token_embedding`, or of its
            `token_embedding` sublayer).

    Call arguments:
        token_ids: int `(B, L)`, or keras-hub's `CausalLM` inputs: a dict
            of `"token_ids"` and (optionally) `"padding_mask"`.
        padding_mask: optional boolean `(B, L)`, True for real tokens
            (right padding); defaults to the Keras mask of the embedding.
        training: enables dropout.

    Returns:
        Logits `(B, L, vocab)` in float32.

    Example:

    >>> import numpy as np
    >>> from keras_selfattn import TransformerDecoder
    >>> lm = CausalLM(
    ...     keras.layers.Embedding(50, 8),
    ...     [TransformerDecoder(16, 2) for _ in range(2)],
    ...     final_norm=keras.layers.LayerNormalization(),
    ... )
    >>> prompt = np.array([[3, 7, 1], [4, 2, 0]])
    >>> tuple(lm(prompt).shape)
    (2, 3, 50)
    >>> out = lm.generate(prompt, max_length=6, padding_mask=prompt > 0)
    >>> out["token_ids"].shape, out["token_ids"][1, :2].tolist()
    ((2, 6), [4, 2])
    """

    def __init__(
        self, token_embedding, decoders, final_norm=None, head=None, **kwargs
    ):
        super().__init__(**kwargs)
        _check_layer("token_embedding", token_embedding)
        if (
            not isinstance(decoders, (list, tuple))
            or not decoders
            or not all(isinstance(d, keras.layers.Layer) for d in decoders)
        ):
            raise ValueError(
                "`decoders` must be a non-empty list of layers. "
                f"Received: decoders={decoders!r}"
            )
        _check_layer("final_norm", final_norm, allow_none=True)
        _check_layer("head", head, allow_none=True)
        self.token_embedding = token_embedding
        self.decoders = list(decoders)
        self.final_norm = final_norm
        self.head = head
        self._embedding_takes_start_index = _accepts(
            token_embedding, "start_index"
        )
        self.build((None, None))

    def build(self, token_ids_shape, padding_mask_shape=None):
        shape = tuple(token_ids_shape)
        if not self.token_embedding.built:
            self.token_embedding.build(shape)
        if self.head is None and self._tied_embeddings() is None:
            raise ValueError(
                "`head=None` ties the output projection to the token "
                "embedding matrix, but `token_embedding` has no "
                "`embeddings` weight (nor a `token_embedding` sublayer with "
                "one); pass a `head` layer. Received: "
                f"token_embedding={self.token_embedding!r}"
            )
        hidden_shape = tuple(self.token_embedding.compute_output_shape(shape))
        self.width = hidden_shape[-1]
        for layer in [*self.decoders, self.final_norm, self.head]:
            if layer is not None and not layer.built:
                layer.build(hidden_shape)
        self.built = True

    def _tied_embeddings(self):
        """The `(vocab, width)` token embedding matrix, or None."""
        for layer in (
            self.token_embedding,
            getattr(self.token_embedding, "token_embedding", None),
        ):
            embeddings = getattr(layer, "embeddings", None)
            if embeddings is not None:
                return embeddings
        return None

    @property
    def num_layers(self):
        return len(self.decoders)

    def _embed(self, token_ids, start_index=None):
        """`(hidden, implicit_mask)`: the embedded ids and the Keras mask
        the embedding computes for them (None if it has none)."""
        if start_index is not None and self._embedding_takes_start_index:
            x = self.token_embedding(token_ids, start_index=start_index)
        else:
            x = self.token_embedding(token_ids)
        mask = self.token_embedding.compute_mask(token_ids, None)
        if mask is not None:
            # A fresh tensor carries no implicit Keras mask: masks are
            # passed to the blocks explicitly.
            x = ops.copy(x)
        return x, mask

    def _logits(self, hidden_states):
        if self.head is not None:
            logits = self.head(hidden_states)
        else:
            embeddings = ops.cast(self._tied_embeddings(), hidden_states.dtype)
            logits = ops.matmul(hidden_states, ops.transpose(embeddings))
        return ops.cast(logits, "float32")

    def _finish(self, x):
        """`(logits, hidden_states)` from the last block's output."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self._logits(x), x

    def call(self, token_ids, padding_mask=None, training=None):
        if isinstance(token_ids, dict):
            token_ids, padding_mask = _unpack_inputs(token_ids, padding_mask)
        x, implicit_mask = self._embed(token_ids)
        if padding_mask is None:
            padding_mask = implicit_mask
        options = {"training": training}
        if padding_mask is not None:
            options["decoder_padding_mask"] = ops.cast(padding_mask, "bool")
        for decoder in self.decoders:
            x = decoder(x, **options)
        logits, _ = self._finish(x)
        return logits

    # ------------------------------------------------------------ caching

    def _layer_cache_shape(self, decoder, batch_size, max_length):
        if hasattr(decoder, "cache_shape"):
            return tuple(decoder.cache_shape(batch_size, max_length))
        num_heads = getattr(decoder, "num_heads", None)
        if num_heads is None:
            raise ValueError(
                "A decoder block needs a `cache_shape(batch_size, "
                "max_length)` method or a `num_heads` attribute to size its "
                f"cache. Received: decoder={decoder!r}"
            )
        head_dim = self.width // num_heads
        return (batch_size, 2, max_length, num_heads, head_dim)

    def initial_cache(self, batch_size, max_length, dtype=None):
        """An empty (zero) key/value cache for `batch_size` sequences of up
        to `max_length` tokens.

        Args:
            batch_size: number of sequences.
            max_length: the longest sequence the cache serves.
            dtype: the cache dtype; defaults to the compute dtype.

        Returns:
            zeros `(batch_size, num_layers, 2, cache_length, kv_heads,
            head_dim)`: keras-hub's layout of stacked layer caches.
        """
        batch_size = check_positive_int("batch_size", batch_size)
        max_length = check_positive_int("max_length", max_length)
        return self._initial_cache(batch_size, max_length, dtype)

    def _initial_cache(self, batch_size, max_length, dtype=None):
        shape = self._cache_shape(batch_size, max_length)
        return ops.zeros(shape, dtype=dtype or self.compute_dtype)

    def _cache_shape(self, batch_size, max_length):
        """The stacked cache's shape (checks the blocks' layouts agree)."""
        shapes = [
            self._layer_cache_shape(decoder, batch_size, max_length)
            for decoder in self.decoders
        ]
        layouts = {tuple(shape[1:]) for shape in shapes}
        if len(layouts) != 1:
            raise ValueError(
                "Every decoder block must have the same cache shape (2, "
                "cache_length, kv_heads, head_dim) to stack them. Received: "
                f"{[tuple(shape[1:]) for shape in shapes]}"
            )
        return (batch_size, self.num_layers, *layouts.pop())

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Forward pass over new tokens, reading and writing the cache.

        Args:
            token_ids: int `(B, T)`, `T >= 1`: the tokens at positions
                `cache_update_index .. cache_update_index + T - 1`.
            cache: `(B, num_layers, 2, cache_length, kv_heads, head_dim)`,
                from `initial_cache` or an earlier call.
            cache_update_index: int or int scalar tensor, the position of
                the first token.

        Returns:
            `(logits, hidden_states, cache)`: float32 logits `(B, T,
            vocab)`, the final hidden states `(B, T, width)` (after
            `final_norm`) and the updated cache.
        """
        layers = cache.shape[1]
        if layers is not None and layers != self.num_layers:
            raise ValueError(
                f"`cache` holds {layers} layers, the model has "
                f"{self.num_layers}. Received: cache.shape={tuple(cache.shape)}"
            )
        if token_ids.shape[1] == 0:
            raise ValueError(
                "`token_ids` must hold at least one token. Received: "
                f"token_ids.shape={tuple(token_ids.shape)}"
            )
        x, _ = self._embed(token_ids, start_index=cache_update_index)
        caches = []
        for i, decoder in enumerate(self.decoders):
            x, layer_cache = decoder(
                x,
                self_attention_cache=cache[:, i, ...],
                self_attention_cache_update_index=cache_update_index,
            )
            caches.append(layer_cache)
        cache = ops.stack(caches, axis=1)
        logits, hidden_states = self._finish(x)
        return logits, hidden_states, cache

    def decode_step_model(self, max_length, batch_size=None, sequence_length=1):
        """A functional model of one cached step (`call_with_cache`), for
        `model.export`: it shares this model's weights (no copies) and
        takes and returns the cache, so a runtime without Keras can
        generate with the exported artifact.

        The inputs are a dict (the exported artifact's input names):
        `"token_ids"` int32 `(batch_size, sequence_length)`, the tokens at
        positions `cache_update_index ..`; `"cache"` `(batch_size,
        num_layers, 2, cache_length, kv_heads, head_dim)` in the compute
        dtype (`initial_cache(batch_size, max_length)`'s shape, zeros
        before the first step); `"cache_update_index"` an int32 scalar of
        shape `()`, the position of the first token. The outputs, a dict:
        `"logits"` float32 `(batch_size, sequence_length, vocab)` and
        `"next_cache"`, the cache with the new positions written.

        Keras' exporters take a scalar input from an explicit
        `input_signature` (by default they give every input a batch
        axis); `recipes.exporting.export_decode_step` passes one. The
        step model is for calling and exporting, not for `.keras` files:
        save the `CausalLM`, and build the step again after loading it.

        Args:
            max_length: the longest sequence the cache serves; sets
                `cache_length` (`min(max_length, sliding_window)` for a
                sliding-window model).
            batch_size: the rows a call takes; None leaves it dynamic.
            sequence_length: the tokens a call takes: 1 (a decode step;
                a prompt is then fed token by token), a fixed count, or
                None (dynamic: one call can prefill a whole prompt).

        Returns:
            A `keras.Model` mapping the input dict to the output dict.

        Example:

        >>> import numpy as np
        >>> from keras_selfattn import TransformerDecoder
        >>> lm = CausalLM(
        ...     keras.layers.Embedding(30, 8), [TransformerDecoder(16, 2)]
        ... )
        >>> step = lm.decode_step_model(max_length=6)
        >>> out = step({
        ...     "token_ids": np.array([[5], [7]], "int32"),
        ...     "cache": np.zeros(lm.initial_cache(2, 6).shape, "float32"),
        ...     "cache_update_index": np.array(0, "int32"),
        ... })
        >>> tuple(out["logits"].shape), tuple(out["next_cache"].shape)
        ((2, 1, 30), (2, 1, 2, 6, 2, 4))
        >>> logits, _, _ = lm.call_with_cache(
        ...     np.array([[5], [7]]), lm.initial_cache(2, 6), 0
        ... )
        >>> to_numpy = keras.ops.convert_to_numpy
        >>> bool(np.allclose(to_numpy(out["logits"]), to_numpy(logits)))
        True
        """
        max_length = check_positive_int("max_length", max_length)
        batch_size = check_positive_int(
            "batch_size", batch_size, allow_none=True
        )
        sequence_length = check_positive_int(
            "sequence_length", sequence_length, allow_none=True
        )
        cache_shape = self._cache_shape(batch_size, max_length)
        token_ids = keras.Input(
            batch_shape=(batch_size, sequence_length),
            dtype="int32",
            name="token_ids",
        )
        cache = keras.Input(
            batch_shape=(batch_size, *cache_shape[1:]),
            dtype=self.compute_dtype,
            name="cache",
        )
        index = keras.Input(
            batch_shape=(), dtype="int32", name="cache_update_index"
        )
        logits, next_cache = _CachedStep(self)(token_ids, cache, index)
        return keras.Model(
            {
                "token_ids": token_ids,
                "cache": cache,
                "cache_update_index": index,
            },
            {"logits": logits, "next_cache": next_cache},
            name=f"{self.name}_decode_step",
        )

    def prefill(self, token_ids, length):
        """Write the first `length` tokens of every row into a new cache in
        one forward pass.

        `length` is the shortest prompt of the batch: every row's tokens
        before it are real, and the sampling loop feeds the rest one by
        one (keeping each row's own prompt tokens), so no padding ever
        enters the cache (a ring cache would keep it).

        Args:
            token_ids: int `(B, max_length)`: the prompts, right-padded to
                the generation length (the cache's `max_length`).
            length: a Python int in `[1, max_length]`.

        Returns:
            `(hidden_states, cache)`: `(B, max_length, width)` final hidden
            states, zero from position `length` on (as keras-hub's
            samplers take them), and the cache, ready for `next` from
            `index=length`.
        """
        batch_size, max_length = ops.shape(token_ids)[0], token_ids.shape[1]
        if (
            isinstance(length, bool)
            or not isinstance(length, int)
            or not 1 <= length <= max_length
        ):
            raise ValueError(
                "`length` must be a Python int in [1, "
                f"{max_length}] (the token_ids length). Received: "
                f"length={length!r}"
            )
        cache = self._initial_cache(batch_size, max_length)
        prompt = ops.slice(token_ids, [0, 0], [batch_size, length])
        _, hidden_states, cache = self.call_with_cache(prompt, cache, 0)
        hidden_states = ops.pad(
            hidden_states, [[0, 0], [0, max_length - length], [0, 0]]
        )
        return hidden_states, cache

    def next(self, prompt, cache, index):
        """One generation step in keras-hub's sampler protocol.

        Feeds the token at `index - 1` of `prompt`, writing it into the
        cache at that position, as `GPT2CausalLM.generate_step` does.

        Args:
            prompt: int `(B, max_length)`, the tokens so far.
            cache: the cache, written up to position `index - 2`.
            index: int or int scalar tensor, the position to predict.

        Returns:
            `(logits, hidden_states, cache)`: float32 logits `(B, vocab)`
            for position `index`, hidden states `(B, width)` and the cache.
        """
        cache_update_index = index - 1
        # A gather, not `ops.slice`: XLA on TensorFlow compiles a slice
        # again for every new start.
        token = ops.expand_dims(
            ops.take(prompt, cache_update_index, axis=1), axis=1
        )
        logits, hidden_states, cache = self.call_with_cache(
            token, cache, cache_update_index
        )
        return (
            ops.squeeze(logits, axis=1),
            ops.squeeze(hidden_states, axis=1),
            cache,
        )

    def generate(self, token_ids, max_length, **options):
        """Generate up to `max_length` tokens per row:
        `keras_selfattn.generation.generate(self, token_ids, max_length,
        **options)`, whose arguments `options` takes (`padding_mask`,
        `strategy`, `temperature`, `top_k`, `top_p`, `stop_token_ids`,
        `seed`, `on_token`, `pad_token_id`, `jit_compile`).

        Returns:
            `{"token_ids": (B, max_length), "padding_mask": (B,
            max_length)}` as NumPy arrays.
        """
        return generation.generate(self, token_ids, max_length, **options)

    # -------------------------------------------------------- serializing

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "token_embedding": serialize(self.token_embedding),
            "decoders": [serialize(decoder) for decoder in self.decoders],
            "final_norm": (
                None if self.final_norm is None else serialize(self.final_norm)
            ),
            "head": None if self.head is None else serialize(self.head),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        for name in ("token_embedding", "final_norm", "head"):
            if config.get(name) is not None:
                config[name] = deserialize(config[name])
        config["decoders"] = [deserialize(d) for d in config["decoders"]]
        if "dtype" in config and isinstance(config["dtype"], dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


class _CachedStep(keras.layers.Layer):
    """`lm.call_with_cache` as one layer: `(logits, next_cache)`.

    A functional model over `call_with_cache` itself would run what lies
    outside the model's layers (the tied projection reads the embedding
    matrix) once, when the model is built, and keep the result: a copy of
    the weights. In a layer's `call` it runs at every call."""

    def __init__(self, lm, **kwargs):
        super().__init__(
            dtype=lm.dtype_policy, name=f"{lm.name}_step", **kwargs
        )
        self.lm = lm

    def call(self, token_ids, cache, cache_update_index):
        logits, _, cache = self.lm.call_with_cache(
            token_ids, cache, cache_update_index
        )
        return logits, cache


def _unpack_inputs(inputs, padding_mask):
    """`(token_ids, padding_mask)` from keras-hub's input dict."""
    unknown = sorted(set(inputs) - {"token_ids", "padding_mask"})
    if "token_ids" not in inputs or unknown:
        raise ValueError(
            "A dict of inputs holds `token_ids` and optionally "
            f"`padding_mask`. Received: keys {sorted(inputs)}"
        )
    if padding_mask is not None and "padding_mask" in inputs:
        raise ValueError(
            "`padding_mask` is given twice: as an argument and in the "
            "inputs dict."
        )
    return inputs["token_ids"], inputs.get("padding_mask", padding_mask)


def _check_layer(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, keras.layers.Layer):
        raise ValueError(
            f"`{name}` must be a Keras layer. Received: {name}={value!r}"
        )


def _accepts(layer, argument):
    """Whether `layer.call` takes `argument` by name."""
    parameters = inspect.signature(layer.call).parameters
    return argument in parameters
