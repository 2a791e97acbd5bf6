"""Configs, `.keras` round trips, and files crossing backends."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from support import BACKEND, later_backends

import keras_selfattn as ksa

LAYERS = [
    ksa.SelfAttention(use_projections=True, units=6, dropout=0.1, seed=3),
    ksa.MultiHeadAttention(
        4,
        3,
        value_dim=5,
        output_dim=7,
        num_key_value_heads=2,
        dropout=0.2,
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        seed=1,
        implementation="einsum",
    ),
    ksa.TransformerEncoder(
        12,
        2,
        dropout=0.1,
        activation="gelu",
        normalize_first=True,
        layer_norm_epsilon=1e-6,
        num_key_value_heads=1,
        seed=2,
        attention_dropout=0.0,
        implementation="blockwise",
    ),
    ksa.TokenAndPositionEmbedding(
        50,
        9,
        8,
        position_encoding="sinusoidal",
        mask_zero=True,
        max_wavelength=500.0,
    ),
    ksa.SinusoidalPositionEncoding(max_wavelength=123.0),
]


@pytest.mark.parametrize(
    "layer", LAYERS, ids=lambda layer: type(layer).__name__
)
def test_config_round_trip_is_complete(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    init_args = type(layer).__init__.__code__.co_varnames[
        1 : type(layer).__init__.__code__.co_argcount
    ]
    # An `attention_config` is written as the arguments it holds.
    init_args = set(init_args) - {"attention_config"}
    assert init_args <= set(config), init_args - set(config)


def test_attention_config_is_written_as_its_arguments():
    config = ksa.layers.attention_config.AttentionConfig(
        num_heads=4, num_key_value_heads=2, sliding_window=3, seed=5
    )
    layer = ksa.MultiHeadAttention(4, 8, attention_config=config)
    written = layer.get_config()
    assert "attention_config" not in written
    assert written["num_key_value_heads"] == 2
    assert written["sliding_window"] == 3
    clone = ksa.MultiHeadAttention.from_config(written)
    assert clone.attention_config == config
    with pytest.raises(ValueError, match="sliding_window"):
        ksa.MultiHeadAttention(4, 8, sliding_window=5, attention_config=config)


def build_model():
    """All public layers in one functional model (fixed seed weights)."""
    keras.utils.set_random_seed(42)
    ids = keras.Input((None,), dtype="int32")
    x = ksa.TokenAndPositionEmbedding(50, 9, 8, mask_zero=True)(ids)
    x = x + ksa.SinusoidalPositionEncoding()(x)
    x = ksa.TransformerEncoder(
        16, 2, normalize_first=True, implementation="blockwise"
    )(x)
    x = ksa.TransformerEncoder(16, 4, num_key_value_heads=2)(x)
    x = ksa.MultiHeadAttention(2, 4)(x, use_causal_mask=True)
    x = ksa.SelfAttention(use_projections=True)(x)
    x = ksa.SelfAttention()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(3)(x))


IDS = np.array([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10], [11, 0, 0, 0, 0, 0]])


def test_keras_file_round_trip(tmp_path):
    model = build_model()
    want = model.predict(IDS, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(loaded.predict(IDS, verbose=0), want)


CROSS_BACKEND_SCRIPT = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from test_saving import IDS, build_model

    source, directory = sys.argv[1], sys.argv[2]
    mine = keras.backend.backend()
    loaded = keras.saving.load_model(f"{directory}/{source}.keras")
    np.save(f"{directory}/{source}-under-{mine}.npy",
            loaded.predict(IDS, verbose=0))
    model = build_model()
    model.save(f"{directory}/{mine}.keras")
    np.save(f"{directory}/{mine}.npy", model.predict(IDS, verbose=0))
    # test_keras_compat's model of every keras argument, in one process.
    compat = keras.saving.load_model(f"{directory}/compat.keras")
    inputs = [np.load(f"{directory}/compat-input{i}.npy") for i in range(2)]
    for i, output in enumerate(compat.predict(inputs, verbose=0)):
        np.save(f"{directory}/compat-output{i}.npy", output)
    """
)


@pytest.mark.parametrize("other", later_backends())
def test_keras_file_crosses_backends(tmp_path, other):
    """Our file loads under `other`; `other`'s file loads here (each pair
    of backends once per `make test`: see `later_backends`)."""
    model = build_model()
    want = model.predict(IDS, verbose=0)
    model.save(tmp_path / f"{BACKEND}.keras")
    compat_inputs, compat_want = save_compat_model(tmp_path)
    env = dict(os.environ, KERAS_BACKEND=other)
    result = subprocess.run(
        [sys.executable, "-c", CROSS_BACKEND_SCRIPT, BACKEND, str(tmp_path)],
        cwd=os.path.dirname(os.path.abspath(__file__)),  # imports this file
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    there = np.load(tmp_path / f"{BACKEND}-under-{other}.npy")
    np.testing.assert_allclose(there, want, atol=1e-6)

    theirs = keras.saving.load_model(tmp_path / f"{other}.keras")
    np.testing.assert_allclose(
        theirs.predict(IDS, verbose=0),
        np.load(tmp_path / f"{other}.npy"),
        atol=1e-6,
    )
    for i, expected in enumerate(compat_want):
        got = np.load(tmp_path / f"compat-output{i}.npy")
        np.testing.assert_allclose(got, expected, atol=1e-5)


def save_compat_model(directory):
    """test_keras_compat's model of every keras argument, saved with its
    inputs: `(inputs, predictions)`."""
    from test_keras_compat import compat_inputs, saving_model

    inputs = compat_inputs()
    model = saving_model()
    model.save(directory / "compat.keras")
    for i, array in enumerate(inputs):
        np.save(directory / f"compat-input{i}.npy", array)
    return inputs, model.predict(inputs, verbose=0)


def test_file_saved_by_version_0_1_0_loads_and_predicts_the_same():
    # Written by tests/fixtures/make_saved_model.py under keras-selfattn
    # 0.1.0: every public layer, with the options each saved then.
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    model = keras.saving.load_model(os.path.join(fixtures, "saved_0_1_0.keras"))
    expected = np.load(os.path.join(fixtures, "saved_0_1_0.npz"))
    # 0.1.0 named the encoder's `normalize_first` `norm_first`.
    assert model.get_layer("encoder_window").normalize_first
    assert not model.get_layer("encoder").normalize_first
    np.testing.assert_allclose(
        model.predict(expected["token_ids"], verbose=0),
        expected["predictions"],
        atol=1e-5,
        rtol=0,
    )
