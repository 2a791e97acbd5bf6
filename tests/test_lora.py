"""LoRA fine-tuning of models of our layers (`lora.enable_lora`):
only the adapters train, and a `.keras` round trip gives back an adapted
model that predicts the same and trains on."""

import argparse

import keras
import numpy as np
import pytest
from support import to_numpy
from tiny_bert import TINY_CONFIG, random_tensors, write_checkpoint

from keras_selfattn import lora, pretrained
from keras_selfattn.lora import adapter_factors
from recipes import cli, ner, sentiment, training

RANK = 2
# TINY_CONFIG's sizes: width 15 = 3 heads of 5, 2 blocks.
WIDTH, HEADS, HEAD_SIZE, BLOCKS = 15, 3, 5, 2
BATCH, LENGTH = 4, 7


def tiny_encoder():
    """The pretrained encoder with a tiny random checkpoint's weights, no
    dropout (so training is deterministic)."""
    config = pretrained.BertConfig.from_dict(TINY_CONFIG)
    model = pretrained.bert_encoder(config, dropout=0.0, attention_dropout=0.0)
    pretrained.assign_weights(
        model, pretrained.bert_weights(random_tensors(TINY_CONFIG), config)
    )
    return model


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, TINY_CONFIG["vocab_size"], (BATCH, LENGTH))
    mask = np.ones((BATCH, LENGTH), bool)
    mask[1, -3:] = False
    targets = rng.normal(size=(BATCH, LENGTH, WIDTH)).astype("float32")
    return {"token_ids": ids.astype("int32"), "padding_mask": mask}, targets


def weight_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def values(variables):
    return {v.path: to_numpy(v) for v in variables}


def fit(model, steps=3):
    """Full-batch steps; returns the losses and checks that no frozen
    weight moved."""
    inputs, targets = batch()
    frozen = values(model.non_trainable_weights)
    losses = model.fit(
        inputs, targets, epochs=steps, batch_size=BATCH, verbose=0
    ).history["loss"]
    for path, value in values(model.non_trainable_weights).items():
        np.testing.assert_array_equal(value, frozen[path], err_msg=path)
    return losses


def test_adapters_train_save_load_and_train_on(tmp_path):
    model = tiny_encoder()
    lora.enable_lora(model, RANK)
    # keras factors the last kernel axis: a (width, heads, rank), b (rank,
    # head size), on the query and value projections of every block.
    per_projection = WIDTH * HEADS * RANK + RANK * HEAD_SIZE
    assert weight_count(model) == BLOCKS * 2 * per_projection == 400
    assert sorted(w.path for w in model.trainable_weights) == sorted(
        f"transformer_layer_{i}/self_attention/{part}/lora_kernel_{factor}"
        for i in range(BLOCKS)
        for part in ("query", "value")
        for factor in "ab"
    )
    for name in ("transformer_layer_0", "transformer_layer_1"):
        assert model.get_layer(name).get_config()["lora"] == {
            "self_attention/query": {"lora_rank": RANK, "lora_alpha": RANK},
            "self_attention/value": {"lora_rank": RANK, "lora_alpha": RANK},
        }

    model.compile(keras.optimizers.Adam(0.05), "mse")
    losses = fit(model)
    assert losses[-1] < losses[0], losses

    inputs, _ = batch()
    expected = to_numpy(model(inputs))
    model.save(tmp_path / "lora.keras")
    loaded = keras.saving.load_model(tmp_path / "lora.keras")
    np.testing.assert_allclose(to_numpy(loaded(inputs)), expected, atol=1e-6)
    assert sorted(w.path for w in loaded.trainable_weights) == sorted(
        w.path for w in model.trainable_weights
    )
    # Trains on with the optimizer it was saved with.
    losses = fit(loaded)
    assert losses[-1] < losses[0], losses


def test_other_targets_and_alpha_round_trip(tmp_path):
    """A Dense and an Embedding adapted: the loaded model predicts the
    same, with the same scale, and its adapters start afresh (`b` zero,
    `a` drawn again: with both zero nothing would train)."""
    model = tiny_encoder()
    targets = ["feedforward_output_dense", "token_embedding"]
    lora.enable_lora(model, RANK, target_layer_names=targets, alpha=3.0)
    ffn, vocab = TINY_CONFIG["intermediate_size"], TINY_CONFIG["vocab_size"]
    dense = BLOCKS * (ffn * RANK + RANK * WIDTH)
    assert weight_count(model) == dense + vocab * RANK + RANK * WIDTH
    inputs, _ = batch()
    for layer in model._flatten_layers():
        if getattr(layer, "lora_enabled", False):  # an update to merge
            _, b = adapter_factors(layer)
            b.assign(np.full(b.shape, 0.1, "float32"))
    expected = to_numpy(model(inputs))

    model.save(tmp_path / "lora.keras")
    loaded = keras.saving.load_model(tmp_path / "lora.keras")
    np.testing.assert_allclose(to_numpy(loaded(inputs)), expected, atol=1e-5)
    adapted = [
        layer
        for layer in loaded._flatten_layers()
        if getattr(layer, "lora_enabled", False)
    ]
    assert sorted(layer.name for layer in adapted) == sorted(
        targets + ["feedforward_output_dense"]
    )
    for layer in adapted:
        assert (layer.lora_rank, layer.lora_alpha) == (RANK, 3.0)
        a, b = adapter_factors(layer)
        assert np.abs(to_numpy(a)).max() > 0 and not to_numpy(b).any()
    assert weight_count(loaded) == weight_count(model)


def test_plain_config_has_no_lora_entry():
    model = tiny_encoder()
    for layer in model.layers:
        assert "lora" not in layer.get_config(), layer.name


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rank": 0}, ValueError, "`rank` must be a positive integer. "),
        ({"rank": 1.5}, ValueError, "Received: rank=1.5"),
        ({"rank": True}, ValueError, "Received: rank=True"),
        ({"alpha": 0}, ValueError, "`alpha` must be a positive number. "),
        (
            {"target_layer_names": "query"},
            TypeError,
            "target_layer_names='query'",
        ),
        (
            {"target_layer_names": []},
            ValueError,
            "Received: target_layer_names=[]",
        ),
        (
            {"target_layer_names": ["query", "keys"]},
            ValueError,
            "'feedforward_intermediate_dense', 'feedforward_output_dense', "
            "'key', 'query', 'token_embedding', 'value']. "
            "Received: target_layer_names=['query', 'keys']",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, error, message):
    model = tiny_encoder()
    with pytest.raises(error) as caught:
        lora.enable_lora(model, **{"rank": RANK, **kwargs})
    assert message in str(caught.value)
    assert weight_count(model) == model.count_params()  # nothing changed


def test_model_must_be_a_model_and_adapted_once():
    model = tiny_encoder()
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        lora.enable_lora(model.get_layer("transformer_layer_0"), RANK)
    lora.enable_lora(model, RANK)
    with pytest.raises(ValueError, match="LoRA is already enabled on"):
        lora.enable_lora(model, RANK, target_layer_names=["value"])
    # Other targets later: the first adapters keep training.
    lora.enable_lora(model, RANK, target_layer_names=["key"])
    assert weight_count(model) == 400 + 200


def test_recipe_lora_flag(tmp_path, capsys):
    lora = ner.parse_args(["--lora", "4"])  # the default --init
    assert lora.lora == 4 and lora.learning_rate == cli.LORA_LEARNING_RATE
    assert ner.parse_args([]).lora is None
    given = ner.parse_args(["--lora", "4", "--learning-rate", "1e-3"])
    assert given.learning_rate == 1e-3
    for recipe, argv in (
        (ner, ["--init", "none", "--lora", "4"]),
        (sentiment, ["--lora", "4"]),  # trains from scratch by default
        (ner, ["--lora", "0"]),
    ):
        with pytest.raises(SystemExit):
            recipe.parse_args(argv)
        assert "--lora" in capsys.readouterr().err

    checkpoint = write_checkpoint(tmp_path, random_tensors(TINY_CONFIG))
    args = argparse.Namespace(
        init=str(checkpoint), dropout=0.0, max_length=16, lora=RANK
    )
    encoder, _ = training.load_pretrained(args)
    assert weight_count(encoder) == 400
    assert "LoRA rank 2 on query and value: 400 of the" in (
        capsys.readouterr().out
    )
