"""An independent float64 NumPy BERT encoder (Devlin et al. 2019), read
straight from the checkpoint's tensor names: the parity oracle for
`keras_selfattn.pretrained`.

Embeddings: word + position + token type (all type 0), LayerNorm. Each
layer: multi-head self-attention over the unpadded keys, dense, residual,
LayerNorm; then dense, exact GELU `0.5 x (1 + erf(x / sqrt 2))`, dense,
residual, LayerNorm.
"""

import math

import numpy as np
from support import numpy_attention

_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * gamma + beta


def linear(x, tensors, name):
    """torch `Linear`: `x @ weight.T + bias`."""
    return x @ tensors[name + ".weight"].T + tensors[name + ".bias"]


def bert_hidden_states(tensors, config, token_ids, padding_mask):
    """Last hidden states `(B, L, hidden)` in float64.

    `tensors`: checkpoint name -> array; `config`: the parsed config.json.
    """
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    batch, length = token_ids.shape
    x = (
        t["embeddings.word_embeddings.weight"][token_ids]
        + t["embeddings.position_embeddings.weight"][:length]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(
        x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps
    )
    key_mask = np.asarray(padding_mask, bool)[:, None, None, :]
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(y):
            return y.reshape(batch, length, heads, -1)

        q, k, v = (
            split(linear(x, t, f"{p}attention.self.{part}"))
            for part in ("query", "key", "value")
        )
        context, _ = numpy_attention(q, k, v, mask=key_mask)
        attended = linear(
            context.reshape(batch, length, -1), t, f"{p}attention.output.dense"
        )
        x = layer_norm(
            x + attended,
            t[f"{p}attention.output.LayerNorm.weight"],
            t[f"{p}attention.output.LayerNorm.bias"],
            eps,
        )
        hidden = gelu(linear(x, t, f"{p}intermediate.dense"))
        x = layer_norm(
            x + linear(hidden, t, f"{p}output.dense"),
            t[f"{p}output.LayerNorm.weight"],
            t[f"{p}output.LayerNorm.bias"],
            eps,
        )
    return x
