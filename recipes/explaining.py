"""Where the sentiment model looks: the attention probabilities of its
last encoder block, drawn as a heat map (`predict --explain`)."""

import keras

import keras_selfattn as ksa


def last_attention(model, ids):
    """Attention probabilities `(B, heads, L, L)` of the last encoder block,
    by running the encoder's layers in order (embeddings, then blocks). The
    blocks are the model's own, or those of its pretrained encoder."""
    padding = ids != 0
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    encoder = nested[0] if nested else model
    encoders = [
        layer
        for layer in encoder.layers
        if isinstance(layer, ksa.TransformerEncoder)
    ]
    if not encoders:
        raise ValueError(
            f"Model {model.name!r} has no encoder blocks (trained with "
            "--no-encoder?): it has no attention to draw"
        )
    if nested:  # keras_selfattn.pretrained names its embedding stack
        embeddings = encoder.get_layer("embeddings_dropout").output
        inputs = {"token_ids": ids, "padding_mask": padding}
    else:
        embeddings = encoder.get_layer("embedding").output
        inputs = ids
    hidden = keras.Model(encoder.input, embeddings)(inputs)
    for block in encoders[:-1]:
        hidden = block(hidden, padding_mask=padding)
    _, scores = encoders[-1](
        hidden, padding_mask=padding, return_attention_scores=True
    )
    return keras.ops.convert_to_numpy(scores)


def attention_heat_map(model, tokenizer, ids, path):
    """Write to `path` a heat map of how much attention each token of one
    encoded review (`ids`, `(1, L)` padded) receives in the last encoder
    block (mean over heads and over the review's tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = int((ids != 0).sum())
    ids = ids[:, :length]
    weights = last_attention(model, ids)[0]
    received = weights.mean(axis=(0, 1))
    tokens = [tokenizer.id_to_token(int(i)) for i in ids[0, :length]]
    fig, axis = plt.subplots(figsize=(max(4, 0.45 * length), 1.8))
    axis.imshow(received[None, :], cmap="Reds", aspect="auto")
    axis.set_xticks(range(length), tokens, rotation=60, ha="right")
    axis.set_yticks([])
    axis.set_title("attention received (last encoder, mean over heads)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
