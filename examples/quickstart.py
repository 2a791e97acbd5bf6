"""Build, fit (XLA), save and reload a model made of keras-selfattn layers.

Run it once per backend; every run also loads the `.keras` files that the
other backends saved and checks that they predict what they predicted there:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python examples/quickstart.py
    done
"""

import glob
import os

import keras
import numpy as np

import keras_selfattn as ksa

# Toy task: does token 7 occur in the sequence? Id 0 is padding.
rng = np.random.default_rng(0)
ids = rng.integers(1, 100, size=(2048, 24)).astype("int32")
ids[:, 12:] *= rng.random((2048, 12)) > 0.5
ids[: len(ids) // 2, 5] = 7
labels = (ids == 7).any(axis=1).astype("float32")

inputs = keras.Input((None,), dtype="int32")
x = ksa.TokenAndPositionEmbedding(100, 24, 32, mask_zero=True)(inputs)
x = ksa.TransformerEncoder(intermediate_dim=64, num_heads=4)(x)
x = ksa.MultiHeadAttention(num_heads=2, key_dim=16)(x)
x = ksa.SelfAttention(use_projections=True)(x)
x = keras.layers.GlobalAveragePooling1D()(x)  # honours the padding mask
outputs = keras.layers.Dense(1, activation="sigmoid")(x)
model = keras.Model(inputs, outputs)
model.compile(
    "adam", "binary_crossentropy", metrics=["accuracy"], jit_compile=True
)
model.fit(ids, labels, epochs=4, batch_size=64, verbose=2)

backend = keras.backend.backend()
os.makedirs("quickstart", exist_ok=True)
model.save(f"quickstart/{backend}.keras")
np.save(f"quickstart/{backend}.npy", model.predict(ids[:64], verbose=0))

for path in sorted(glob.glob("quickstart/*.keras")):
    loaded = keras.saving.load_model(path)  # no custom_objects needed
    saved = np.load(path.replace(".keras", ".npy"))
    diff = np.abs(loaded.predict(ids[:64], verbose=0) - saved).max()
    print(f"{path} loaded under {backend}: max |difference| {diff:.1e}")
    assert diff < 1e-5, path
