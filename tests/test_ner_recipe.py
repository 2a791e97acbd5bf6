"""The NER recipe end to end (--smoke), and its model across backends.

Runs on small CoNLL files written here (`--data`); the smoke run reads
GloVe's word vectors (a download when not cached). The CoNLL-2003 loader
itself is tested in test_data.py.
"""

import json
from pathlib import Path
import re
import zipfile

import numpy as np
import pytest
from support import (
    BACKEND,
    other_backends,
    reload_difference,
    run_probing_frameworks,
    run_script,
)
from tiny_bert import TINY_CONFIG, random_tensors, write_checkpoint

# End to end, in fresh processes: runs once per `make test`, under its
# first backend, and loads the saved model under the other two.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "ner.py"
FIRST = ["Anna", "Peter", "Maria", "John", "Ingrid", "Ahmed", "Lena"]
LAST = ["Schmidt", "Smith", "Rossi", "Okafor", "Berg", "Nowak"]
PLACES = ["Berlin", "Paris", "Lagos", "Oslo", "Lima", "Quito"]
COMPANIES = ["Siemens", "Reuters", "Fiat", "Nokia", "Airbus"]
EVENTS = ["Olympic", "German", "French"]
TEMPLATES = [
    "{PER} visited {LOC} on Monday .",
    "{ORG} said {PER} will lead the {MISC} team .",
    "Shares in {ORG} fell in {LOC} .",
    "the match ended late .",
]


def make_sentence(rng):
    words, tags = [], []
    for piece in str(rng.choice(TEMPLATES)).split():
        if not piece.startswith("{"):
            words.append(piece)
            tags.append("O")
            continue
        kind = piece[1:-1]
        names = {
            "PER": [str(rng.choice(FIRST)), str(rng.choice(LAST))],
            "LOC": [str(rng.choice(PLACES))],
            "ORG": [str(rng.choice(COMPANIES))],
            "MISC": [str(rng.choice(EVENTS))],
        }[kind]
        words += names
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(names) - 1)
    return words, tags


def write_conll(directory, seed=0):
    rng = np.random.default_rng(seed)
    for name, n in (("train.txt", 400), ("valid.txt", 60), ("test.txt", 60)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            words, tags = make_sentence(rng)
            lines += [f"{w} NN I-NP {t}" for w, t in zip(words, tags)] + [""]
        (directory / name).write_text("\n".join(lines), encoding="utf-8")


def run(args, backend=BACKEND, stdin=None):
    return run_script(RECIPE, args, backend, stdin)


def parse_entities(stdout):
    """`predict` output -> per text, a list of (type, start, end, text)."""
    out = []
    for line in stdout.splitlines():
        if not line.startswith("\t"):
            out.append([])
            continue
        kind, start, end, surface = line[1:].split("\t")
        out[-1].append((kind, int(start), int(end), surface))
    return out


def smoke_args(data_dir, out, *extra):
    """A --smoke run on the CoNLL files in `data_dir`, 8 epochs, into
    `out`."""
    return [
        "--smoke",
        "--data",
        str(data_dir),
        "--output-dir",
        str(out),
        "--epochs",
        "8",
        "--learning-rate",
        "3e-3",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ner")
    write_conll(tmp)
    out = tmp / "run"
    stdout = run(
        smoke_args(
            tmp,
            out,
            "--init",
            "none",
            "--embedding-dim",
            "32",
            "--intermediate-dim",
            "64",
            "--num-heads",
            "2",
            "--word-dropout",
            "0.05",
            "--word-vectors",
            "glove-6b-50d",
        )
    )
    return out, stdout


def test_smoke_run_writes_everything(trained):
    out, stdout = trained
    for name in (
        "model.keras",
        "tokenizer.json",
        "labels.json",
        "metrics.json",
        "learning_curves.png",
        "history.csv",
        "train.log",
        "word_vectors.json",
    ):
        assert (out / name).stat().st_size > 0, name
    # --smoke keeps GloVe's 20,000 most frequent words.
    words = json.loads((out / "word_vectors.json").read_text())
    assert len(words) == 20000 and words[:3] == ["the", ",", "."]
    assert "word vectors: glove-6b-50d, (20000, 50) (frozen)" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == BACKEND
    assert json.loads((out / "labels.json").read_text()) == [
        "O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
        "B-PER", "I-PER",
    ]  # fmt: skip
    for key in ("test_precision", "test_recall", "valid_f1", "train_seconds"):
        assert 0 <= metrics[key], key
    assert set(metrics["test_per_type"]) == {"LOC", "MISC", "ORG", "PER"}
    assert len(metrics["val_f1_per_epoch"]) == metrics["epochs_run"]
    assert reload_difference(stdout) < 1e-6
    # Capitals and context decide the entities: a smoke run learns them.
    assert metrics["test_f1"] >= 0.9, metrics["test_f1"]


PREDICT_TEXTS = ["Maria  Nowak visited Oslo on Monday.", "Shares in Fiat fell."]


@pytest.fixture(scope="module")
def predicted(trained):
    """`predict`'s stdout on PREDICT_TEXTS given as arguments."""
    out, _ = trained
    return run(["predict", "--model-dir", str(out), *PREDICT_TEXTS])


def test_predict_prints_entities_with_character_offsets(trained, predicted):
    out, _ = trained
    texts = PREDICT_TEXTS
    entities = parse_entities(predicted)
    assert entities == [
        [("PER", 0, 12, "Maria  Nowak"), ("LOC", 21, 25, "Oslo")],
        [("ORG", 10, 14, "Fiat")],
    ]
    for raw, found in zip(texts, entities):
        assert all(raw[a:b] == surface for _, a, b, surface in found)
    from_stdin = parse_entities(
        run(["predict", "--model-dir", str(out)], stdin="\n".join(texts))
    )
    assert from_stdin == entities


def test_exported_artifact_tags_without_keras(trained):
    """`export`, then `predict --artifact` in a fresh process: the Keras
    model's entities, from tokenizers, NumPy and onnxruntime alone (and
    the CRF's learned transitions, which `export` writes beside the
    artifact)."""
    from recipes import decoding, keras_tagging

    out, _ = trained
    texts = [
        "John Smith said Reuters fell in Lima .",
        "Ingrid Berg visited Quito.",
    ]
    expected = keras_tagging.label_texts(out, texts)
    stdout = run(["export", "--model-dir", str(out), "--format", "onnx"])
    artifact = out / "model.onnx"
    assert str(artifact) in stdout and artifact.stat().st_size > 0
    decoder = json.loads((out / decoding.DECODER_FILE).read_text())
    assert decoder["crf"] is not None  # --init none: a CRF tagger
    served = run_probing_frameworks(
        "recipes.ner",
        ["predict", "--artifact", str(artifact)] + texts,
    ).splitlines()
    assert served[:-1] == expected
    assert all(parse_entities("\n".join(expected)))  # entities in each
    assert served[-1] == "frameworks: []"


def test_decoder_file_gives_the_keras_viterbi_chain():
    """What `export` writes for decoding, read back as `predict
    --artifact` reads it: the Keras tagger's chain and outputs, for a CRF
    (learned scores) and a softmax tagger (IOB2 constraints only)."""
    import argparse

    import keras

    from recipes import crf, decoding, keras_tagging, tagging

    tags = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    scores = keras.Input((None, len(tags)))
    layer = crf.LinearChainCRF(*tagging.allowed_transitions(tags))
    rng = np.random.default_rng(0)
    layer.transitions.assign(rng.normal(size=(5, 5)).astype("float32"))
    layer.start.assign(rng.normal(size=5).astype("float32"))
    softmax = keras.layers.Softmax()
    settings = argparse.Namespace(max_length=64)
    for model, probabilities in (
        (keras.Model(scores, layer(scores)), False),
        (keras.Model(scores, softmax(scores)), True),
    ):
        files = keras_tagging.decoder_files(model, settings)
        data = json.loads(json.dumps(files[decoding.DECODER_FILE]))
        served = decoding.served_tagger(None, tags, data)
        buckets = keras_tagging.length_buckets(64)
        tagger = keras_tagging.keras_tagger(model, tags, buckets)
        assert served.probabilities == tagger.probabilities == probabilities
        assert served.buckets == tuple(tagger.buckets) == (16, 32, 64)
        for ours, theirs in zip(served.chain, tagger.chain):
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("other", other_backends()[1:2])
def test_saved_model_tags_the_same_under_other_backends(
    trained, predicted, other
):
    out, _ = trained
    args = ["predict", "--model-dir", str(out), *PREDICT_TEXTS]
    there = run(args, backend=other)
    assert there == predicted and parse_entities(predicted)[0]


def test_init_fine_tunes_a_pretrained_encoder(tmp_path):
    """`--init` from a tiny random BERT checkpoint whose tokenizer knows
    the sentences' words: trains, scores, saves, reloads and tags."""
    write_conll(tmp_path)
    sentences = [make_sentence(np.random.default_rng(i))[0] for i in range(50)]
    corpus = [" ".join(words) for words in sentences]
    config = {**TINY_CONFIG, "vocab_size": 96, "max_position_embeddings": 64}
    checkpoint = write_checkpoint(
        tmp_path / "bert", random_tensors(config), config, corpus
    )
    out = tmp_path / "run"
    # Rows hold consecutive sentences (up to 64 tokens): the 400 smoke
    # sentences fill 129 rows, 65 steps an epoch at 2 rows a batch (at
    # the smoke default of 16, 9 steps: too few for a random encoder).
    stdout = run(
        smoke_args(
            tmp_path,
            out,
            "--init",
            str(checkpoint),
            "--batch-size",
            "2",
            "--new-layers-learning-rate",
            "1.5e-2",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["init"] == str(checkpoint)
    assert metrics["settings"]["dropout"] == 0.1  # --init default
    assert "pretrained encoder" in stdout
    # The layers trained from scratch, and only they, take 5x the step.
    new_layers = r"0\.015 for the [\d,]+ weights trained from scratch"
    assert re.search(new_layers, stdout)
    with zipfile.ZipFile(out / "model.keras") as archive:
        optimizer = json.loads(archive.read("config.json"))["compile_config"][
            "optimizer"
        ]
    scales = optimizer["config"]["learning_rate_scales"]
    assert {path.split("/")[0] for path in scales} == {
        "char_embedding",
        "char_conv",
        "tags",
    }
    assert set(scales.values()) == {5.0}
    assert reload_difference(stdout) < 1e-6
    assert metrics["test_f1"] >= 0.9, metrics["test_f1"]
    text = "Maria Nowak visited Oslo on Monday."
    entities = parse_entities(run(["predict", "--model-dir", str(out), text]))
    assert entities == [
        [("PER", 0, 11, "Maria Nowak"), ("LOC", 20, 24, "Oslo")]
    ]
