"""Read GGUF files (llama.cpp's checkpoint format) into NumPy, and rebuild
the tokenizer their metadata describes.

A GGUF file holds metadata (the architecture's hyper-parameters under
`{architecture}.*`, the tokenizer under `tokenizer.*`) and tensors, many of
them quantized in blocks (Q4_1, Q8_0, ...). `read_gguf` returns the
metadata as Python values and every tensor dequantized to float32, in
NumPy's axis order (the reverse of the shape GGUF lists: a linear layer's
weight is `(out, in)`, as in PyTorch). The `gguf` package (llama.cpp's own
reader, `pip install gguf`) does the parsing and dequantizing.

`gguf_tokenizer` rebuilds a byte-level BPE tokenizer (`tokenizer.ggml.model
== "gpt2"`: GPT-2, SmolLM, Llama 3, ...) as a Hugging Face
`tokenizers.Tokenizer`: the vocabulary and merges from the metadata, the
pre-tokenizer split its `tokenizer.ggml.pre` names, and the control tokens
(`<|im_start|>`, ...) as special tokens that are never split. It gives the
ids Hugging Face transformers gives for the same file.

Example (a two-token file written with `gguf`'s writer):

>>> import tempfile, gguf
>>> path = Path(tempfile.mkdtemp()) / "tiny.gguf"
>>> writer = gguf.GGUFWriter(str(path), "llama")
>>> writer.add_block_count(1)
>>> writer.add_tensor("output_norm.weight", np.array([1.0, 2.0], "float32"))
>>> writer.write_header_to_file(); writer.write_kv_data_to_file()
>>> writer.write_tensors_to_file(); writer.close()
>>> metadata, tensors = read_gguf(path)
>>> metadata["general.architecture"], metadata["llama.block_count"]
('llama', 1)
>>> tensors["output_norm.weight"]
array([1., 2.], dtype=float32)
"""

import functools
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

# GGUF's token types (llama.cpp's `llama_token_type`).
CONTROL_TOKEN = 3
USER_DEFINED_TOKEN = 4

# Pre-tokenizer splits, by `tokenizer.ggml.pre`. GPT-2's regex is the one
# `pre_tokenizers.ByteLevel` applies itself (SmolLM's vocabulary has no
# multi-digit tokens, so it splits digits as its own pre-tokenizer does);
# Llama 3's is the one transformers and llama.cpp use for those names.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    None: None,
    "default": None,
    "gpt2": None,
    "smollm": None,
    "llama-bpe": LLAMA3_SPLIT,
    "llama3": LLAMA3_SPLIT,
    "llama-v3": LLAMA3_SPLIT,
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(
            "Reading GGUF files needs the `gguf` package: `pip install "
            "gguf` (or `pip install keras-selfattn[pretrained]`)."
        ) from None
    return gguf


def _check_path(path):
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            "`path` must be a GGUF file. Received: "
            f"path={str(path)!r} (no such file)"
        )
    return path


def _open(path):
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError) as err:
        raise ValueError(
            f"`path` must be a GGUF file. Received: path={str(path)!r} ({err})"
        ) from None


def _metadata(reader):
    """`{key: value}` of a reader's fields (GGUF's own header fields,
    `GGUF.*`, left out)."""
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


def read_gguf_metadata(path):
    """The metadata of the GGUF file at `path`: `{key: value}` with
    strings, numbers, booleans and lists of them."""
    return _metadata(_open(_check_path(path)))


def read_gguf(path):
    """The metadata and the float32 tensors of the GGUF file at `path`.

    Returns:
        `(metadata, tensors)`: `{key: value}` and `{tensor name: float32
        array}`, each array dequantized and in NumPy axis order (GGUF's
        listed shape reversed).

    Raises:
        ValueError: `path` is not a GGUF file.
        NotImplementedError: a tensor type `gguf` cannot dequantize.
    """
    gguf = _gguf()
    reader = _open(_check_path(path))
    tensors = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))
        tensors[tensor.name] = np.asarray(values, "float32").reshape(shape)
    return _metadata(reader), tensors


# --------------------------------------------------------------------------
# The tokenizer the metadata describes.
# --------------------------------------------------------------------------


@functools.cache
def byte_alphabet():
    """GPT-2's map from each byte to the printable character that spells
    it in a byte-level vocabulary (`Ġ` for a space)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    characters = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return {byte: chr(c) for byte, c in zip(printable, characters)}


def _byte_spelling(token, alphabet):
    """`token` spelled in the byte alphabet (llama.cpp writes some tokens,
    such as control ones, as plain text)."""
    if set(token) <= alphabet:
        return token
    spelling = byte_alphabet()
    return "".join(spelling[b] for b in token.encode("utf-8"))


def _pre_tokenizer(pre):
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ValueError(
            "The GGUF file's tokenizer splits text as "
            f"`tokenizer.ggml.pre`={pre!r}, which is not supported. "
            f"Supported: {sorted(p for p in PRE_TOKENIZER_SPLITS if p)}"
        )
    split = PRE_TOKENIZER_SPLITS[pre]
    if split is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def gguf_tokenizer(metadata):
    """The `tokenizers.Tokenizer` a GGUF file's metadata describes.

    Args:
        metadata: `read_gguf_metadata`'s result (or `read_gguf`'s first).

    Returns:
        A byte-level BPE `tokenizers.Tokenizer` that adds no special
        tokens of its own (a chat template writes them): control tokens
        are special (kept whole, dropped by `decode(...,
        skip_special_tokens=True)`), user-defined ones are kept whole.

    Raises:
        ValueError: the file has no tokenizer, or one that is not
            byte-level BPE, or a pre-tokenizer not in
            `PRE_TOKENIZER_SPLITS`.
    """
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            "Only byte-level BPE tokenizers (`tokenizer.ggml.model` = "
            "'gpt2') are rebuilt from GGUF metadata. Received: "
            f"tokenizer.ggml.model={kind!r}"
        )
    alphabet = set(byte_alphabet().values())
    tokens = list(metadata["tokenizer.ggml.tokens"])
    vocab = {_byte_spelling(t, alphabet): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    tokenizer = tokenizers.Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    types = metadata.get("tokenizer.ggml.token_type") or []
    # A control token spelled outside the byte alphabet is a mislabelled
    # piece of text in llama.cpp's files (transformers skips it too).
    tokenizer.add_special_tokens(
        [
            tokenizers.AddedToken(token, special=True, normalized=False)
            for token, kind in zip(tokens, types)
            if kind == CONTROL_TOKEN and set(token) <= alphabet
        ]
    )
    tokenizer.add_tokens(
        [
            tokenizers.AddedToken(token, special=False, normalized=False)
            for token, kind in zip(tokens, types)
            if kind == USER_DEFINED_TOKEN and token in vocab
        ]
    )
    return tokenizer
