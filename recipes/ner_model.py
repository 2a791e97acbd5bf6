"""The NER recipe's model: token ids and their words' bytes through an
encoder (pretrained, or trained from scratch) to tag scores for a
linear-chain CRF or a softmax (see `recipes/ner.py`)."""

import keras

import keras_selfattn as ksa
from recipes import crf, tagger_inputs, tagging, training, word_vectors

# The character CNN: byte embedding width and filters.
CHAR_DIM, CHAR_FILTERS = 32, 64
# Width of the convolution over neighbouring tokens (from scratch).
LOCAL_CONTEXT = 3


def build_model(args, vocab_size, tag_names, encoder=None, vectors=None):
    """Token ids + their words' bytes (+ their words' vector ids) ->
    encoder -> tag scores: a linear-chain CRF's emissions (`args.output ==
    "crf"`, a `crf.CRFTagger`) or a softmax. The encoder is `encoder`
    (pretrained, `--init`) with the word features (`word_features`) beside
    its output, or else blocks trained from scratch over the embeddings
    and word features. `vectors` (`(words, dim)`, see
    `recipes.word_vectors`) adds a frozen word-vector lookup."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    word_chars = keras.Input(
        (None, tagger_inputs.MAX_WORD_BYTES), dtype="int32", name="word_chars"
    )
    inputs = {"token_ids": token_ids, "word_chars": word_chars}
    if vectors is not None:
        inputs["word_vector_ids"] = keras.Input(
            (None,), dtype="int32", name="word_vector_ids"
        )
    features = word_features(inputs, vectors)
    if encoder is None:
        x = scratch_encoder(token_ids, features, vocab_size, args)
    else:
        x, _ = training.encode_with(encoder, token_ids)
        x = keras.layers.Concatenate(name="features")([x, features])
        x = keras.layers.Dropout(args.dropout, name="head_dropout")(x)
    softmax = args.output == "softmax"
    scores = keras.layers.Dense(
        len(tag_names),
        activation="softmax" if softmax else None,
        dtype="float32",
        name="tags",
    )(x)
    if softmax:
        return keras.Model(inputs, scores, name="ner_tagger")
    scores = crf.LinearChainCRF(
        *tagging.allowed_transitions(tag_names), name="crf"
    )(scores)
    return crf.CRFTagger(inputs, scores, name="ner_tagger")


def learning_rate_scales(model, encoder, args):
    """`{variable path: factor}` for `optimizers.ScaledAdamW`: the weights
    of `model` that do not come from the pretrained `encoder` (character
    CNN, output) train at `args.new_layers_learning_rate`, the encoder's
    at `args.learning_rate`. `{}` from scratch or when the two are equal.
    """
    new_rate = args.new_layers_learning_rate
    if encoder is None or new_rate in (None, args.learning_rate):
        return {}
    pretrained = {id(v) for v in encoder.weights}
    return {
        v.path: new_rate / args.learning_rate
        for v in model.trainable_weights
        if id(v) not in pretrained
    }


def word_features(inputs, vectors=None):
    """What each token's word brings: its character features
    (`char_features`) and, given `vectors`, the word's pretrained vector
    (frozen; zeros for a word without one), `(B, L, CHAR_FILTERS [+
    dim])`."""
    chars = char_features(inputs["word_chars"])
    if vectors is None:
        return chars
    table = word_vectors.table_with_padding(vectors)
    lookup = keras.layers.Embedding(
        *table.shape, weights=table, trainable=False, name="word_vectors"
    )(inputs["word_vector_ids"])
    return keras.layers.Concatenate(name="word_features")([chars, lookup])


def char_features(word_chars):
    """`(B, L, bytes)` byte ids -> `(B, L, CHAR_FILTERS)`: a width-3 CNN
    over each token's word, its maximum over the bytes."""
    chars = keras.layers.Embedding(
        tagger_inputs.NUM_CHAR_IDS, CHAR_DIM, name="char_embedding"
    )(word_chars)
    chars = keras.layers.Conv2D(
        CHAR_FILTERS,
        (1, 3),
        padding="same",
        activation="relu",
        name="char_conv",
    )(chars)
    # A reduction, not `MaxPooling2D`: jax2onnx writes that as a MaxPool
    # over 4 axes, which onnxruntime cannot run.
    return keras.ops.max(chars, axis=2)


def scratch_encoder(token_ids, features, vocab_size, args):
    """Embeddings + word features, a local convolution and encoder
    blocks, trained from scratch."""
    padding_mask = keras.ops.not_equal(token_ids, 0)
    x = ksa.TokenAndPositionEmbedding(
        vocab_size,
        args.max_length,
        args.embedding_dim,
        name="token_embedding",
    )(token_ids)
    x = keras.layers.Concatenate(name="features")([x, features])
    x = keras.layers.Dense(args.embedding_dim, name="feature_projection")(x)
    x = keras.layers.Conv1D(
        args.embedding_dim,
        LOCAL_CONTEXT,
        padding="same",
        activation="gelu",
        name="local_context",
    )(x)
    x = keras.layers.LayerNormalization(name="embedding_norm")(x)
    x = keras.layers.Dropout(args.dropout, name="embedding_dropout")(x)
    return training.encoder_blocks(x, args, padding_mask)
