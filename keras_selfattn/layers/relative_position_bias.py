"""RelativePositionBias: T5's learned, bucketed relative position bias."""

import keras
from keras import ops

from keras_selfattn._validation import check_positive_int
from keras_selfattn.ops.positions import relative_position_bias


@keras.saving.register_keras_serializable(package="keras_selfattn")
class RelativePositionBias(keras.layers.Layer):
    """T5's relative position bias (Raffel et al. 2020), learned per head.

    The distance `j - i` from query `i` to key `j` falls into one of
    `num_buckets` buckets (exact for short distances, logarithmically
    wider up to `max_distance`); each bucket has a learned bias per head,
    the `(num_buckets, num_heads)` weight `embeddings`. Attention layers
    own one with `position_bias="relative"` and compute it tile by tile.

    Args:
        num_heads: attention heads.
        num_buckets: buckets of distances (at least 4 when
            `bidirectional`, else 2).
        max_distance: distances from this on share the last bucket; must
            exceed the exact range (`num_buckets // 4` bidirectional, else
            `num_buckets // 2`).
        bidirectional: separate buckets for keys after the query (an
            encoder); False for causal attention.
        embeddings_initializer: for the bias table.
        **kwargs: base layer arguments (`name`, `dtype`...).

    Call arguments:
        query: `(B, T, ...)`, the queries (only their length is read).
        key: `(B, S, ...)`, the keys; defaults to `query`.

    Returns:
        The bias `(1, num_heads, T, S)`.

    Example:

    >>> import numpy as np
    >>> layer = RelativePositionBias(num_heads=2)
    >>> tuple(layer(np.ones((3, 5, 8)), np.ones((3, 7, 8))).shape)
    (1, 2, 5, 7)

    References:
        Raffel et al., "Exploring the Limits of Transfer Learning with a
        Unified Text-to-Text Transformer", 2020.
    """

    def __init__(
        self,
        num_heads,
        num_buckets=32,
        max_distance=128,
        bidirectional=True,
        embeddings_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.num_buckets = check_positive_int("num_buckets", num_buckets)
        self.max_distance = check_positive_int("max_distance", max_distance)
        self.bidirectional = bool(bidirectional)
        exact = self.num_buckets // (4 if self.bidirectional else 2)
        if exact < 1:
            raise ValueError(
                "`num_buckets` must be at least "
                f"{4 if self.bidirectional else 2} (bidirectional="
                f"{self.bidirectional}). Received: num_buckets={num_buckets}"
            )
        if self.max_distance <= exact:
            raise ValueError(
                f"`max_distance` must exceed the {exact} exactly bucketed "
                f"distances. Received: max_distance={max_distance}, "
                f"num_buckets={num_buckets}"
            )
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )

    def build(self, *args):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_buckets, self.num_heads),
            initializer=self.embeddings_initializer,
        )

    def position_bias(self):
        """The bias as a `keras_selfattn.ops.PositionBias` (differentiable
        in `embeddings`)."""
        # A tensor read of the variable (TensorFlow's custom gradient
        # cannot take a variable as an input).
        return relative_position_bias(
            ops.copy(self.embeddings),
            self.num_buckets,
            self.max_distance,
            self.bidirectional,
        )

    def call(self, query, key=None):
        key = query if key is None else key
        bias = self.position_bias().full(ops.shape(query)[1], ops.shape(key)[1])
        return ops.cast(bias[None], self.compute_dtype)

    def compute_output_shape(self, query_shape, key_shape=None):
        key_shape = query_shape if key_shape is None else key_shape
        return (1, self.num_heads, query_shape[1], key_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "num_buckets": self.num_buckets,
                "max_distance": self.max_distance,
                "bidirectional": self.bidirectional,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
