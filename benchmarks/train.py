"""Training throughput (tokens/s) of the sentiment recipe's model, built from
our layers vs the same model built from keras-hub layers, in one process.

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/train.py
    done

All models: token + learned position embedding, one post-LN encoder block
(GELU), masked mean pooling, logistic output; same sizes, same optimizer, the
recipe's compile settings (XLA on TensorFlow and JAX, eager on torch). Steps
alternate A B C A B C on the same random batches; medians after warm-up.

Three models: the recipe's (residual dropout 0.1, no dropout on the
attention probabilities, so the fused/blockwise kernels train), the same
with attention dropout 0.1 too (what keras-hub's `TransformerEncoder`
always does with `dropout=0.1`: the probabilities are materialised), and
the keras-hub-built one.
"""

if not __package__:  # run as a file: make `recipes` importable
    import runpy
    from pathlib import Path

    launch = Path(__file__).resolve().parents[1] / "recipes" / "_launch.py"
    runpy.run_path(str(launch))["register"]()

import argparse
import time

import keras
import numpy as np

from recipes.sentiment import build_model
from recipes.sentiment import parse_args as recipe_args


def build_keras_hub_model(args, vocab_size):
    import keras_hub

    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding = keras.ops.not_equal(token_ids, 0)
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocab_size, args.max_length, args.embedding_dim
    )(token_ids)
    x = keras.layers.Dropout(args.dropout)(x)
    for _ in range(args.num_layers):
        x = keras_hub.layers.TransformerEncoder(
            args.intermediate_dim,
            args.num_heads,
            dropout=args.dropout,
            activation="gelu",
        )(x, padding_mask=padding)
    x = keras.layers.GlobalAveragePooling1D()(x, mask=padding)
    x = keras.layers.Dropout(args.dropout)(x)
    probability = keras.layers.Dense(1, "sigmoid")(x)
    return keras.Model(token_ids, probability)


def compile_like_recipe(model):
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss="binary_crossentropy",
        jit_compile=keras.backend.backend() != "torch",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[128, 256, 512]
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--vocab-size", type=int, default=20000)
    options = parser.parse_args()
    args = recipe_args([])  # the recipe's default model settings
    rng = np.random.default_rng(0)
    same_dropout = argparse.Namespace(**vars(args))
    same_dropout.attention_dropout = args.dropout
    models = {
        "ours": build_model(args, options.vocab_size),
        "ours, attention dropout": build_model(
            same_dropout, options.vocab_size
        ),
        "keras-hub": build_keras_hub_model(args, options.vocab_size),
    }
    for model in models.values():
        compile_like_recipe(model)
    print(
        f"backend {keras.backend.backend()}; batch {options.batch_size}; "
        f"width {args.embedding_dim}, {args.num_layers} layer(s), "
        f"{args.num_heads} heads; median of {options.steps} steps"
    )
    print(
        f"recipe: dropout {args.dropout}, attention dropout "
        f"{args.attention_dropout}, attention {args.attention!r}"
    )
    print(
        f"{'length':>6} {'keras-hub tok/s':>16} {'ours tok/s':>11} ratio "
        f"{'ours+attn-dropout tok/s':>24} ratio"
    )
    for length in options.lengths:
        ids = rng.integers(1, options.vocab_size, (options.batch_size, length))
        ids[: options.batch_size // 2, length // 2 :] = 0  # half padded
        ids = ids.astype("int32")
        labels = rng.integers(0, 2, (options.batch_size, 1)).astype("float32")
        times = {name: [] for name in models}
        for step in range(options.steps + 2):
            for name, model in models.items():
                start = time.perf_counter()
                model.train_on_batch(ids, labels)
                if step >= 2:  # warm-up (compilation) excluded
                    times[name].append(time.perf_counter() - start)
        rate = {
            name: options.batch_size * length / np.median(t)
            for name, t in times.items()
        }
        hub = rate["keras-hub"]
        ours, same = rate["ours"], rate["ours, attention dropout"]
        print(
            f"{length:>6} {hub:>16.0f} {ours:>11.0f} {ours / hub:4.2f}x "
            f"{same:>24.0f} {same / hub:4.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
