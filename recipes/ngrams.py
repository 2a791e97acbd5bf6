"""The wide half of the sentiment model: a linear score over the bag of
hashed token n-grams, trained with the Transformer (wide and deep, Cheng
et al. 2016; the bag of n-grams as in fastText, Joulin et al. 2016).

A linear model over word n-grams is the classic strong baseline on long
reviews (NBSVM, Wang and Manning 2012): it weighs every phrase it has seen
at once, where a small encoder learns slowly which few tokens to average.
Summed with the encoder's logit inside one Keras model, it trains in the
same steps, saves in the same .keras file and exports with it.
"""

import keras
from keras import ops

# 2**20 + 7, a prime: `(a * vocab + b) % BUCKETS` spreads the bigrams.
DEFAULT_BUCKETS = 1_048_583


@keras.saving.register_keras_serializable(package="recipes")
class NgramScore(keras.layers.Layer):
    """`sum(w[g] for g in ngrams(ids)) / sqrt(count)`: a linear score of
    the hashed unigrams and bigrams of each row of token ids.

    Unigram `a` has bucket `a`; bigram `(a, b)` has bucket `(a * vocab +
    b) % buckets` (int32-safe for a vocabulary below 46,341). Padding
    (id 0) and bigrams touching it count for nothing. Weights start at
    zero and are stored scaled by `learning_rate_scale`, so an optimizer
    built for the encoder moves them that many times faster (a sparse
    linear model needs larger steps than a network's dense weights).

    Args:
        vocab_size: the token ids' vocabulary.
        buckets: the weight table's size (unigrams and hashed bigrams).
        learning_rate_scale: the weights are `learning_rate_scale` times
            the stored variable.

    Call arguments:
        token_ids: int `(B, L)`, 0 for padding.

    Returns:
        float32 `(B, 1)`.

    Example:

    >>> import numpy as np
    >>> layer = NgramScore(vocab_size=10, buckets=101)
    >>> tuple(layer(np.array([[3, 4, 0], [5, 0, 0]])).shape)
    (2, 1)
    """

    def __init__(
        self,
        vocab_size,
        buckets=DEFAULT_BUCKETS,
        learning_rate_scale=10.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if vocab_size * vocab_size >= 2**31:
            raise ValueError(
                "`vocab_size` must be below 46,341 (bigram ids are int32). "
                f"Received: vocab_size={vocab_size}"
            )
        if buckets <= vocab_size:
            raise ValueError(
                "`buckets` must exceed `vocab_size` (unigrams have their "
                f"own buckets). Received: buckets={buckets}, "
                f"vocab_size={vocab_size}"
            )
        self.vocab_size = vocab_size
        self.buckets = buckets
        self.learning_rate_scale = float(learning_rate_scale)

    def build(self, input_shape=None):
        self.table = self.add_weight(
            shape=(self.buckets,), initializer="zeros", name="table"
        )
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")

    def call(self, token_ids):
        ids = ops.cast(token_ids, "int32")
        present = ops.cast(ids != 0, "float32")
        # Each position's bigram with the next token, the last one padding:
        # every tensor keeps the `(B, L)` shape (jax2onnx mislabels the
        # lengths of a slice and a concatenation of unequal ones).
        following = ops.roll(ids, -1, axis=1)
        following = ops.where(_is_last(ids), 0, following)
        bigrams = ids * self.vocab_size + following
        # The remainder from a floor division: jax2onnx cannot export a
        # `mod` over a dynamic batch axis.
        bigrams = bigrams - ops.floor_divide(bigrams, self.buckets) * (
            self.buckets
        )
        paired = present * ops.cast(following != 0, "float32")
        weights = ops.take(self.table, ids) * present
        weights = weights + ops.take(self.table, bigrams) * paired
        count = ops.sum(present, axis=1, keepdims=True)
        count = ops.maximum(count + ops.sum(paired, axis=1, keepdims=True), 1.0)
        total = ops.sum(weights, axis=1, keepdims=True)
        score = total / ops.sqrt(count) + self.bias
        return score * self.learning_rate_scale

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "buckets": self.buckets,
                "learning_rate_scale": self.learning_rate_scale,
            }
        )
        return config


def _is_last(ids):
    """True at each row's last position, `(1, L)`."""
    positions = ops.cumsum(ops.ones_like(ids[:1]), axis=1)
    return positions == ops.shape(ids)[1]
