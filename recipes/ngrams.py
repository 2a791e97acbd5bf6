"""The wide half of the sentiment model: a linear score over the bag of
hashed token n-grams, trained with the Transformer (wide and deep, Cheng
et al. 2016; the bag of n-grams as in fastText, Joulin et al. 2016).

A linear model over n-grams is the classic strong baseline on long
reviews: NBSVM (Wang and Manning 2012) weighs each n-gram's presence by
its naive Bayes log-count ratio, `log((p_g / |p|) / (q_g / |q|))` with
`p`, `q` the (add-one) counts of reviews holding `g` per class, and
learns a linear model on those features. `NgramScore.adapt` counts the
ratios on the training reviews; the per-n-gram weights then train with
the encoder, in the same steps, and save and export in the same .keras
file.
"""

import keras
import numpy as np
from keras import ops

# 2**20 + 7, a prime: `(a * vocab + b) % BUCKETS` spreads the bigrams.
DEFAULT_BUCKETS = 1_048_583

# How a score weighs the n-grams: "naive_bayes" (binary presence times
# the log-count ratio and a trained weight) or "sqrt_count" (each
# occurrence's trained weight, the sum over sqrt(count)), the form saved
# before "naive_bayes" existed.
WEIGHTINGS = ("naive_bayes", "sqrt_count")


@keras.saving.register_keras_serializable(package="recipes")
class NgramScore(keras.layers.Layer):
    """A linear score of the hashed unigrams and bigrams of each row of
    token ids.

    Unigram `a` has bucket `a`; bigram `(a, b)` has bucket `(a * vocab +
    b) % buckets` (int32-safe for a vocabulary below 46,341). Padding
    (id 0) and bigrams touching it count for nothing.

    `weighting="naive_bayes"` (NBSVM): `sum(w[g] * r[g] for g in
    set(ngrams(ids))) + bias`, each n-gram counted once, `r` the naive
    Bayes log-count ratios from `adapt` (a non-trainable weight; zero
    until adapted), `w` trained from zero. `"sqrt_count"`: `sum(w[g] for
    g in ngrams(ids)) / sqrt(count) + bias`. Either way the trained
    weights are `learning_rate_scale` times the stored variables, so an
    optimizer built for the encoder moves them that many times faster.

    Args:
        vocab_size: the token ids' vocabulary.
        buckets: the weight table's size (unigrams and hashed bigrams).
        learning_rate_scale: the weights are `learning_rate_scale` times
            the stored variables.
        weighting: `"naive_bayes"` or `"sqrt_count"`.

    Call arguments:
        token_ids: int `(B, L)`, 0 for padding.

    Returns:
        float32 `(B, 1)`.

    Example:

    >>> import numpy as np
    >>> layer = NgramScore(vocab_size=10, buckets=101)
    >>> ids, labels = np.array([[3, 4, 0], [5, 0, 0]]), np.array([1, 0])
    >>> layer.adapt(ids, labels)
    >>> tuple(layer(ids).shape)
    (2, 1)
    """

    def __init__(
        self,
        vocab_size,
        buckets=DEFAULT_BUCKETS,
        learning_rate_scale=1.0,
        weighting="naive_bayes",
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
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"`weighting` must be one of {WEIGHTINGS}. Received: "
                f"weighting={weighting!r}"
            )
        self.vocab_size = vocab_size
        self.buckets = buckets
        self.learning_rate_scale = float(learning_rate_scale)
        self.weighting = weighting

    def build(self, input_shape=None):
        self.table = self.add_weight(
            shape=(self.buckets,), initializer="zeros", name="table"
        )
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")
        if self.weighting == "naive_bayes":
            self.log_count_ratio = self.add_weight(
                shape=(self.buckets,),
                initializer="zeros",
                trainable=False,
                name="log_count_ratio",
            )

    def adapt(self, token_ids, labels, batch_size=1024):
        """Set the naive Bayes log-count ratios from training rows:
        `token_ids` int `(N, L)`, `labels` `(N,)` of 0/1. Each n-gram
        counts once per row; add-one smoothing."""
        if self.weighting != "naive_bayes":
            raise ValueError(
                "`adapt` sets naive Bayes ratios; this layer has "
                f"weighting={self.weighting!r}"
            )
        labels = np.asarray(labels).astype(bool).reshape(-1)
        counts = np.ones((2, self.buckets))
        for start in range(0, len(labels), batch_size):
            ids = ops.cast(token_ids[start : start + batch_size], "int32")
            grams, first = map(ops.convert_to_numpy, _distinct(self, ids))
            rows = labels[start : start + batch_size]
            for label in (False, True):
                kept = grams[rows == label][first[rows == label]]
                counts[int(label)] += np.bincount(kept, minlength=self.buckets)
        shares = counts / counts.sum(axis=1, keepdims=True)
        if not self.built:
            self.build()
        self.log_count_ratio.assign(np.log(shares[1] / shares[0]))

    def call(self, token_ids):
        ids = ops.cast(token_ids, "int32")
        if self.weighting == "sqrt_count":
            return self._sqrt_count_score(ids) * self.learning_rate_scale
        grams, first = _distinct(self, ids)
        weights = _lookup(self.table, grams)
        weights = weights * _lookup(self.log_count_ratio, grams)
        weights = ops.where(first, weights, 0.0)
        total = ops.sum(weights, axis=tuple(range(1, len(weights.shape))))
        total = ops.expand_dims(total, 1)
        return (total + self.bias) * self.learning_rate_scale

    def _sqrt_count_score(self, ids):
        bigrams, paired = _bigrams(self, ids)
        present = ops.cast(ids != 0, "float32")
        paired = ops.cast(paired, "float32")
        weights = _lookup(self.table, ids) * present
        weights = weights + _lookup(self.table, bigrams) * paired
        count = ops.sum(present, axis=1, keepdims=True)
        count = ops.maximum(count + ops.sum(paired, axis=1, keepdims=True), 1.0)
        total = ops.sum(weights, axis=1, keepdims=True)
        return total / ops.sqrt(count) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "buckets": self.buckets,
                "learning_rate_scale": self.learning_rate_scale,
                "weighting": self.weighting,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Saved before `weighting` existed: the sqrt-count score.
        return cls(**{"weighting": "sqrt_count", **config})


def _lookup(vector, ids):
    """`vector[ids]`, as an embedding lookup (a one-column table, axis 0):
    torch's ONNX export writes a 1-D `take` with a Squeeze that
    onnxruntime rejects for any index count but one."""
    table = ops.reshape(vector, (-1, 1))
    return ops.take(table, ids, axis=0)[..., 0]


def _bigrams(layer, ids):
    """Each position's bigram bucket with the next token, and whether
    both are tokens (not padding, not past the end); `(B, L)` each: every
    tensor keeps that shape (jax2onnx mislabels the lengths of a slice
    and a concatenation of unequal ones)."""
    following = ops.roll(ids, -1, axis=1)
    following = ops.where(_is_last(ids), 0, following)
    bigrams = ids * layer.vocab_size + following
    # The remainder from a floor division: jax2onnx cannot export a `mod`
    # over a dynamic batch axis.
    bigrams = bigrams - ops.floor_divide(bigrams, layer.buckets) * (
        layer.buckets
    )
    return bigrams, ops.logical_and(ids != 0, following != 0)


def _distinct(layer, ids, pairwise=None):
    """Each row's n-gram buckets and where each distinct one first
    appears (padding and bigrams touching it never): `(B, 2L)` each, or
    `(B, 2, L)` (unigrams, then bigrams) when `pairwise`.

    By sorting the buckets; or (`pairwise`, O(L^2)) by comparing each
    with those before it, which jax2onnx exports over a length known
    only when served (its sort needs a fixed length, and it mislabels
    the length of a concatenation). None: pairwise exactly where JAX
    traces a symbolic length (an ONNX export)."""
    bigrams, paired = _bigrams(layer, ids)
    bigrams = ops.where(paired, bigrams, 0)
    if pairwise is None:
        pairwise = keras.backend.backend() == "jax" and not isinstance(
            ids.shape[1], int
        )
    if pairwise:
        grams = ops.stack([ids, bigrams], axis=1)
        position = ops.cumsum(ops.ones_like(ids[:1]), axis=1)
        order = ops.stack([position, position + 2**24], axis=1)  # (1, 2, L)
        earlier = order[:, :, :, None, None] > order[:, None, None, :, :]
        same = grams[:, :, :, None, None] == grams[:, None, None, :, :]
        seen = ops.logical_and(same, earlier)
        seen = ops.any(ops.any(seen, axis=4), axis=3)
        return grams, ops.logical_and(ops.logical_not(seen), grams != 0)
    grams = ops.sort(ops.concatenate([ids, bigrams], axis=1), axis=1)
    # Sorted, each row starts with a 0 (its last position has no bigram),
    # so the roll's wrapped-around first entry is always hidden.
    before = ops.roll(grams, 1, axis=1)
    return grams, ops.logical_and(grams != before, grams != 0)


def _is_last(ids):
    """True at each row's last position, `(1, L)`."""
    positions = ops.cumsum(ops.ones_like(ids[:1]), axis=1)
    return positions == ops.shape(ids)[1]
