"""What the NER tagger reads: rows of sentences, their tokens, the bytes
of each token's word and the tags on the first sub-token of each word.
Pure Python and NumPy (and the tokenizer).

    >>> char_ids("Ab", 4).tolist()
    [66, 99, 0, 0]
"""

import collections

import numpy as np

from keras_selfattn import text
from recipes import word_vectors

# Characters are UTF-8 bytes + 1 (0 is padding): no vocabulary to store.
NUM_CHAR_IDS = 257
# Bytes kept of each word (head and tail of a longer one).
MAX_WORD_BYTES = 20


Prepared = collections.namedtuple(
    "Prepared", ["sentences", "chunks", "inputs", "word_ids"]
)
Prepared.__doc__ = """One split ready for the model: `sentences` (words,
tags), `chunks` (per model row, the indices of its sentences), `inputs`
(see `model_inputs`) and `word_ids` of the rows."""


def prepare(tokenizer, documents, settings, word_index=None):
    """Pack a split's sentences into rows and encode them: one sentence per
    row, or with `settings.context == "document"` as many consecutive
    sentences of a document as fit in `settings.max_length` tokens;
    `word_index` as `model_inputs` takes it."""
    sentences = [s for document in documents for s in document]
    words = [w for w, _ in sentences]
    if settings.context == "document":
        document_ids = [d for d, doc in enumerate(documents) for _ in doc]
        special = tokenizer.post_processor.num_special_tokens_to_add(False)
        budget = settings.max_length - special
        chunks = pack_sentences(
            text.count_word_tokens(tokenizer, words), document_ids, budget
        )
    else:
        chunks = [[i] for i in range(len(sentences))]
    rows = [[w for i in chunk for w in words[i]] for chunk in chunks]
    encoding = text.encode_words(
        tokenizer, rows, max_length=settings.max_length
    )
    inputs = model_inputs(encoding, rows, word_index)
    return Prepared(sentences, chunks, inputs, encoding.word_ids)


def pack_sentences(token_counts, document_ids, budget):
    """Group consecutive sentences of one document into chunks of at most
    `budget` tokens, so the tagger reads each sentence in its context. A
    sentence longer than `budget` gets a chunk of its own.

    Returns:
        list of chunks, each a list of sentence indices, in order.

    >>> pack_sentences([3, 4, 2, 5, 1], [0, 0, 0, 1, 1], budget=7)
    [[0, 1], [2], [3, 4]]
    """
    chunks, current, used = [], [], 0
    for i, (count, document) in enumerate(zip(token_counts, document_ids)):
        if current and (
            document != document_ids[current[-1]] or used + count > budget
        ):
            chunks.append(current)
            current, used = [], 0
        current.append(i)
        used += count
    if current:
        chunks.append(current)
    return chunks


def model_inputs(encoding, rows, word_index=None):
    """The arrays the model reads: "token_ids", "word_chars" (the bytes of
    each token's word, see `token_char_ids`) and, given the `word_index`
    of the model's word vectors (`recipes.word_vectors`),
    "word_vector_ids" (see `token_word_vector_ids`)."""
    inputs = {
        "token_ids": encoding.ids,
        "word_chars": token_char_ids(encoding.word_ids, rows, MAX_WORD_BYTES),
    }
    if word_index is not None:
        inputs["word_vector_ids"] = token_word_vector_ids(
            encoding.word_ids, rows, word_index
        )
    return inputs


def char_ids(word, max_chars):
    """UTF-8 bytes + 1 of the word, its head and tail kept if too long,
    zero-padded to `max_chars`."""
    data = word.encode("utf-8")
    if len(data) > max_chars:
        head = max_chars // 2
        data = data[:head] + data[len(data) - (max_chars - head) :]
    ids = np.zeros(max_chars, dtype=np.int32)
    ids[: len(data)] = np.frombuffer(data, dtype=np.uint8).astype(np.int32) + 1
    return ids


def token_char_ids(word_ids, rows, max_chars):
    """Character ids `(n, L, max_chars)` of the word each token belongs to
    (zeros where there is no word).

    Args:
        word_ids: int `(n, L)`, -1 where a token has no word.
        rows: per row, its list of words.
        max_chars: bytes kept per word (see `char_ids`).
    """
    return spread_to_tokens(
        word_ids,
        rows,
        lambda words: np.stack([char_ids(w, max_chars) for w in words]),
        (max_chars,),
    )


def token_word_vector_ids(word_ids, rows, word_index):
    """Ids `(n, L)` of the vector of the word each token belongs to
    (`word_vectors.vector_ids`; 0 where there is no word or no vector).

    >>> token_word_vector_ids([[-1, 0, 0, 1]], [["Paris", "is"]],
    ...                       {"paris": 6}).tolist()
    [[0, 7, 7, 0]]
    """
    return spread_to_tokens(
        word_ids, rows, lambda words: word_vectors.vector_ids(words, word_index)
    )


def spread_to_tokens(word_ids, rows, per_word, shape=()):
    """Int32 `(n, L, *shape)`: at each token, its word's entry of
    `per_word(words)` (an array over a row's words, computed only for rows
    with a token of a word); zeros where a token has no word.

    >>> spread_to_tokens([[-1, 0, 1, 1]], [["a", "b"]],
    ...                  lambda words: np.array([5, 6])).tolist()
    [[0, 5, 6, 6]]
    """
    word_ids = np.asarray(word_ids)
    out = np.zeros((*word_ids.shape, *shape), dtype=np.int32)
    for row, words in enumerate(rows):
        positions = np.flatnonzero(word_ids[row] >= 0)
        if len(positions):
            out[row, positions] = per_word(words)[word_ids[row, positions]]
    return out


def word_positions(word_ids, chunks, sentence_lengths):
    """Per row, the position of each word's first sub-token (-1: the word
    was cut off by the length limit)."""
    row_lengths = [sum(sentence_lengths[i] for i in c) for c in chunks]
    return text.first_token_positions(word_ids, row_lengths)


def words_cut_off(prepared):
    """Number of words that lost all their tokens to `max_length`."""
    lengths = [len(words) for words, _ in prepared.sentences]
    positions = word_positions(prepared.word_ids, prepared.chunks, lengths)
    return int(sum((p < 0).sum() for p in positions))


def row_labels(prepared, tag_ids):
    """Tag ids on each row's tokens (first sub-token of each word)."""
    return text.align_labels(
        prepared.word_ids,
        [
            [tag_ids[t] for i in chunk for t in prepared.sentences[i][1]]
            for chunk in prepared.chunks
        ],
    )
