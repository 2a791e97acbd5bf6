"""Pieces the recipes share: backend choice, logging, bucketed batches,
atomic writes, learning-curve plots, the command line's two modes.

Import this module before `keras` (it may set `KERAS_BACKEND`).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Measured fastest for the recipes on a 2-core CPU (README, "Benchmarks").
DEFAULT_BACKEND = "jax"


def choose_backend():
    """Use `$KERAS_BACKEND` if set, else the fastest measured one.

    Returns a sentence saying which backend runs and why.
    """
    if os.environ.get("KERAS_BACKEND"):
        return f"backend: {os.environ['KERAS_BACKEND']} (from KERAS_BACKEND)"
    os.environ["KERAS_BACKEND"] = DEFAULT_BACKEND
    return (
        f"backend: {DEFAULT_BACKEND} (KERAS_BACKEND unset; the fastest "
        "measured on CPU for this recipe)"
    )


class Tee:
    """Copy everything written to stdout into a log file as well."""

    def __init__(self, path):
        self._file = open(path, "a", encoding="utf-8")
        self._stdout = sys.stdout

    def write(self, text):
        self._stdout.write(text)
        self._file.write(text)

    def flush(self):
        self._stdout.flush()
        self._file.flush()

    def isatty(self):
        return self._stdout.isatty()

    def __enter__(self):
        sys.stdout = self
        return self

    def __exit__(self, *exc):
        sys.stdout = self._stdout
        self._file.close()


class Timer:
    """Wall time per named phase, in order: `with timer("tokenize"): ...`."""

    def __init__(self):
        self.seconds = {}

    def __call__(self, name):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()
                print(f"\n== {name}", flush=True)

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.start
                timer.seconds[name] = round(elapsed, 1)
                print(f"== {name}: {elapsed:.1f} s", flush=True)

        return _Phase()


def _atomic(path, write):
    """Run `write(tmp_path)` then move it over `path`; on any failure the
    temporary file goes and an existing `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix
    )
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_model_atomic(model, path):
    """`model.save(path)` that never leaves a half-written or clobbered file."""
    _atomic(path, model.save)


def check_reload(model, path, inputs, tolerance=1e-5):
    """Load the saved `.keras` file (no custom_objects) and check that it
    predicts what `model` does on `inputs`; prints the difference."""
    import keras
    import numpy as np

    loaded = keras.saving.load_model(path)
    diff = np.abs(
        model.predict(inputs, verbose=0) - loaded.predict(inputs, verbose=0)
    ).max()
    print(f"reloaded {path}: max |difference| {diff:.1e}")
    if diff > tolerance:
        raise RuntimeError(f"Reloaded model predicts differently: {diff}")


def write_json_atomic(data, path):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic(path, write)


def warmup_cosine(learning_rate, steps):
    """Learning rate rising linearly over the first 10% of `steps` to
    `learning_rate`, then decaying to 0 along a cosine."""
    import keras

    warmup = steps // 10
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(steps - warmup, 1),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def bucket_lengths(max_length, smallest=32):
    """Powers of two from `smallest` up to, and ending at, `max_length`."""
    buckets = []
    size = smallest
    while size < max_length:
        buckets.append(size)
        size *= 2
    return tuple(buckets) + (max_length,)


def _take(array, rows, width):
    """Rows of `array`, cut to `width` along the length axis (axis 1) when
    it has one."""
    return array[rows, :width] if array.ndim >= 2 else array[rows]


def _take_all(arrays, rows, width):
    if isinstance(arrays, dict):
        return {name: _take(a, rows, width) for name, a in arrays.items()}
    return _take(arrays, rows, width)


def make_batches(
    inputs, targets, batch_size, buckets, shuffle, seed=0, transform=None
):
    """A `keras.utils.PyDataset` of `(inputs, targets)` batches, each padded
    only to the smallest bucket that holds its longest row.

    `inputs` is an int array of token ids `(n, L)` (0 = padding), or a dict
    of arrays with the ids under `"token_ids"`; every array with a second
    axis (inputs and targets) is cut along it to the batch's bucket. Rows
    are grouped by bucket, so XLA compiles one program per bucket (and
    batch size) instead of one per batch, and short texts cost little.
    `transform(batch_inputs, rng)`, if given, rewrites each batch's inputs
    (data augmentation); it must keep their shapes.
    """
    import keras
    import numpy as np

    ids = inputs["token_ids"] if isinstance(inputs, dict) else inputs
    lengths = (ids != 0).sum(axis=1)
    bucket_of = np.searchsorted(np.asarray(buckets), lengths)

    class BucketedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.batches = self._plan()

        def _plan(self):
            batches = []
            for bucket in range(len(buckets)):
                rows = np.flatnonzero(bucket_of == bucket)
                if shuffle:
                    rows = self.rng.permutation(rows)
                for start in range(0, len(rows), batch_size):
                    batches.append((bucket, rows[start : start + batch_size]))
            if shuffle:
                order = self.rng.permutation(len(batches))
                batches = [batches[i] for i in order]
            return _two_widths_first(batches)

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, index):
            bucket, rows = self.batches[index]
            batch = _take_all(inputs, rows, buckets[bucket])
            if transform is not None:
                batch = transform(batch, self.rng)
            return batch, _take_all(targets, rows, buckets[bucket])

        def on_epoch_end(self):
            if shuffle:
                self.batches = self._plan()

    return BucketedBatches()


def _two_widths_first(batches):
    """Move a batch of another bucket to position 1, if there is one.

    Keras' TensorFlow adapter fixes the input signature from the first two
    batches; two different widths there make the length axis dynamic.
    """
    for i, (bucket, _) in enumerate(batches[1:], start=1):
        if bucket != batches[0][0]:
            batches[1], batches[i] = batches[i], batches[1]
            break
    return batches


def plot_learning_curves(history, path, metrics):
    """PNG with one panel per metric: train and validation per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5))
    axes = [axes] if len(metrics) == 1 else axes
    for axis, metric in zip(axes, metrics):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                epochs = range(1, len(values) + 1)
                axis.plot(epochs, values, marker="o", label=label)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def recipe_parser(description, run_dir, predict_help):
    """The recipes' shared command line: training options `--output-dir`,
    `--seed`, `--smoke`, and a `predict` subcommand with `texts` and
    `--model-dir`. Returns `(parser, predict_parser)` to add to."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    pred = sub.add_parser("predict", help=predict_help)
    pred.add_argument("texts", nargs="*", help="texts (default: stdin lines)")
    pred.add_argument("--model-dir", default=run_dir)
    parser.add_argument("--output-dir", default=run_dir)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="whole path on a tiny slice, in well under a minute",
    )
    return parser, pred


def parse_recipe_args(parser, argv, defaults, smoke_defaults):
    """Parse; options left unset (None) take their value from `defaults`,
    or from `smoke_defaults` under `--smoke`."""
    args = parser.parse_args(argv)
    for name, value in (smoke_defaults if args.smoke else defaults).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def run_recipe(args, train, predict):
    """The `predict` subcommand, or a training run whose output is also
    written to `<output_dir>/train.log`."""
    if args.command == "predict":
        predict(args)
        return
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Tee(out / "train.log"):
        train(args)


def load_run(model_dir):
    """A trained run: `(model, tokenizer, metrics, settings)`, with the
    run's settings (from metrics.json) as an `argparse.Namespace`."""
    import keras

    from keras_selfattn import text

    model_dir = Path(model_dir)
    model = keras.saving.load_model(model_dir / "model.keras")
    tokenizer = text.load_tokenizer(model_dir / "tokenizer.json")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return model, tokenizer, metrics, argparse.Namespace(**metrics["settings"])


def input_texts(texts):
    """`texts` if any were given, else the non-empty lines of stdin."""
    texts = texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise SystemExit("No texts given (arguments or stdin lines).")
    return texts
