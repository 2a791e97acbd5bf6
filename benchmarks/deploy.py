"""Serving the trained sentiment model: keras float32, keras int8 and int4
(`model.quantize`), and the ONNX artifact in onnxruntime, side by side in
one process on the recipe's test split.

    python recipes/sentiment.py                  # trains runs/sentiment
    python benchmarks/deploy.py --model-dir runs/sentiment

Every variant classifies the same batches: the test reviews encoded as the
recipe does, sorted by length, `--batch-size` rows a batch cut to the
recipe's length buckets (so compiled programs are reused). Passes over
the whole split alternate A B C D A B C D after one warm-up pass each;
the table gives reviews/s (median), test accuracy, and the size of the
weights (of the ONNX file for the artifact).
"""

if not __package__:  # run as a file: make `recipes` importable
    import runpy
    from pathlib import Path

    launch = Path(__file__).resolve().parents[1] / "recipes" / "_launch.py"
    runpy.run_path(str(launch))["register"]()

import argparse
import time
from pathlib import Path

import keras
import numpy as np

from recipes import batching, data, deploy, exporting, training
from recipes.sentiment import encode


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="runs/sentiment")
    parser.add_argument(
        "--test-size", type=int, help="the first N test reviews (default all)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def test_batches(settings, tokenizer, test_size, batch_size):
    """`(batches, labels)`: the recipe's test split encoded, sorted by
    length, cut into batches trimmed to the length buckets."""
    texts, labels = data.load_imdb()
    splits, _ = data.split_imdb(texts, labels, seed=settings.seed)
    texts, labels = splits["test"]
    texts, labels = texts[:test_size], labels[:test_size]
    ids = encode(tokenizer, texts, settings)
    order = np.argsort((ids != 0).sum(1), kind="stable")
    ids, labels = ids[order], labels[order]
    buckets = batching.bucket_lengths(settings.max_length)
    batches = []
    for start in range(0, len(ids), batch_size):
        rows = ids[start : start + batch_size]
        width = int((rows != 0).sum(1).max())
        bucket = next(size for size in buckets if size >= width)
        batches.append(np.ascontiguousarray(rows[:, :bucket]))
    return batches, labels


def keras_runner(model):
    return lambda ids: keras.ops.convert_to_numpy(model.predict_on_batch(ids))


def weights_size(model):
    """MiB of `model`'s weights (quantized kernels and their scales
    included; a saved file also holds the optimizer's state)."""
    return (
        sum(
            np.prod(weight.shape) * np.dtype(weight.dtype).itemsize
            for weight in model.weights
        )
        / 2**20
    )


def main(argv=None):
    args = parse_args(argv)
    model_dir = Path(args.model_dir)
    model, tokenizer, _, settings = training.load_run(model_dir)
    batches, labels = test_batches(
        settings, tokenizer, args.test_size, args.batch_size
    )
    print(
        f"backend {keras.backend.backend()}; {len(labels)} test reviews in "
        f"{len(batches)} batches of up to {args.batch_size}"
    )
    variants, sizes = {}, {}
    variants["keras float32"] = keras_runner(model)
    sizes["keras float32"] = weights_size(model)
    for mode in ("int8", "int4"):
        quantized = keras.saving.load_model(model_dir / "model.keras")
        quantized.quantize(mode)
        variants[f"keras {mode}"] = keras_runner(quantized)
        sizes[f"keras {mode}"] = weights_size(quantized)
    artifact = model_dir / deploy.ARTIFACTS["onnx"]
    if not artifact.exists():
        sample = training.export_sample(model, settings.max_length)
        exporting.export_artifact(model, model_dir, "onnx", sample)
    variants["onnx (onnxruntime)"] = deploy.load_artifact(artifact)
    sizes["onnx (onnxruntime)"] = artifact.stat().st_size / 2**20

    seconds = {name: [] for name in variants}
    accuracy = {}
    for name, run in variants.items():  # warm-up: compiles, and scores
        probabilities = np.concatenate([run(ids)[:, 0] for ids in batches])
        accuracy[name] = float(((probabilities > 0.5) == labels).mean())
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            for ids in batches:
                run(ids)
            seconds[name].append(time.perf_counter() - start)

    reference = np.median(seconds["keras float32"])
    print(
        "| model | reviews/s | time / keras float32 | test accuracy "
        "| weights (ONNX: file) |\n|---|---:|---:|---:|---:|"
    )
    for name in variants:
        median = np.median(seconds[name])
        print(
            f"| {name} | {len(labels) / median:,.0f} | "
            f"{median / reference:.2f} | {accuracy[name]:.4f} | "
            f"{sizes[name]:.2f} MiB |"
        )


if __name__ == "__main__":
    main()
