"""model.fit with jit_compile=True learns, on every backend."""

import keras
import numpy as np

import keras_selfattn as ksa


def toy_data(n=384, length=10, seed=0):
    """Label: does token 3 occur? Padding is id 0, on the left of every
    fourth row, so causal attention there has query rows with no key."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 20, size=(n, length)).astype("int32")
    ids[:, 6:] *= rng.random((n, 4)) > 0.5
    ids[: n // 2, 2] = 3
    ids[::4, :2] = 0
    labels = (ids == 3).any(axis=1).astype("float32")
    return ids, labels


def test_fit_with_jit_compile_lowers_the_loss():
    keras.utils.set_random_seed(0)
    ids, labels = toy_data()
    inputs = keras.Input((None,), dtype="int32")
    x = ksa.TokenAndPositionEmbedding(20, 10, 16, mask_zero=True)(inputs)
    x = ksa.TransformerEncoder(32, 2, dropout=0.1)(x)
    x = ksa.MultiHeadAttention(2, 8, dropout=0.1)(x, use_causal_mask=True)
    x = ksa.SelfAttention(use_projections=True)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, "sigmoid")(x))
    model.compile(
        keras.optimizers.Adam(3e-3), "binary_crossentropy", jit_compile=True
    )
    assert model.jit_compile
    history = model.fit(ids, labels, epochs=4, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.5 * losses[0], losses
    for weight in model.trainable_weights:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(weight)))
