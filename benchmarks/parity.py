"""Max |difference| of our layers vs the peers, weights copied (float32).

for b in tensorflow jax torch; do
    KERAS_BACKEND=$b python benchmarks/parity.py
done
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import keras
import numpy as np
from test_layers import copy_encoder_weights
from test_layers import keep_one_key_per_row
from test_layers import paired_mha

import keras_selfattn as ksa


def max_diff(a, b):
    a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
    return float(np.abs(a - b).max())


def main():
    import keras_hub

    rng = np.random.default_rng(0)
    rows = []
    query = rng.standard_normal((4, 33, 64)).astype("float32")
    value = rng.standard_normal((4, 47, 48)).astype("float32")
    mask = keep_one_key_per_row(rng.random((4, 33, 47)) > 0.5)
    ours, theirs = paired_mha(query.shape, value.shape, num_heads=4, key_dim=16)
    rows.append(
        (
            "MultiHeadAttention vs keras (cross, mask)",
            max_diff(
                ours(query, value, attention_mask=mask),
                theirs(query, value, attention_mask=mask),
            ),
        )
    )
    x = rng.standard_normal((4, 65, 64)).astype("float32")
    padding = np.arange(65)[None, :] < np.array([65, 40, 17, 1])[:, None]
    for norm_first in (False, True):
        peer = keras_hub.layers.TransformerEncoder(
            128, 4, normalize_first=norm_first
        )
        mine = ksa.TransformerEncoder(4, 128, norm_first=norm_first)
        peer.build(x.shape)
        mine.build(x.shape)
        copy_encoder_weights(mine, peer)
        rows.append(
            (
                f"TransformerEncoder vs keras-hub (norm_first={norm_first})",
                max_diff(
                    mine(x, padding_mask=padding), peer(x, padding_mask=padding)
                ),
            )
        )
    print(f"backend {keras.backend.backend()}, float32, CPU")
    for name, diff in rows:
        print(f"  {name:52s} max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
