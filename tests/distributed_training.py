"""One training step on one device and under `keras.distribution`.

test_distribution.py runs this script in its own process, with JAX and 4
simulated CPU devices (the test process has set up JAX with one):

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python tests/distributed_training.py OUT_DIR

For each of one device, data parallel (mesh 4) and model parallel (meshes
2x2 and 1x4) it builds the same model from the same weights, takes one SGD
step on the same batch, and records the loss, every updated weight and
where each weight lives; each distributed model is saved and loaded back
with no distribution (on one device), and one is run on the batch. It
prints a JSON report as its last line; the test reads it and checks it.
"""

import doctest
import json
import sys
from pathlib import Path

import keras
import numpy as np

import keras_selfattn as ksa
from keras_selfattn import distribution

# Coprime where the mesh allows: 4 heads of 4 (width 16), feed-forward 20,
# 8 query / 4 key-value heads of 3 (gated), a 12-unit single head, 37
# tokens, 11 positions, 3 classes. Split sizes are multiples of 4 (the
# model axis).
VOCABULARY, LENGTH, WIDTH, CLASSES = 37, 11, 16, 3
MESHES = {"data 4": ("data", (4,)), "model 2x2": ("model", (2, 2))}
MESHES["model 1x4"] = ("model", (1, 4))
# Every run's saved weights are compared after loading; this one's
# predictions too (each prediction is one more program to compile).
RELOAD_PREDICTS = "model 2x2"


def build_model():
    """Every layer of ours that has weights, under stable names."""
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = ksa.TokenAndPositionEmbedding(
        VOCABULARY, LENGTH, WIDTH, mask_zero=True, name="embedding"
    )(ids)
    x = ksa.TransformerEncoder(20, 4, normalize_first=True, name="encoder")(x)
    x = ksa.MultiHeadAttention(
        num_heads=8,
        key_dim=3,
        num_key_value_heads=4,
        use_gate=True,
        name="grouped",
    )(x)
    x = ksa.SelfAttention(use_projections=True, units=12, name="single")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    probabilities = keras.layers.Dense(
        CLASSES, activation="softmax", name="classifier"
    )(x)
    return keras.Model(ids, probabilities)


def batch(rows=8, seed=3):
    """Token ids with padding (rows of 1 to LENGTH tokens) and labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.permutation(np.linspace(1, LENGTH, rows).astype(int))
    ids = rng.integers(1, VOCABULARY, size=(rows, LENGTH)).astype("int32")
    ids[np.arange(LENGTH) >= lengths[:, None]] = 0
    return ids, rng.integers(0, CLASSES, size=rows).astype("int32")


def train_step(weights, ids, labels):
    """The model (under the current distribution) after one SGD step."""
    model = build_model()
    model.set_weights(weights)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="sparse_categorical_crossentropy",
        jit_compile=True,
    )
    loss = model.train_on_batch(ids, labels)
    return model, float(loss)


def to_numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def placement(model, strategy):
    """Per weight: its JAX sharding and what `distribution` says of it."""
    report = {}
    for variable in model.weights:
        sharding = variable.value.sharding
        shape = tuple(variable.shape)
        report[variable.path] = {
            "spec": [None if a is None else str(a) for a in sharding.spec],
            "devices": len(sharding.device_set),
            "device_shape": list(sharding.shard_shape(shape)),
            "expected_shape": list(
                distribution.shard_shape(variable, strategy)
            ),
            "shape": list(shape),
        }
    return report


def main(out_dir):
    out_dir = Path(out_dir)
    ids, labels = batch()
    keras.utils.set_random_seed(0)
    initial = [to_numpy(v) for v in build_model().weights]
    single, single_loss = train_step(initial, ids, labels)
    single_weights = {v.path: to_numpy(v) for v in single.weights}
    report = {
        "devices": keras.distribution.list_devices(),
        "single": {
            "loss": single_loss,
            "max_update": max(
                float(np.abs(w - w0).max())
                for w, w0 in zip(single_weights.values(), initial)
            ),
            "devices": sorted(
                {len(v.value.sharding.device_set) for v in single.weights}
            ),
        },
    }
    for name, (kind, mesh_shape) in MESHES.items():
        strategy = distribution.make_distribution(kind, mesh_shape)
        with strategy.scope():
            model, loss = train_step(initial, ids, labels)
            weights = {v.path: to_numpy(v) for v in model.weights}
            path = out_dir / f"{kind}_{'x'.join(map(str, mesh_shape))}.keras"
            model.save(path)
            report[name] = {
                "loss": loss,
                "weight_diffs": {
                    p: float(np.abs(w - single_weights[p]).max())
                    for p, w in weights.items()
                },
                "placement": placement(model, strategy),
                "mesh": distribution.describe_mesh(strategy),
                "sharding": distribution.describe_sharding(model, strategy),
            }
            if name == RELOAD_PREDICTS:
                predicted = model.predict(ids, verbose=0)
        loaded = keras.saving.load_model(path)  # no distribution: one device
        report[name]["reloaded_devices"] = sorted(
            {len(v.value.sharding.device_set) for v in loaded.weights}
        )
        report[name]["reloaded_weights_equal"] = all(
            np.array_equal(to_numpy(v), weights[v.path]) for v in loaded.weights
        )
        if name == RELOAD_PREDICTS:
            report[name]["reload_diff"] = float(
                np.abs(loaded.predict(ids, verbose=0) - predicted).max()
            )
    failures, tried = doctest.testmod(distribution)
    report["doctests"] = {"failed": failures, "tried": tried}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
