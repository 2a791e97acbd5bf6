"""The sentiment recipe end to end (--smoke), and its model across backends.

Runs on a small CSV written here (`--data`), so it needs no download; the
IMDB loader itself is tested in test_data.py.
"""

import csv
import json
from pathlib import Path

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
RECIPE = ROOT / "recipes" / "sentiment.py"
GOOD = ["great", "wonderful", "moving", "brilliant", "funny", "superb"]
BAD = ["awful", "boring", "dull", "terrible", "pointless", "bland"]
FILLER = ["the", "film", "plot", "actors", "was", "and", "a", "story"]


def write_reviews(path, n=600, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars"])
        for i in range(n):
            label = "good" if i % 2 else "bad"
            words = list(rng.choice(FILLER, size=rng.integers(3, 30)))
            cue = GOOD if label == "good" else BAD
            words += list(rng.choice(cue, size=2))
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])


def run(args, backend=BACKEND, stdin=None):
    return run_script(RECIPE, args, backend, stdin)


def parse_predictions(stdout):
    rows = [line.split("\t") for line in stdout.splitlines() if "\t" in line]
    rows = [row for row in rows if len(row) == 3]
    return [row[0] for row in rows], np.array([float(row[1]) for row in rows])


def smoke_args(tmp, out, *extra):
    """A --smoke run on the reviews CSV in `tmp`, 6 epochs, into `out`."""
    return [
        "--smoke",
        "--data",
        str(tmp / "reviews.csv"),
        "--text-column",
        "review",
        "--label-column",
        "stars",
        "--output-dir",
        str(out),
        "--epochs",
        "6",
        "--learning-rate",
        "3e-3",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sentiment")
    write_reviews(tmp / "reviews.csv")
    out = tmp / "run"
    return out, run(smoke_args(tmp, out, "--mlm-epochs", "2"))


def test_smoke_run_writes_everything(trained):
    out, stdout = trained
    for name in (
        "model.keras",
        "tokenizer.json",
        "metrics.json",
        "learning_curves.png",
        "history.csv",
        "train.log",
    ):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == BACKEND
    assert metrics["label_names"] == ["bad", "good"]
    for key in ("test_accuracy", "test_loss", "train_seconds", "split"):
        assert key in metrics
    assert reload_difference(stdout) < 1e-6
    # The cue words decide the label: even a smoke run learns them.
    assert metrics["test_accuracy"] >= 0.9, metrics["test_accuracy"]
    # The baseline on the same split, printed beside the model's score.
    assert metrics["baseline"]["test_accuracy"] >= 0.9, metrics["baseline"]
    assert "TF-IDF + LR" in stdout
    assert metrics["precision"]["used"] in ("float32", "bfloat16")
    assert metrics["settings"]["precision"] == "auto"
    # --mlm-epochs 2: the encoder first learns to fill in masked tokens.
    losses = [
        float(line.rsplit(" ", 1)[1])
        for line in stdout.splitlines()
        if line.startswith("masked-LM epoch")
    ]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert "pretrain" in metrics["phase_seconds"]


PREDICT_TEXTS = ["a wonderful and superb film", "boring and awful plot"]


@pytest.fixture(scope="module")
def predicted(trained):
    """`predict`'s stdout on PREDICT_TEXTS given as arguments."""
    out, _ = trained
    return run(["predict", "--model-dir", str(out), *PREDICT_TEXTS])


def test_predict_reads_arguments_and_stdin(trained, predicted):
    out, _ = trained
    texts = PREDICT_TEXTS
    labels, probs = parse_predictions(predicted)
    assert labels == ["good", "bad"] and probs.shape == (2,)
    from_stdin, _ = parse_predictions(
        run(["predict", "--model-dir", str(out)], stdin="\n".join(texts))
    )
    assert from_stdin == labels


def test_explain_writes_a_heat_map(trained):
    out, _ = trained
    stdout = run(["predict", "--explain", "--model-dir", str(out), "dull film"])
    assert (out / "explain_0.png").stat().st_size > 0, stdout


def test_exported_artifact_predicts_without_keras(trained):
    from recipes import sentiment, training

    out, _ = trained
    texts = ["a wonderful and superb film", "boring and awful plot"]
    model, tokenizer, _, settings = training.load_run(out)
    expected = sentiment.predict_probabilities(
        model, tokenizer, texts, settings
    )
    stdout = run(["export", "--model-dir", str(out), "--format", "onnx"])
    artifact = out / "model.onnx"
    assert str(artifact) in stdout and artifact.stat().st_size > 0
    served = run_probing_frameworks(
        "recipes.sentiment",
        ["predict", "--artifact", str(artifact)],
        stdin="\n".join(texts),
    )
    labels, probabilities = parse_predictions(served)
    assert labels == ["good", "bad"]
    np.testing.assert_allclose(probabilities, expected, atol=1e-3)
    assert "frameworks: []" in served


@pytest.mark.parametrize("other", other_backends()[0:1])
def test_saved_model_predicts_the_same_under_other_backends(
    trained, predicted, other
):
    out, _ = trained
    _, here = parse_predictions(predicted)
    _, there = parse_predictions(
        run(["predict", "--model-dir", str(out), *PREDICT_TEXTS], backend=other)
    )
    metrics = json.loads((out / "metrics.json").read_text())
    # Printed with 3 digits. A bfloat16 run (auto, where the CPU has it)
    # computes in bfloat16 on the other backend too, whose kernels round
    # differently (2^-8 relative an operation): its probabilities agree to
    # about 1e-2.
    bfloat16 = metrics["precision"]["used"] == "bfloat16"
    np.testing.assert_allclose(there, here, atol=1e-2 if bfloat16 else 1e-3)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A `--init` run from a tiny random BERT checkpoint whose tokenizer
    knows the reviews' words."""
    tmp = tmp_path_factory.mktemp("sentiment_init")
    write_reviews(tmp / "reviews.csv")
    corpus = [" ".join(GOOD + BAD + FILLER)] * 4
    config = {**TINY_CONFIG, "vocab_size": 64, "max_position_embeddings": 40}
    checkpoint = write_checkpoint(
        tmp / "bert", random_tensors(config), config, corpus
    )
    out = tmp / "run"
    stdout = run(
        smoke_args(tmp, out, "--init", str(checkpoint), "--max-length", "32")
    )
    return out, stdout, checkpoint


def test_init_fine_tunes_the_pretrained_encoder(fine_tuned):
    out, stdout, checkpoint = fine_tuned
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["init"] == str(checkpoint)
    # The checkpoint's tokenizer is the run's tokenizer.
    saved = json.loads((out / "tokenizer.json").read_text())
    original = json.loads((checkpoint / "tokenizer.json").read_text())
    assert saved["model"]["vocab"] == original["model"]["vocab"]
    assert "pretrained encoder" in stdout
    assert reload_difference(stdout) < 1e-6
    # The path, not the accuracy: this tiny random encoder does not learn
    # the cue words (IMDB accuracy with MiniLM is measured by the recipe).
    labels, probabilities = parse_predictions(
        run(["predict", "--model-dir", str(out), "superb and moving"])
    )
    assert labels[0] in ("good", "bad") and 0 <= probabilities[0] <= 1
    run(["predict", "--explain", "--model-dir", str(out), "dull film"])
    assert (out / "explain_0.png").stat().st_size > 0
