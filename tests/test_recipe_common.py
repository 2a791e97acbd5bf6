"""Recipe plumbing: bucketed batches, crops, atomic saves, the schedule,
the command line's defaults and checks, what serving imports.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_selfattn.downloads import atomic_write
import recipes
from recipes import (
    batching,
    cli,
    ner,
    ngrams,
    optimizers,
    precision,
    reviews,
    sentiment,
    training,
)


def _ngram_buckets(row, vocab, buckets):
    """NumPy oracle: a row's unigrams and hashed bigrams, none touching
    padding, as `NgramScore` documents them."""
    tokens = [int(t) for t in row if t]
    pairs = zip(tokens, tokens[1:])
    return tokens + [(a * vocab + b) % buckets for a, b in pairs]


def test_ngram_score_naive_bayes_ratios_and_distinct_ngrams():
    vocab, buckets = 50, 997
    ids = np.array([[4, 9, 9, 9, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    labels = np.array([1, 0, 1])
    layer = ngrams.NgramScore(vocab, buckets, learning_rate_scale=3.0)
    layer.adapt(ids, labels, batch_size=2)
    counts = np.ones((2, buckets))
    for row, label in zip(ids, labels):
        counts[label, sorted(set(_ngram_buckets(row, vocab, buckets)))] += 1
    shares = counts / counts.sum(1, keepdims=True)
    ratio = np.log(shares[1] / shares[0])
    got_ratio = keras.ops.convert_to_numpy(layer.log_count_ratio)
    np.testing.assert_allclose(got_ratio, ratio, rtol=1e-5, atol=1e-6)
    table = np.random.default_rng(0).normal(size=buckets).astype("float32")
    layer.table.assign(table)
    layer.bias.assign(0.5)
    want = [
        3.0
        * (
            sum(
                table[g] * ratio[g]
                for g in set(_ngram_buckets(r, vocab, buckets))
            )
            + 0.5
        )
        for r in ids
    ]
    got = keras.ops.convert_to_numpy(layer(ids))[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    tensor = keras.ops.convert_to_tensor(ids, "int32")
    for pairwise in (True, False):  # both ways of finding distinct ones
        grams, first = map(
            keras.ops.convert_to_numpy,
            ngrams._distinct(layer, tensor, pairwise),
        )
        for row, kept, is_first in zip(ids, grams, first):
            expected = _ngram_buckets(row, vocab, buckets)
            assert sorted(kept[is_first]) == sorted(set(expected))


def test_ngram_score_sqrt_count_weighting_and_its_old_configs():
    # The form saved before `weighting` existed: each occurrence's
    # weight, the sum / sqrt(count); configs without `weighting` load it.
    vocab, buckets = 50, 997
    layer = ngrams.NgramScore(vocab, buckets, learning_rate_scale=3.0)
    config = layer.get_config()
    del config["weighting"]
    layer = ngrams.NgramScore.from_config(config)
    assert layer.weighting == "sqrt_count"
    layer.build()
    table = np.random.default_rng(0).normal(size=buckets).astype("float32")
    layer.table.assign(table)
    layer.bias.assign(0.5)
    ids = np.array([[4, 9, 9, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    want = []
    for row in ids:
        grams = _ngram_buckets(row, vocab, buckets)
        want.append(3.0 * (table[grams].sum() / np.sqrt(len(grams)) + 0.5))
    got = keras.ops.convert_to_numpy(layer(ids))[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="weighting='sqrt_count'"):
        layer.adapt(ids, np.ones(3))


# keras' exporters warn about their own internals (as in test_export.py).
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning",
)
def test_ngram_score_serves_from_onnx(tmp_path):
    """The n-gram branch as `export` writes it runs in onnxruntime (torch's
    exporter wrote a 1-D lookup as a Squeeze onnxruntime rejects)."""
    from recipes import deploy, exporting

    rng = np.random.default_rng(0)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    layer = ngrams.NgramScore(50, 997)
    model = keras.Model(token_ids, layer(token_ids))
    layer.table.assign(rng.normal(size=997).astype("float32"))
    layer.log_count_ratio.assign(rng.normal(size=997).astype("float32"))
    ids = rng.integers(1, 50, (4, 12)).astype("int32")
    ids[0, 5:] = 0
    path = exporting.export_artifact(model, tmp_path, "onnx", ids)
    served = deploy.load_artifact(path)(ids)
    np.testing.assert_allclose(
        served, model.predict(ids, verbose=0), atol=1e-5, rtol=0
    )


def test_ngram_score_refuses_bad_settings():
    with pytest.raises(ValueError, match="vocab_size=50000"):
        ngrams.NgramScore(50000)
    with pytest.raises(ValueError, match="weighting='tfidf'"):
        ngrams.NgramScore(50, weighting="tfidf")


def test_precision_auto_needs_the_cpu_flag_and_a_backend_using_it():
    assert precision.resolve("auto", "torch", {"amx_bf16"})[0] == "bfloat16"
    assert precision.resolve("auto", "torch", {"avx2"})[0] == "float32"
    assert precision.resolve("auto", "jax", {"avx512_bf16"})[0] == "float32"
    assert precision.resolve("bfloat16", "jax", set())[0] == "bfloat16"
    with pytest.raises(ValueError, match="'half'"):
        precision.resolve("half")


def test_bfloat16_model_computes_in_float32_for_export():
    """`export` writes a bfloat16 run in float32 (ONNX Runtime's CPU has no
    bfloat16 Conv/MatMul): the same weights, float32 results."""

    def build(policy):
        keras.config.set_dtype_policy(policy)
        try:
            inputs = keras.Input((6, 3))
            x = keras.layers.Conv1D(4, 3, padding="same")(inputs)
            x = keras.layers.Dense(2, dtype="float32")(x)
            return keras.Model(inputs, keras.layers.Dense(2)(x))
        finally:
            keras.config.set_dtype_policy("float32")

    model, reference = build("mixed_bfloat16"), build("float32")
    reference.set_weights(model.get_weights())
    data = np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32")
    assert keras.ops.convert_to_numpy(model(data)).dtype != np.float32

    # the model, its input layer, the conv and the last dense
    assert precision.compute_in_float32(model) == 4
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    result = keras.ops.convert_to_numpy(model(data))
    assert result.dtype == np.float32
    np.testing.assert_allclose(
        result, keras.ops.convert_to_numpy(reference(data)), atol=1e-6
    )


def test_bucket_lengths():
    assert batching.bucket_lengths(512) == (32, 64, 128, 256, 512)
    assert batching.bucket_lengths(384) == (32, 64, 128, 256, 384)
    assert batching.bucket_lengths(20) == (20,)


def test_batches_cover_every_row_once_at_the_smallest_bucket():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=203)
    ids = np.zeros((203, 100), "int32")
    for row, length in enumerate(lengths):
        ids[row, :length] = row + 1  # row id, so rows can be traced
    targets = np.arange(203)
    buckets = batching.bucket_lengths(100)
    batches = batching.make_batches(ids, targets, 16, buckets, shuffle=True)
    seen = []
    for i in range(len(batches)):
        batch, batch_targets = batches[i]
        longest = (batch != 0).sum(1).max()
        assert batch.shape[1] == min(b for b in buckets if b >= longest)
        np.testing.assert_array_equal(batch[:, 0] - 1, batch_targets)
        seen.extend(batch_targets.tolist())
    assert sorted(seen) == list(range(203))
    # Two widths first: TensorFlow's adapter then keeps the length dynamic.
    assert batches[0][0].shape[1] != batches[1][0].shape[1]
    ordered = batching.make_batches(ids, targets, 16, buckets, shuffle=False)
    assert ordered[0][0].shape[1] != ordered[1][0].shape[1]
    first_order = [batches[i][1][0] for i in range(len(batches))]
    batches.on_epoch_end()
    assert first_order != [batches[i][1][0] for i in range(len(batches))]


def test_batches_of_named_inputs_cut_every_sequence_array():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=50)
    ids = (np.arange(40) < lengths[:, None]).astype("int32")
    inputs = {"token_ids": ids, "chars": np.repeat(ids[..., None], 3, -1)}
    labels = np.where(ids > 0, np.arange(50)[:, None], -100)

    def double_chars(batch, rng):
        batch["chars"] = batch["chars"] * 2
        return batch

    batches = batching.make_batches(
        inputs, labels, 8, (16, 40), shuffle=True, transform=double_chars
    )
    rows = []
    for i in range(len(batches)):
        batch, batch_labels = batches[i]
        width = batch["token_ids"].shape[1]
        assert batch["chars"].shape[:2] == batch_labels.shape
        assert batch_labels.shape[1] == width
        np.testing.assert_array_equal(
            batch["chars"][..., 0], 2 * batch["token_ids"]
        )
        rows.extend(batch_labels[:, 0].tolist())
    assert sorted(rows) == list(range(50))
    assert not inputs["chars"].max() > 1  # the transform saw a copy


def test_short_crops_keep_a_contiguous_window():
    cls_id, sep_id = 2, 3
    batch = np.zeros((50, 64), "int32")
    batch[:, 0] = cls_id
    batch[:, 1:61] = np.arange(100, 160)
    batch[:, 61] = sep_id
    out = reviews.short_crops(1.0, cls_id, sep_id)(
        batch.copy(), np.random.default_rng(1)
    )
    assert out.shape == batch.shape
    for row in out:
        tokens = row[row != 0]
        assert tokens[0] == cls_id and tokens[-1] == sep_id
        window = tokens[1:-1]
        assert 4 <= len(window) <= 40
        np.testing.assert_array_equal(np.diff(window), 1)  # contiguous


def test_atomic_model_save_loads_and_a_failed_one_keeps_the_good_file(
    tmp_path,
):
    """How the recipes save: `atomic_write(path, model.save)`."""
    path = tmp_path / "model.keras"
    path.write_bytes(b"good model")

    class Broken:
        def save(self, target):
            Path(target).write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, Broken().save)
    assert path.read_bytes() == b"good model"
    assert list(tmp_path.iterdir()) == [path]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    atomic_write(path, model.save)
    loaded = keras.saving.load_model(path)
    x = np.ones((1, 3), "float32")
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def test_warmup_cosine_rises_then_decays_to_zero():
    schedule = training.warmup_cosine(1e-3, steps=100)
    rates = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(101)]
    assert rates[0] == 0.0
    np.testing.assert_allclose(rates[5], 5e-4, rtol=1e-5)
    np.testing.assert_allclose(max(rates), 1e-3, rtol=1e-5)
    assert int(np.argmax(rates)) == 10
    assert rates[100] < 1e-9 and all(np.diff(rates[10:]) <= 0)


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="the recipes train eagerly on torch: nothing is traced",
)
def test_training_compiles_once_per_bucket_shape_not_per_batch():
    import keras_selfattn as ksa

    class CountTraces(keras.layers.Layer):
        """Identity whose Python body runs once per trace when compiled."""

        traces = 0

        def __init__(self):
            super().__init__()
            self.supports_masking = True

        def call(self, x):
            CountTraces.traces += 1
            return x

    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 65, size=300)
    ids = np.zeros((300, 64), "int32")
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, 50, size=length)
    labels = rng.integers(0, 2, size=(300, 1)).astype("float32")
    buckets = batching.bucket_lengths(64, smallest=16)
    batches = batching.make_batches(ids, labels, 16, buckets, shuffle=True)

    tokens = keras.Input((None,), dtype="int32")
    x = ksa.TokenAndPositionEmbedding(50, 64, 8, mask_zero=True)(tokens)
    x = CountTraces()(x)
    x = ksa.TransformerEncoder(16, 2)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(tokens, keras.layers.Dense(1, "sigmoid")(x))
    model.compile("adam", "binary_crossentropy", jit_compile=True)
    CountTraces.traces = 0
    model.fit(batches, epochs=2, verbose=0)

    shapes = {batches[i][0].shape for i in range(len(batches))}
    # Padded to its own longest row, almost every batch would differ.
    own_widths = {
        (batch != 0).sum(1).max()
        for batch, _ in (batches[i] for i in range(len(batches)))
    }
    assert len(own_widths) > 2 * len(shapes)
    # One trace per batch shape, plus the one abstract evaluation Keras runs
    # when it first builds the train step.
    assert 1 <= CountTraces.traces <= len(shapes) + 1
    assert 2 * len(batches) > 4 * len(shapes)  # many steps, few programs


def _dense_heads(count, rng):
    """`count` Dense layers named "head" with the same random weights."""
    layers = [keras.layers.Dense(3, name="head") for _ in range(count)]
    for layer in layers:
        layer.build((None, 4))
    values = [rng.normal(size=v.shape) for v in layers[0].trainable_variables]
    for layer in layers:
        for variable, value in zip(layer.trainable_variables, values):
            variable.assign(value)
    return layers


def test_scaled_adamw_steps_named_weights_at_their_factor():
    """Against plain AdamW at the base rate (the kernel) and at 5x (the
    bias), weights copied; no weight decay (it stays at the plain rate)."""
    rng = np.random.default_rng(0)
    scaled_layer, plain_layer, fast_layer = _dense_heads(3, rng)
    scaled = optimizers.ScaledAdamW(
        1e-2, weight_decay=0.0, learning_rate_scales={"head/bias": 5}
    )
    plain = keras.optimizers.AdamW(1e-2, weight_decay=0.0)
    fast = keras.optimizers.AdamW(5e-2, weight_decay=0.0)
    for _ in range(3):
        grads = [
            keras.ops.convert_to_tensor(rng.normal(size=v.shape), "float32")
            for v in scaled_layer.trainable_variables
        ]
        for optimizer, layer in (
            (scaled, scaled_layer),
            (plain, plain_layer),
            (fast, fast_layer),
        ):
            optimizer.apply(grads, layer.trainable_variables)
    numpy = keras.ops.convert_to_numpy
    np.testing.assert_allclose(
        numpy(scaled_layer.kernel), numpy(plain_layer.kernel), atol=1e-6
    )
    np.testing.assert_allclose(
        numpy(scaled_layer.bias), numpy(fast_layer.bias), atol=1e-6
    )
    assert not np.allclose(numpy(plain_layer.bias), numpy(fast_layer.bias))
    restored = optimizers.ScaledAdamW.from_config(scaled.get_config())
    assert restored.learning_rate_scales == {"head/bias": 5.0}


def test_scaled_adamw_refuses_bad_factors_and_unknown_weights():
    with pytest.raises(ValueError, match="positive factors.*'head/bias': 0"):
        optimizers.ScaledAdamW(1e-3, learning_rate_scales={"head/bias": 0})
    (layer,) = _dense_heads(1, np.random.default_rng(0))
    optimizer = optimizers.ScaledAdamW(
        1e-3, learning_rate_scales={"tags/bias": 2.0}
    )
    with pytest.raises(ValueError, match=r"does not update: \['tags/bias'\]"):
        optimizer.build(layer.trainable_variables)


def test_new_layers_learning_rate_defaults_and_checks(capsys):
    assert ner.parse_args([]).new_layers_learning_rate == 1e-3
    assert ner.parse_args(["--init", "none"]).new_layers_learning_rate is None
    # LoRA's measured runs train every layer at its one learning rate.
    lora = ner.parse_args(["--lora", "8"])
    assert lora.new_layers_learning_rate == cli.LORA_LEARNING_RATE
    given = ner.parse_args(["--new-layers-learning-rate", "5e-4"])
    assert given.new_layers_learning_rate == 5e-4
    with pytest.raises(SystemExit):
        ner.parse_args(["--init", "none", "--new-layers-learning-rate", "1"])
    assert "it needs --init" in capsys.readouterr().err


def test_defaults_layer_smoke_then_init_then_plain():
    plain = ner.parse_args([])  # fine-tunes the default checkpoint
    assert plain.init == ner.DEFAULT_INIT == "all-MiniLM-L6-v2"
    for name, value in ner.INIT_DEFAULTS.items():
        assert getattr(plain, name) == value, name
    assert plain.max_length == ner.DEFAULTS["max_length"]  # not overridden
    for spelling in ("none", "None"):
        scratch = ner.parse_args(["--init", spelling])
        assert scratch.init is None
        for name, value in ner.DEFAULTS.items():
            assert getattr(scratch, name) == value, name
    chosen = ner.parse_args(["--init", "x", "--epochs", "5", "--smoke"])
    assert chosen.init == "x"
    assert chosen.epochs == 5  # explicit beats every default
    assert chosen.batch_size == ner.SMOKE_DEFAULTS["batch_size"]
    assert chosen.learning_rate == ner.INIT_DEFAULTS["learning_rate"]


def test_sentiment_trains_from_scratch_by_default():
    assert sentiment.parse_args([]).init is None


def test_help_gives_the_defaults_the_run_applies(capsys):
    with pytest.raises(SystemExit):
        ner.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    epochs = ner.INIT_DEFAULTS["epochs"], ner.DEFAULTS["epochs"]
    assert "default {} (--init none: {})".format(*epochs) in text
    # An option only the from-scratch mode sets says nothing of --init none.
    assert "max_length" not in ner.INIT_DEFAULTS
    assert f"default {ner.DEFAULTS['max_length']} " in text
    # Settings that are no options still take their mode's value.
    assert "--vocab-size" not in text
    assert (
        ner.parse_args(["--smoke", "--init", "none"]).vocab_size
        == (ner.SMOKE_DEFAULTS["vocab_size"])
    )


@pytest.mark.parametrize("recipe", [sentiment, ner], ids=["sentiment", "ner"])
@pytest.mark.parametrize("option", ["--epochs", "--batch-size", "--max-length"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_sizes_must_be_positive_integers(recipe, option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe.parse_args([option, value])
    assert exit_info.value.code == 2  # argparse's usage error
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.endswith(
        f"error: argument {option}: expected a positive integer. "
        f"Received: {value!r}"
    )


@pytest.mark.parametrize("extra", [["--no-ngram-branch"], ["--init", "x"]])
def test_no_encoder_needs_the_ngram_branch_alone(extra, capsys):
    assert not sentiment.parse_args(["--no-encoder"]).encoder
    with pytest.raises(SystemExit):
        sentiment.parse_args(["--no-encoder", *extra])
    assert "--no-encoder leaves the n-gram branch alone" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mlm-epochs", "-1"], "--mlm-epochs must be 0 or more"),
        (["--mlm-epochs", "1", "--init", "x"], "--init x"),
        (["--mlm-epochs", "1", "--no-encoder"], "--encoder False"),
    ],
)
def test_mlm_pretraining_needs_the_scratch_encoder(extra, message, capsys):
    assert sentiment.parse_args(["--mlm-epochs", "2"]).mlm_epochs == 2
    with pytest.raises(SystemExit):
        sentiment.parse_args(extra)
    assert message in capsys.readouterr().err


def test_sizes_given_win_over_the_defaults():
    args = sentiment.parse_args(
        ["--epochs", "3", "--batch-size", "5", "--max-length", "7"]
    )
    assert (args.epochs, args.batch_size, args.max_length) == (3, 5, 7)


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def imported_modules(path):
    """`(module, names)` of each import statement of the file `path`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module, [alias.name for alias in node.names]


def test_the_command_line_does_not_import_serving():
    assert not [
        (module, names)
        for module, names in imported_modules(RECIPES / "cli.py")
        if module == "recipes.deploy" or "deploy" in names
    ]


RECIPE_TESTS = [
    "test_crf.py",
    "test_data.py",
    "test_ner_recipe.py",
    "test_recipe_common.py",
    "test_sentiment_recipe.py",
    "test_tagging.py",
    "test_training.py",
]


def test_no_module_imports_private_names_of_another():
    tests = Path(__file__).resolve().parent
    private = [
        f"{path.name}: from {module} import {name}"
        for path in [*RECIPES.glob("*.py"), *(tests / t for t in RECIPE_TESTS)]
        for module, names in imported_modules(path)
        for name in names
        if name.startswith("_")
    ]
    assert not private


def test_serving_imports_no_framework():
    """What `predict --artifact` imports, in a fresh process."""
    probe = (
        "import sys\n"
        "from recipes import decoding, deploy, reviews\n"
        "frameworks = ('keras', 'tensorflow', 'jax', 'torch')\n"
        "print([name for name in frameworks if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=RECIPES.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.once
def test_each_recipe_picks_its_own_default_backend():
    # In a fresh process without KERAS_BACKEND, as a user runs a recipe:
    # the recipe's measured default; KERAS_BACKEND, when set, wins.
    code = (
        "import os, recipes; recipes.use_default_backend('{recipe}'); "
        "print(os.environ['KERAS_BACKEND'], '|', recipes.BACKEND_NOTE)"
    )
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}

    def backend_of(recipe, **extra):
        result = subprocess.run(
            [sys.executable, "-c", code.format(recipe=recipe)],
            cwd=root,
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    for recipe, backend in recipes.DEFAULT_BACKENDS.items():
        assert backend_of(recipe).startswith(f"{backend} | backend: {backend}")
    assert backend_of("sentiment", KERAS_BACKEND="tensorflow").startswith(
        "tensorflow | backend: tensorflow (from KERAS_BACKEND)"
    )
