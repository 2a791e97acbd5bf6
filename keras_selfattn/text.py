"""Text pipeline on Hugging Face `tokenizers` (Rust): train, load, save,
batch-encode to NumPy, and align word labels with sub-word tokens (NER).

Only `numpy` and `tokenizers` are used here (no Keras): the ids this module
produces feed `keras.layers.Embedding(mask_zero=True)`, so the padding id
is always 0.

Classification:

>>> from keras_selfattn import text
>>> corpus = ["a good movie", "a bad movie", "good acting, bad plot"] * 5
>>> tok = text.train_tokenizer(corpus, vocab_size=100, min_frequency=1)
>>> ids = text.encode_texts(tok, ["a good plot"], max_length=6)
>>> [tok.id_to_token(i) for i in ids[0]]
['[CLS]', 'a', 'good', 'plot', '[SEP]', '[PAD]']

Tagging (the first sub-token of each word carries its label):

>>> enc = text.encode_words(tok, [["good", "acting"]], max_length=5)
>>> enc.word_ids.tolist()
[[-1, 0, 1, -1, -1]]
>>> text.align_labels(enc.word_ids, [[3, 4]]).tolist()
[[-100, 3, 4, -100, -100]]
>>> text.labels_to_words(enc.word_ids, [[0, 3, 4, 0, 0]], [2])
[[3, 4]]
"""

import collections
import hashlib
import json
import numbers
from pathlib import Path

import numpy as np
import tokenizers

from keras_selfattn._validation import check_choice, check_positive_int
from keras_selfattn.downloads import atomic_write

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
# Order matters: the trainers give these ids 0..4, so [PAD] is 0.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
PAD_ID = 0
IGNORE_INDEX = -100

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")
# head+tail keeps the first quarter and the last three quarters of the
# budget, after Sun et al. 2019 ("How to Fine-Tune BERT for Text
# Classification": 128 head + 382 tail tokens was best on IMDB).
DEFAULT_HEAD_FRACTION = 0.25
_CACHE_FORMAT = "keras_selfattn.text/v1"
_CHUNK_SIZE = 2048

WordEncoding = collections.namedtuple(
    "WordEncoding", ["ids", "word_ids", "offsets"]
)
WordEncoding.__doc__ = """Pre-tokenized words encoded for tagging.

ids: int32 `(n, max_length)`, padded with 0.
word_ids: int32 `(n, max_length)`: index of the input word each token
    comes from; -1 for special tokens and padding.
offsets: int32 `(n, max_length, 2)`: character `(start, end)` of each
    token inside its own word; `(0, 0)` for special tokens and padding.
"""

TextWordEncoding = collections.namedtuple(
    "TextWordEncoding", ["ids", "word_ids", "word_spans"]
)
TextWordEncoding.__doc__ = """Raw texts encoded for tagging.

ids: int32 `(n, max_length)`, padded with 0.
word_ids: int32 `(n, max_length)`: index into `word_spans[i]` of the word
    each token belongs to; -1 for special tokens and padding.
word_spans: per text, a list of `(start, end)` character offsets into the
    raw text, one per word found by the pre-tokenizer, including words
    truncated away (they have no token in `ids`).
"""


# --------------------------------------------------------------------------
# Argument checks (Keras style: name the argument and the value received).
# --------------------------------------------------------------------------


def _check_tokenizer(tokenizer):
    if not isinstance(tokenizer, tokenizers.Tokenizer):
        raise TypeError(
            "`tokenizer` must be a `tokenizers.Tokenizer`. "
            f"Received: tokenizer={type(tokenizer).__name__}"
        )


def _check_texts(name, texts):
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"`{name}` must be a list of str, not a single string. "
            f"Received: {name}={texts[:40]!r}"
        )
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(
                f"`{name}` must be a list of str. Received: {name}[{i}]="
                f"{t!r} of type {type(t).__name__}"
            )
    return texts


def _check_sentences(sentences):
    if isinstance(sentences, (str, bytes)):
        raise TypeError(
            "`sentences` must be a list of lists of words. "
            f"Received: sentences={sentences[:40]!r}"
        )
    out = []
    for i, words in enumerate(sentences):
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise TypeError(
                "`sentences` must be a list of lists of str (words). "
                f"Received: sentences[{i}]={words!r}"
            )
        out.append(list(words))
    return out


def _check_pad_id(tokenizer):
    """The pad token must be id 0: the layers rely on `mask_zero=True`."""
    padding = tokenizer.padding
    if padding is not None:
        pad_token, pad_id = padding["pad_token"], padding["pad_id"]
    else:
        pad_token = next(
            (
                t
                for t in (PAD_TOKEN, "<pad>")
                if tokenizer.token_to_id(t) is not None
            ),
            None,
        )
        pad_id = None if pad_token is None else tokenizer.token_to_id(pad_token)
    if pad_id != PAD_ID:
        raise ValueError(
            "`tokenizer` must have its padding token at id 0 (the layers "
            "use `mask_zero=True`). Received: tokenizer with pad token "
            f"{pad_token!r} at id {pad_id}"
        )
    return pad_token


# --------------------------------------------------------------------------
# Train / load / save.
# --------------------------------------------------------------------------


def train_tokenizer(texts, vocab_size=16000, lowercase=True, min_frequency=2):
    """Train a BERT-style WordPiece tokenizer on `texts` (pass the training
    split only).

    Normalizer: `BertNormalizer` (cleans control characters, spaces around
    CJK characters, optional lowercasing, NFD + accent stripping with it);
    pre-tokenizer: `BertPreTokenizer` (whitespace and punctuation); post
    processor: `[CLS] text [SEP]`. Special tokens get ids `[PAD]`=0,
    `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4.

    Args:
        texts: list of str.
        vocab_size: size of the vocabulary, special tokens included.
        lowercase: lowercase the text (`False` for cased NER); accents are
            stripped with it, as in BERT.
        min_frequency: minimum count of a merged pair.

    Returns:
        A `tokenizers.Tokenizer`.

    >>> tok = train_tokenizer(["Hello world!"] * 3, vocab_size=60,
    ...                       min_frequency=1)
    >>> tok.encode("hello world").tokens
    ['[CLS]', 'hello', 'world', '[SEP]']
    >>> tok.token_to_id("[PAD]")
    0
    """
    texts = _check_texts("texts", texts)
    if not texts:
        raise ValueError("`texts` must not be empty. Received: texts=[]")
    vocab_size = check_positive_int("vocab_size", vocab_size)
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"`vocab_size` must be larger than the {len(SPECIAL_TOKENS)} "
            f"special tokens. Received: vocab_size={vocab_size}"
        )
    min_frequency = check_positive_int("min_frequency", min_frequency)

    specials = list(SPECIAL_TOKENS)
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordPiece(unk_token=UNK_TOKEN)
    )
    trainer = tokenizers.trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        limit_alphabet=1000,
        show_progress=False,
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix="##")
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=None,  # follows `lowercase`
        lowercase=lowercase,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, token in enumerate(specials):
        if tokenizer.token_to_id(token) != i:  # guards the [PAD]=0 contract
            raise RuntimeError(f"{token} did not get id {i} in training.")
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        pair=f"{CLS_TOKEN} $A {SEP_TOKEN} $B:1 {SEP_TOKEN}:1",
        special_tokens=[
            (CLS_TOKEN, tokenizer.token_to_id(CLS_TOKEN)),
            (SEP_TOKEN, tokenizer.token_to_id(SEP_TOKEN)),
        ],
    )
    return tokenizer


def load_tokenizer(path):
    """Load a `tokenizer.json` (a file, or a directory that holds one),
    e.g. the BERT uncased tokenizer of a sentence-transformers model.

    The pad token must have id 0. Truncation and padding stored in the file
    are kept in the object but ignored by the `encode_*` functions, which
    set their own.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"`path` must be a tokenizer.json file or a directory holding "
            f"one. Received: path={str(path)!r} (not found)"
        )
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    _check_pad_id(tokenizer)
    return tokenizer


def save_tokenizer(tokenizer, path):
    """Save `tokenizer` as JSON to `path` (a file, or a directory that gets
    a `tokenizer.json`), atomically. Returns the file path."""
    _check_tokenizer(tokenizer)
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path, lambda tmp: Path(tmp).write_text(tokenizer.to_str(), "utf-8")
    )
    return path


# --------------------------------------------------------------------------
# Encoding.
# --------------------------------------------------------------------------


def _fresh_copy(tokenizer_json):
    """A private tokenizer with no truncation or padding configured."""
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _special_affixes(tokenizer, add_special_tokens):
    """Ids the post-processor puts before and after one sequence."""
    if not add_special_tokens:
        return [], []
    enc = tokenizer.encode("a", add_special_tokens=True)
    inside = [i for i, s in enumerate(enc.sequence_ids) if s is not None]
    if not inside:
        return [], []
    return enc.ids[: inside[0]], enc.ids[inside[-1] + 1 :]


def _keep_slices(length, budget, truncation, head_fraction):
    """Slices of a `length`-token sequence kept within `budget`."""
    if length <= budget:
        return [slice(0, length)]
    if truncation == "head":
        return [slice(0, budget)]
    if truncation == "tail":
        return [slice(length - budget, length)]
    head = int(budget * head_fraction)
    return [slice(0, head), slice(length - (budget - head), length)]


def _budget(max_length, prefix, suffix):
    budget = max_length - len(prefix) - len(suffix)
    if budget <= 0:
        raise ValueError(
            f"`max_length` must leave room for tokens after the "
            f"{len(prefix) + len(suffix)} special tokens. Received: "
            f"max_length={max_length}"
        )
    return budget


def _encode_chunks(
    tokenizer, texts, add_special_tokens, ids_only=True, **kwargs
):
    """Yield `(start, encodings)` per chunk of `_CHUNK_SIZE` texts.

    `Encoding` objects hold tokens, offsets and masks (~100 bytes a
    token): chunking bounds that memory (~100 MB for 2,048 texts of 512
    tokens) while each chunk still runs on all cores. With `ids_only`,
    uses `encode_batch_fast` (no offsets, ~25% faster) where available.
    """
    encode = tokenizer.encode_batch
    if ids_only:
        encode = getattr(tokenizer, "encode_batch_fast", encode)
    for start in range(0, len(texts), _CHUNK_SIZE):
        chunk = texts[start : start + _CHUNK_SIZE]
        yield (
            start,
            encode(chunk, add_special_tokens=add_special_tokens, **kwargs),
        )


def _encode_ids(
    tokenizer_json,
    texts,
    max_length,
    truncation,
    head_fraction,
    add_special_tokens,
):
    """Tokenize `texts` to an int32 `(n, max_length)` array (no cache)."""
    tokenizer = _fresh_copy(tokenizer_json)
    _check_pad_id(tokenizer)
    prefix, suffix = _special_affixes(tokenizer, add_special_tokens)
    budget = _budget(max_length, prefix, suffix)
    ids = np.zeros((len(texts), max_length), dtype=np.int32)
    if truncation in ("head", "tail"):
        # Rust truncates, keeping the special tokens at the ends. Padding
        # is the zeros of `ids`: Rust padding (`enable_padding`) measured
        # ~10% slower and 2.5x the memory (it builds every [PAD] token).
        tokenizer.enable_truncation(
            max_length,
            direction="right" if truncation == "head" else "left",
        )
        for start, encodings in _encode_chunks(
            tokenizer, texts, add_special_tokens
        ):
            for row, encoding in enumerate(encodings, start):
                tokens = encoding.ids
                ids[row, : len(tokens)] = tokens
        return ids
    # head+tail: tokenizers has no such strategy; cut the ids ourselves.
    for start, encodings in _encode_chunks(tokenizer, texts, False):
        for row, encoding in enumerate(encodings, start):
            tokens = encoding.ids
            slices = _keep_slices(
                len(tokens), budget, truncation, head_fraction
            )
            sequence = prefix + [t for s in slices for t in tokens[s]] + suffix
            ids[row, : len(sequence)] = sequence
    return ids


def _cache_key(tokenizer_json, texts, settings):
    digest = hashlib.sha256()
    digest.update(_CACHE_FORMAT.encode())
    for part in (tokenizer_json, json.dumps(settings, sort_keys=True)):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    digest.update(len(texts).to_bytes(8, "little"))
    for t in texts:
        data = t.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def encode_texts(
    tokenizer,
    texts,
    max_length=256,
    truncation="head",
    add_special_tokens=True,
    head_fraction=DEFAULT_HEAD_FRACTION,
    cache_dir=None,
):
    """Batch-encode texts to int32 ids `(n, max_length)`, padded with 0.

    Tokenizes with `Tokenizer.encode_batch` (parallel, in Rust). Special
    tokens (e.g. `[CLS]` ... `[SEP]`) always stay at the ends; truncation
    removes text tokens only.

    Args:
        tokenizer: a `tokenizers.Tokenizer` whose pad token has id 0.
        texts: list of str.
        max_length: length of every row, special tokens included.
        truncation: which text tokens to keep when a text is too long:
            `"head"` (the first ones), `"tail"` (the last ones) or
            `"head+tail"` (the first `int(budget * head_fraction)` and the
            rest from the end, `budget` being `max_length` minus the
            special tokens).
        add_special_tokens: apply the tokenizer's post-processor.
        head_fraction: share of the budget kept from the head in
            `"head+tail"`; default 0.25.
        cache_dir: if given, the ids are stored there as `.npy`, keyed by
            the sha256 of the texts, the tokenizer JSON and these settings;
            a later call with the same inputs loads them without
            tokenizing.

    Returns:
        `ids`; the padding mask is `ids != 0`.

    >>> tok = train_tokenizer(["one two three four five six"] * 2,
    ...                       vocab_size=60, min_frequency=1)
    >>> ids = encode_texts(tok, ["one two three four five six"],
    ...                    max_length=6, truncation="head+tail")
    >>> [tok.id_to_token(i) for i in ids[0]]
    ['[CLS]', 'one', 'four', 'five', 'six', '[SEP]']
    """
    _check_tokenizer(tokenizer)
    texts = _check_texts("texts", texts)
    max_length = check_positive_int("max_length", max_length)
    check_choice("truncation", truncation, TRUNCATION_STRATEGIES)
    if (
        isinstance(head_fraction, bool)
        or not isinstance(head_fraction, numbers.Real)
        or not 0.0 <= head_fraction <= 1.0
    ):
        raise ValueError(
            "`head_fraction` must be a number in [0, 1]. "
            f"Received: head_fraction={head_fraction!r}"
        )
    tokenizer_json = tokenizer.to_str()
    args = (
        tokenizer_json,
        texts,
        max_length,
        truncation,
        float(head_fraction),
        bool(add_special_tokens),
    )
    if cache_dir is None:
        ids = _encode_ids(*args)
    else:
        settings = {
            "max_length": max_length,
            "truncation": truncation,
            "head_fraction": float(head_fraction),
            "add_special_tokens": bool(add_special_tokens),
        }
        cache_dir = Path(cache_dir)
        path = cache_dir / (
            f"ids-{_cache_key(tokenizer_json, texts, settings)}.npy"
        )
        ids = _load_cached(path, (len(texts), max_length))
        if ids is None:
            ids = _encode_ids(*args)
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: np.save(tmp, ids))
    return ids


def _load_cached(path, shape):
    """The cached array, or None if absent or unreadable (re-encode)."""
    if not path.is_file():
        return None
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if ids.shape != shape or ids.dtype != np.int32:
        return None
    return ids


def encode_words(tokenizer, sentences, max_length=128, add_special_tokens=True):
    """Encode pre-tokenized sentences (lists of words) for tagging.

    Each word is normalized and split into sub-tokens on its own
    (`is_pretokenized=True`); `word_ids` says which word a token comes
    from. Too-long sentences lose their last tokens (head truncation);
    use `labels_to_words` to get a label for every word back.

    Returns:
        A `WordEncoding(ids, word_ids, offsets)`.

    >>> tok = train_tokenizer(["New York is big"] * 3, vocab_size=60,
    ...                       min_frequency=1, lowercase=False)
    >>> enc = encode_words(tok, [["New", "York", "!"]], max_length=6)
    >>> enc.word_ids.tolist()
    [[-1, 0, 1, 2, -1, -1]]
    """
    _check_tokenizer(tokenizer)
    sentences = _check_sentences(sentences)
    max_length = check_positive_int("max_length", max_length)
    tokenizer = _fresh_copy(tokenizer.to_str())
    _check_pad_id(tokenizer)
    _budget(max_length, *_special_affixes(tokenizer, add_special_tokens))
    tokenizer.enable_truncation(max_length)  # padding: see _encode_ids
    n = len(sentences)
    ids = np.zeros((n, max_length), dtype=np.int32)
    word_ids = np.full((n, max_length), -1, dtype=np.int32)
    offsets = np.zeros((n, max_length, 2), dtype=np.int32)
    for start, encodings in _encode_chunks(
        tokenizer,
        sentences,
        add_special_tokens,
        ids_only=False,
        is_pretokenized=True,
    ):
        for row, encoding in enumerate(encodings, start):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            word_ids[row, :length] = [
                -1 if w is None else w for w in encoding.word_ids
            ]
            offsets[row, :length] = encoding.offsets
    return WordEncoding(ids, word_ids, offsets)


def count_word_tokens(tokenizer, sentences):
    """Number of sub-tokens of each pre-tokenized sentence, special tokens
    excluded (e.g. to pack sentences into rows of a length budget).

    >>> tok = train_tokenizer(["New York is big"] * 3, vocab_size=60,
    ...                       min_frequency=1, lowercase=False)
    >>> count_word_tokens(tok, [["New", "York"], ["big", "!"]]).tolist()
    [2, 2]
    """
    _check_tokenizer(tokenizer)
    sentences = _check_sentences(sentences)
    tokenizer = _fresh_copy(tokenizer.to_str())
    counts = np.zeros(len(sentences), dtype=np.int64)
    for start, encodings in _encode_chunks(
        tokenizer, sentences, False, is_pretokenized=True
    ):
        counts[start : start + len(encodings)] = [len(e) for e in encodings]
    return counts


def encode_text_words(
    tokenizer, texts, max_length=128, add_special_tokens=True
):
    """Encode raw texts for tagging, with each word's span in the text.

    Words are the tokenizer's pre-tokens (BERT: split on whitespace and on
    every punctuation character). Sub-tokens are grouped into words with
    `word_ids`; `word_spans[i][w]` is the `(start, end)` character range of
    word `w` in `texts[i]`, so `texts[i][start:end]` is the word as written.

    Returns:
        A `TextWordEncoding(ids, word_ids, word_spans)`.

    >>> tok = train_tokenizer(["Visit New York, now"] * 3, vocab_size=60,
    ...                       min_frequency=1, lowercase=False)
    >>> s = "Visit  New York!"
    >>> enc = encode_text_words(tok, [s], max_length=8)
    >>> [s[a:b] for a, b in enc.word_spans[0]]
    ['Visit', 'New', 'York', '!']
    >>> enc.word_ids[0].tolist()
    [-1, 0, 1, 2, 3, -1, -1, -1]
    """
    _check_tokenizer(tokenizer)
    texts = _check_texts("texts", texts)
    max_length = check_positive_int("max_length", max_length)
    tokenizer = _fresh_copy(tokenizer.to_str())
    _check_pad_id(tokenizer)
    prefix, suffix = _special_affixes(tokenizer, add_special_tokens)
    budget = _budget(max_length, prefix, suffix)
    ids = np.zeros((len(texts), max_length), dtype=np.int32)
    word_ids = np.full((len(texts), max_length), -1, dtype=np.int32)
    all_spans = []
    encodings = (
        (row, encoding)
        for start, chunk in _encode_chunks(
            tokenizer, texts, False, ids_only=False
        )
        for row, encoding in enumerate(chunk, start)
    )
    for row, encoding in encodings:
        dense, spans = {}, []  # pre-token index -> dense word index
        token_words = []
        for w, (start, end) in zip(
            encoding.word_ids, encoding.offsets, strict=True
        ):
            if w not in dense:
                dense[w] = len(spans)
                spans.append([start, end])
            d = dense[w]
            spans[d][0] = min(spans[d][0], start)
            spans[d][1] = max(spans[d][1], end)
            token_words.append(d)
        all_spans.append([tuple(s) for s in spans])
        n_tokens = min(len(token_words), budget)  # head truncation
        sequence = prefix + encoding.ids[:n_tokens] + suffix
        ids[row, : len(sequence)] = sequence
        start = len(prefix)
        word_ids[row, start : start + n_tokens] = token_words[:n_tokens]
    return TextWordEncoding(ids, word_ids, all_spans)


# --------------------------------------------------------------------------
# Word <-> token label alignment.
# --------------------------------------------------------------------------


def _as_word_ids(word_ids):
    word_ids = np.asarray(word_ids)
    if word_ids.ndim not in (1, 2) or not np.issubdtype(
        word_ids.dtype, np.integer
    ):
        raise ValueError(
            "`word_ids` must be a 1-D or 2-D integer array. Received: "
            f"word_ids with shape {word_ids.shape} and dtype {word_ids.dtype}"
        )
    return word_ids


def _first_subtokens(row):
    """True where a token is the first sub-token of its word."""
    previous = np.concatenate([[-1], row[:-1]])
    return (row >= 0) & (row != previous)


def align_labels(word_ids, word_labels, ignore_index=IGNORE_INDEX):
    """Spread per-word labels onto tokens for training a tagger.

    The first sub-token of each word carries the word's label; the other
    sub-tokens, special tokens and padding get `ignore_index` (use it as
    `ignore_class` of `SparseCategoricalCrossentropy`).

    Args:
        word_ids: int `(n, L)` (or `(L,)` for one sentence), -1 where there
            is no word, as returned by `encode_words`.
        word_labels: per sentence, a sequence of int labels, one per word
            (or one sequence for 1-D `word_ids`).
        ignore_index: label of the tokens that do not count.

    Returns:
        int32 array shaped like `word_ids`.

    >>> align_labels([-1, 0, 0, 0, 1, -1], [5, 7])
    array([-100,    5, -100, -100,    7, -100], dtype=int32)
    """
    word_ids = _as_word_ids(word_ids)
    single = word_ids.ndim == 1
    if single:
        word_ids, word_labels = word_ids[None], [word_labels]
    if len(word_labels) != len(word_ids):
        raise ValueError(
            "`word_labels` must have one entry per row of `word_ids`. "
            f"Received: len(word_labels)={len(word_labels)}, "
            f"word_ids.shape={word_ids.shape}"
        )
    out = np.full(word_ids.shape, ignore_index, dtype=np.int32)
    for i, (row, labels) in enumerate(zip(word_ids, word_labels, strict=True)):
        labels = np.asarray(labels, dtype=np.int64)
        first = _first_subtokens(row)
        if first.any() and row[first].max() >= len(labels):
            raise ValueError(
                f"`word_ids` row {i} refers to word {row[first].max()} but "
                f"`word_labels[{i}]` has {len(labels)} labels."
            )
        out[i, first] = labels[row[first]]
    return out[0] if single else out


def first_token_positions(word_ids, num_words):
    """Where each word's first sub-token is: per row, an int array of
    length `num_words[row]`, -1 for words with no token (truncated away).

    Args:
        word_ids: int `(n, L)` or `(L,)`, -1 where there is no word.
        num_words: per row, the number of words of the sentence (an int
            for 1-D input).

    Returns:
        A list (per row) of int arrays, or one array for 1-D input.

    >>> first_token_positions([-1, 0, 0, 1, -1], num_words=3).tolist()
    [1, 3, -1]
    """
    word_ids = _as_word_ids(word_ids)
    single = word_ids.ndim == 1
    if single:
        word_ids, num_words = word_ids[None], [num_words]
    num_words = list(num_words)
    if len(num_words) != len(word_ids):
        raise ValueError(
            "`num_words` must have one entry per row of `word_ids`. "
            f"Received: len(num_words)={len(num_words)}, "
            f"word_ids.shape={word_ids.shape}"
        )
    out = []
    for row, count in zip(word_ids, num_words, strict=True):
        positions = np.full(int(count), -1, dtype=np.int64)
        first = np.flatnonzero(_first_subtokens(row))
        if len(first) and row[first].max() >= count:
            raise ValueError(
                f"`word_ids` refer to word {row[first].max()} but "
                f"`num_words` for that row is {count}."
            )
        positions[row[first]] = first
        out.append(positions)
    return out[0] if single else out


def labels_to_words(word_ids, token_predictions, num_words, default=0):
    """Per-word predictions from per-token predictions (inverse of
    `align_labels`): each word takes its first sub-token's prediction.

    Args:
        word_ids: int `(n, L)` or `(L,)`, -1 where there is no word.
        token_predictions: `(n, L)` or `(L,)` labels (e.g. the argmax of
            the tagger's output).
        num_words: per row, the number of words of the sentence (an int
            for 1-D input).
        default: value for words with no token (truncated away), e.g. the
            id of `"O"`.

    Returns:
        A list (per row) of lists with one label per word.

    >>> labels_to_words([-1, 0, 0, 1, -1], [9, 3, 8, 4, 9], num_words=3,
    ...                 default=0)
    [3, 4, 0]
    """
    word_ids = _as_word_ids(word_ids)
    predictions = np.asarray(token_predictions)
    if predictions.shape != word_ids.shape:
        raise ValueError(
            "`token_predictions` must have the shape of `word_ids` "
            f"{word_ids.shape}. Received: token_predictions.shape="
            f"{predictions.shape}"
        )
    single = word_ids.ndim == 1
    if single:
        word_ids, predictions = word_ids[None], predictions[None]
        num_words = [num_words]
    positions = first_token_positions(word_ids, num_words)
    out = [
        [default if p < 0 else row[p] for p in where.tolist()]
        for row, where in zip(predictions.tolist(), positions, strict=True)
    ]
    return out[0] if single else out
