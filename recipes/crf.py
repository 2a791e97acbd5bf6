"""A linear-chain CRF output for the NER tagger, on `keras.ops` (every
backend, `jit_compile=True`).

The tagger's last layer gives each token a score per tag (emissions);
`LinearChainCRF` adds learned scores for each tag-to-tag transition and
for the first tag, and `CRFTagger` trains them together by the sequence
negative log-likelihood instead of a per-token softmax. Only the labelled
tokens (the first sub-token of each word) form the chain: the others are
skipped, so transitions run from word to word. Transitions that the tag
scheme forbids (IOB2: `I-X` only after `B-X` or `I-X`) get a fixed large
penalty in training and are never decoded.

    >>> import numpy as np
    >>> crf = LinearChainCRF(allowed=np.ones((2, 2), bool),
    ...                      allowed_start=np.ones(2, bool))
    >>> emissions = np.array([[[2.0, 0.0], [0.0, 1.0]]], "float32")
    >>> tags = np.array([[0, 1]])
    >>> loss = crf.negative_log_likelihood(tags, emissions)
    >>> round(float(keras.ops.convert_to_numpy(loss)[0]), 4)
    0.4402
"""

import keras
import numpy as np
from keras import ops

from keras_selfattn import text
from recipes import tagging

# Score of a forbidden transition: large enough that no path uses one, and
# finite, so nothing turns into NaN.
FORBIDDEN = -1e4


def sequence_log_likelihood(emissions, tags, labelled, transitions, start):
    """Log-likelihood of the tag path `tags` under a linear-chain CRF.

    Args:
        emissions: float `(B, L, C)` per-token tag scores.
        tags: int `(B, L)` tag ids (any value where not labelled).
        labelled: bool `(B, L)`: the tokens that form the chain; the others
            are skipped (the chain runs from one labelled token to the next).
        transitions: float `(C, C)`, score of tag `j` right after tag `i`.
        start: float `(C,)`, score of the first tag.

    Returns:
        float `(B,)`: score(tags) - log sum over all paths of exp(score);
        0 for a row with no labelled token.
    """
    emissions = ops.cast(emissions, "float32")
    transitions = ops.convert_to_tensor(transitions, "float32")
    start = ops.convert_to_tensor(start, "float32")
    labelled = ops.convert_to_tensor(labelled, "bool")
    num_tags = ops.shape(emissions)[-1]
    batch = ops.shape(emissions)[0]
    tags = ops.where(labelled, tags, 0)
    one_hot = ops.one_hot(tags, num_tags, dtype="float32")

    def step(carry, inputs):
        log_alpha, previous, started, path_score = carry
        scores, tag, is_labelled = inputs
        # Forward algorithm: log sum over paths ending in each tag.
        moved = ops.logsumexp(log_alpha[:, :, None] + transitions, axis=1)
        first = start[None, :] + ops.zeros_like(moved)
        new_alpha = ops.where(started[:, None], moved, first) + scores
        # Score of the given path.
        step_in = ops.where(
            started,
            ops.sum((previous @ transitions) * tag, axis=-1),
            ops.sum(start[None, :] * tag, axis=-1),
        )
        new_path = path_score + step_in + ops.sum(scores * tag, axis=-1)
        keep = is_labelled[:, None]
        carry = (
            ops.where(keep, new_alpha, log_alpha),
            ops.where(keep, tag, previous),
            ops.logical_or(started, is_labelled),
            ops.where(is_labelled, new_path, path_score),
        )
        return carry, None

    init = (
        ops.zeros((batch, num_tags), "float32"),
        ops.zeros((batch, num_tags), "float32"),
        ops.zeros((batch,), "bool"),
        ops.zeros((batch,), "float32"),
    )
    time_major = (
        ops.transpose(emissions, (1, 0, 2)),
        ops.transpose(one_hot, (1, 0, 2)),
        ops.transpose(labelled, (1, 0)),
    )
    log_alpha, _, started, path_score = scan_carry(step, init, time_major)
    log_partition = ops.logsumexp(log_alpha, axis=-1)
    return ops.where(started, path_score - log_partition, 0.0)


def scan_carry(step, init, xs):
    """The final carry of `ops.scan(step, init, xs)` (`step` returns
    `(carry, None)`). On TensorFlow it is a while loop bounded by the
    length, which XLA needs to differentiate through a loop whose length
    is only known when it compiles."""
    if keras.backend.backend() != "tensorflow":
        return ops.scan(step, init, xs)[0]
    length = ops.shape(xs[0])[0]

    def body(i, carry):
        return i + 1, step(carry, tuple(x[i] for x in xs))[0]

    _, carry = ops.while_loop(
        lambda i, carry: i < length,
        body,
        (0, init),
        maximum_iterations=length,
    )
    return carry


@keras.saving.register_keras_serializable(package="keras_selfattn_recipes")
class LinearChainCRF(keras.layers.Layer):
    """Learned tag-transition and first-tag scores of a linear-chain CRF.

    Called on the per-token tag scores `(B, L, C)`, it returns them as they
    are (it only holds the CRF's weights in the model); the loss is
    `negative_log_likelihood` and decoding is Viterbi over the emissions
    with `transition_scores()`.

    Args:
        allowed: bool `(C, C)`, `allowed[i, j]`: tag `j` may follow tag `i`.
        allowed_start: bool `(C,)`: tags a sequence may start with.
    """

    def __init__(self, allowed, allowed_start, **kwargs):
        super().__init__(**kwargs)
        self.allowed = np.asarray(allowed, dtype=bool)
        self.allowed_start = np.asarray(allowed_start, dtype=bool)
        num_tags = len(self.allowed_start)
        if self.allowed.shape != (num_tags, num_tags):
            raise ValueError(
                "`allowed` must be (num_tags, num_tags) with num_tags = "
                f"len(allowed_start) = {num_tags}. Received: allowed of "
                f"shape {self.allowed.shape}"
            )
        self.num_tags = num_tags
        self.transitions = self.add_weight(
            (num_tags, num_tags), initializer="zeros", name="transitions"
        )
        self.start = self.add_weight(
            (num_tags,), initializer="zeros", name="start"
        )

    def build(self, input_shape):
        if input_shape[-1] != self.num_tags:
            raise ValueError(
                f"LinearChainCRF expects {self.num_tags} tag scores per "
                f"token. Received: input shape {input_shape}"
            )

    def call(self, emissions):
        return emissions

    def compute_output_shape(self, input_shape):
        return input_shape

    def scores(self):
        """`(transitions, start)` with the forbidden moves penalised, as
        tensors (differentiable)."""
        transitions = ops.where(
            self.allowed, ops.cast(self.transitions, "float32"), FORBIDDEN
        )
        start = ops.where(
            self.allowed_start, ops.cast(self.start, "float32"), FORBIDDEN
        )
        return transitions, start

    def transition_scores(self):
        """`(transitions, start)` as NumPy arrays for Viterbi decoding,
        forbidden moves at `-inf`."""
        transitions, start = (ops.convert_to_numpy(s) for s in self.scores())
        return tagging.forbid_moves(
            transitions, start, self.allowed, self.allowed_start
        )

    def negative_log_likelihood(self, tags, emissions):
        """`(B,)` negative log-likelihood of each row's labelled tags
        (`text.IGNORE_INDEX` marks tokens outside the chain)."""
        tags = ops.convert_to_tensor(tags)
        labelled = ops.not_equal(tags, text.IGNORE_INDEX)
        transitions, start = self.scores()
        return -sequence_log_likelihood(
            emissions, tags, labelled, transitions, start
        )

    def get_config(self):
        return {
            **super().get_config(),
            "allowed": self.allowed.tolist(),
            "allowed_start": self.allowed_start.tolist(),
        }


def find_crf(model):
    """The model's `LinearChainCRF` layer, or None."""
    found = [x for x in model.layers if isinstance(x, LinearChainCRF)]
    return found[0] if found else None


@keras.saving.register_keras_serializable(package="keras_selfattn_recipes")
class CRFTagger(keras.Model):
    """A functional tagger with a `LinearChainCRF` on its output, trained
    by the CRF's sequence negative log-likelihood averaged over the
    labelled tokens of the batch (so its scale matches a per-token
    cross-entropy). Build it like `keras.Model(inputs, outputs)`; compile
    it with no `loss`."""

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        total = ops.sum(find_crf(self).negative_log_likelihood(y, y_pred))
        tokens = ops.sum(
            ops.cast(ops.not_equal(y, text.IGNORE_INDEX), "float32")
        )
        loss = total / ops.maximum(tokens, 1.0)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss
