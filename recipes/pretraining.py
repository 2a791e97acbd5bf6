"""In-domain masked-language-model pretraining of a recipe's encoder on
its own training texts, before fine-tuning (BERT's objective, Devlin et
al. 2019): 15% of the word tokens of each row are picked; 80% of those
become `[MASK]`, 10% a random token, 10% stay; the encoder learns to
predict the picked tokens. A fresh draw each epoch.

Only the picked positions reach the output layer, at most `MAX_PICKS`
a row, so a 20,000-token vocabulary costs `rows x picks`, not `rows x
length`, logits.

    >>> ids = np.array([[2, 10, 11, 12, 3, 0]])
    >>> masked, positions, targets = mask_tokens(
    ...     ids, np.random.default_rng(0), vocab_size=20, max_picks=2,
    ...     rate=0.5)
    >>> positions.tolist(), targets.tolist()  # 2 of the 3 words
    ([[2, 3]], [[11, 12]])
    >>> masked.tolist()  # both became [MASK] (id 4)
    [[2, 10, 4, 4, 3, 0]]
"""

import keras
import numpy as np

from keras_selfattn import distribution, text
from recipes import batching

# Share of word tokens picked, and how the picked are replaced.
PICK_RATE = 0.15
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
MASK_ID = text.SPECIAL_TOKENS.index(text.MASK_TOKEN)
# Picks a row at most: the softmax over the vocabulary at each pick is
# most of a step's time (torch, CPU: 32 rows of 512 tokens and 20,000
# token ids, 1.06 s a step with 77 picks a row, 0.34 s with 20, 0.12 s
# for the encoder alone).
MAX_PICKS = 20


def mask_tokens(ids, rng, vocab_size, max_picks, rate=PICK_RATE):
    """BERT's masking of `ids` (`(n, L)`, 0 = padding; ids below
    `len(text.SPECIAL_TOKENS)` are special and never picked).

    Returns:
        `(masked_ids, positions, targets)`: the ids with the picked tokens
        replaced; per row the picked positions in order, `(n, min(L,
        max_picks))` (0 after the last picked), and their original ids
        (`text.IGNORE_INDEX` after the last).
    """
    ids = np.asarray(ids)
    length = ids.shape[1]
    words = ids >= len(text.SPECIAL_TOKENS)
    count = np.minimum(np.ceil(words.sum(1) * rate).astype(int), max_picks)
    # Each row's word positions in a random order; the first `count` win.
    order = np.argsort(np.where(words, rng.random(ids.shape), 2.0), axis=1)
    width = min(max_picks, length)
    picked = np.arange(width)[None, :] < count[:, None]
    positions = np.sort(np.where(picked, order[:, :width], length), axis=1)
    positions = np.where(picked, positions, 0)
    rows = np.arange(len(ids))[:, None]
    original = ids[rows, positions]
    draw = rng.random(positions.shape)
    random_ids = rng.integers(len(text.SPECIAL_TOKENS), vocab_size, draw.shape)
    replacement = np.where(
        draw < MASK_SHARE + RANDOM_SHARE, random_ids, original
    )
    replacement = np.where(draw < MASK_SHARE, MASK_ID, replacement)
    masked = ids.copy()
    masked[rows, positions] = np.where(picked, replacement, original)
    targets = np.where(picked, original, text.IGNORE_INDEX)
    return masked, positions, targets


class PickPositions(keras.layers.Layer):
    """`(states (B, L, D), positions (B, P))` -> the states at the
    positions, `(B, P, D)`."""

    def call(self, states, positions):
        shape = keras.ops.shape(positions) + (keras.ops.shape(states)[-1],)
        index = keras.ops.broadcast_to(positions[..., None], shape)
        return keras.ops.take_along_axis(states, index, axis=1)

    def compute_output_shape(self, states_shape, positions_shape):
        return (*positions_shape, states_shape[-1])


def masked_lm(encoder, vocab_size):
    """`encoder` (token ids -> `(B, L, D)` states) with BERT's output
    layers over the picked positions: `{"token_ids", "positions"}` ->
    logits `(B, P, vocab_size)`."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    positions = keras.Input((None,), dtype="int32", name="positions")
    states = PickPositions(name="picked")(encoder(token_ids), positions)
    width = states.shape[-1]
    x = keras.layers.Dense(width, activation="gelu", name="mlm_dense")(states)
    x = keras.layers.LayerNormalization(name="mlm_norm")(x)
    logits = keras.layers.Dense(vocab_size, dtype="float32", name="mlm_logits")
    return keras.Model(
        {"token_ids": token_ids, "positions": positions},
        logits(x),
        name="masked_lm",
    )


def pretrain(run, encoder, ids, vocab_size, buckets, epochs):
    """Train `encoder` (its weights are the fine-tuned model's) as a
    masked language model on `ids` (`(n, L)` training rows) for `epochs`,
    a fresh masking each epoch, at `run`'s batch size and learning rate
    (warm-up and cosine decay); prints the loss per epoch and returns
    them."""
    model = masked_lm(encoder, vocab_size)
    max_picks = min(MAX_PICKS, int(np.ceil(ids.shape[1] * PICK_RATE)))
    rng = np.random.default_rng(run.args.seed)
    losses = []
    for epoch in range(epochs):
        masked, positions, targets = mask_tokens(
            ids, rng, vocab_size, max_picks
        )
        batches = batching.make_batches(
            {"token_ids": masked, "positions": positions},
            targets,
            run.args.batch_size,
            buckets,
            shuffle=True,
            seed=run.args.seed + epoch,
            multiple_of=distribution.batch_shards(),
        )
        if epoch == 0:
            run.compile(
                model,
                steps=len(batches) * epochs,
                weight_decay=0.01,
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True, ignore_class=text.IGNORE_INDEX
                ),
            )
        history = model.fit(batches, epochs=1, verbose=2).history
        losses.append(float(history["loss"][-1]))
        print(f"masked-LM epoch {epoch + 1}: loss {losses[-1]:.4f}")
    return losses
