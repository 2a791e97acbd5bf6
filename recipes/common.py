"""Pieces the recipes share: backend choice, logging, bucketed batches,
atomic writes, learning-curve plots, the command line's two modes,
training on several devices (`--distribute`).

Import this module before `keras` (it may set `KERAS_BACKEND`).
"""

import argparse
import contextlib
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
    """Load the saved `.keras` file (no custom_objects) on one device, with
    no distribution, and check that it predicts what `model` does on
    `inputs`; prints the difference."""
    import keras
    import numpy as np

    expected = predict_rows(model, inputs)
    with one_device():
        loaded = keras.saving.load_model(path)
        diff = np.abs(expected - loaded.predict(inputs, verbose=0)).max()
    where = " on one device" if distributed() else ""
    print(f"reloaded {path}{where}: max |difference| {diff:.1e}")
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
    inputs,
    targets,
    batch_size,
    buckets,
    shuffle,
    seed=0,
    transform=None,
    multiple_of=1,
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

    `multiple_of` > 1 makes every batch size a multiple of it (a batch
    split over that many devices): the rows a bucket cannot fill a
    multiple with move up to the next, wider bucket, and the last fewer
    than `multiple_of` rows are left out (other rows each epoch when
    shuffled); `.left_out` counts them.
    """
    import keras
    import numpy as np

    if batch_size % multiple_of:
        raise ValueError(
            f"`batch_size` must be a multiple of {multiple_of} (the batch is "
            f"split over that many devices). Received: batch_size={batch_size}"
        )
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
            carried = np.zeros(0, int)  # shorter rows fit any wider bucket
            for bucket in range(len(buckets)):
                rows = np.flatnonzero(bucket_of == bucket)
                if shuffle:
                    rows = self.rng.permutation(rows)
                rows = np.concatenate([carried, rows])
                kept = len(rows) - len(rows) % multiple_of
                rows, carried = rows[:kept], rows[kept:]
                for start in range(0, len(rows), batch_size):
                    batches.append((bucket, rows[start : start + batch_size]))
            if shuffle:
                order = self.rng.permutation(len(batches))
                batches = [batches[i] for i in order]
            self.left_out = len(carried)
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


def recipe_parser(description, run_dir, predict_help, default_init=None):
    """The recipes' shared command line: training options `--output-dir`,
    `--seed`, `--smoke`, `--init` (default `default_init`; `none` trains
    from scratch), `--distribute`, `--mesh`, and a `predict` subcommand
    with `texts` and `--model-dir`. Returns `(parser, predict_parser)` to
    add to."""
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
        help="whole path on a tiny slice, in a minute or two",
    )
    parser.add_argument(
        "--init",
        metavar="CHECKPOINT",
        default=default_init,
        help="fine-tune a pretrained BERT-family encoder: all-MiniLM-L6-v2 "
        "or a checkpoint directory (config.json, model.safetensors, "
        "tokenizer.json); its tokenizer replaces the trained one and the "
        "width/layer options do not apply. 'none' trains from scratch. "
        f"Default: {default_init or 'none'}",
    )
    parser.add_argument(
        "--distribute",
        choices=("data", "model"),
        help="train on several devices (JAX): data = every device holds the "
        "model and a slice of each batch; model = the attention heads, "
        "feed-forward and embeddings are split across devices too",
    )
    parser.add_argument(
        "--mesh",
        type=mesh_shape,
        metavar="BATCH[,MODEL]",
        help="device mesh for --distribute: batch x model sizes, e.g. 2,2 "
        "(default: all devices on the batch axis for data; for model, the "
        "largest model axis that the split sizes --num-heads, "
        "--intermediate-dim and --embedding-dim allow, the rest on batch)",
    )
    return parser, pred


def mesh_shape(text):
    """`"2,2"` -> `(2, 2)` (batch, model); `"4"` -> `(4,)`."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            "expected BATCH,MODEL sizes such as 2,2 or one batch size such "
            f"as 4. Received: {text!r}"
        )
    return shape


def default_notes(defaults, init_defaults, default_init=None):
    """`note(name)` -> the help text's default for an option whose value
    depends on `--init`: what a plain run takes, then the other mode's
    value where it differs, read from the same dicts that
    `parse_recipe_args` applies.

    >>> note = default_notes({"epochs": 12, "dropout": 0.1}, {"epochs": 2})
    >>> note("epochs"), note("dropout")
    ('default 12 (--init: 2)', 'default 0.1')
    """
    fine_tuning = {**defaults, **init_defaults}
    if default_init:
        plain, other, flag = fine_tuning, defaults, "--init none"
    else:
        plain, other, flag = defaults, fine_tuning, "--init"

    def note(name):
        parts = [f"default {plain[name]}"] if name in plain else []
        if name in other and other[name] != plain.get(name):
            parts.append(f"({flag}: {other[name]})")
        return " ".join(parts)

    return note


def parse_recipe_args(
    parser, argv, defaults, smoke_defaults, init_defaults=None
):
    """Parse; options left unset (None) take their value from
    `smoke_defaults` under `--smoke`, then `init_defaults` under `--init`,
    then `defaults`."""
    args = parser.parse_args(argv)
    init = getattr(args, "init", None)
    if init and init.lower() == "none":
        args.init = init = None
    layers = [smoke_defaults] if args.smoke else []
    if init and init_defaults:
        layers.append(init_defaults)
    for values in layers + [defaults]:
        for name, value in values.items():
            if getattr(args, name, None) is None:
                setattr(args, name, value)
    if args.command != "predict":
        check_distribute_args(parser, args)
    return args


def load_pretrained(args):
    """`(encoder, tokenizer)` of `--init`, with the run's `--dropout` on the
    residual branches; attention dropout stays the checkpoint's."""
    from keras_selfattn import pretrained

    encoder, tokenizer = pretrained.load_bert(args.init, dropout=args.dropout)
    positions = encoder.get_layer("embeddings").sequence_length
    print(
        f"pretrained encoder {args.init}: "
        f"{encoder.count_params():,} weights, position table "
        f"{positions}, vocabulary {tokenizer.get_vocab_size()}"
    )
    if args.max_length > positions:
        raise SystemExit(
            f"--max-length {args.max_length} exceeds the encoder's "
            f"{positions} positions"
        )
    return encoder, tokenizer


def encode_with(encoder, token_ids):
    """`(hidden_states, padding_mask)` of the pretrained encoder for
    `token_ids` (0 = pad)."""
    import keras

    padding_mask = keras.ops.not_equal(token_ids, 0)
    hidden = encoder({"token_ids": token_ids, "padding_mask": padding_mask})
    return hidden, padding_mask


def check_distribute_args(parser, args):
    """Exit with a usage error if `--distribute`/`--mesh` cannot apply."""
    import keras

    if args.mesh and not args.distribute:
        parser.error("--mesh needs --distribute data or --distribute model")
    backend = keras.backend.backend()
    if args.distribute and backend != "jax":
        parser.error(
            "--distribute uses keras.distribution, which runs on the JAX "
            f"backend only. Received: KERAS_BACKEND={backend}; run with "
            "KERAS_BACKEND=jax"
        )


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


# The options whose sizes `--distribute model` splits across devices.
SPLIT_SIZES = ("num_heads", "intermediate_dim", "embedding_dim")


def model_mesh(devices, sizes):
    """`(batch, model)` for `devices` devices: the largest model axis that
    divides every size in `sizes`, the rest on the batch axis.

    >>> model_mesh(4, [2, 128, 64]), model_mesh(8, [4, 256, 128])
    ((2, 2), (2, 4))
    """
    model = max(
        d
        for d in range(1, devices + 1)
        if devices % d == 0 and all(size % d == 0 for size in sizes)
    )
    return devices // model, model


def start_distribution(args):
    """Set the distribution `--distribute`/`--mesh` ask for, before any
    model is built, and print its device mesh. Returns it (None without
    `--distribute`). Exits with a clear message if the sizes do not fit.

    With `--distribute model` and no `--mesh`, the model axis is the
    largest that divides every split size (`SPLIT_SIZES`)."""
    if not args.distribute:
        return None
    import keras

    from keras_selfattn import distribution

    sizes = {
        name: getattr(args, name)
        for name in SPLIT_SIZES
        if getattr(args, name, None) is not None
    }
    shape = args.mesh
    if args.distribute == "model" and shape is None:
        count = len(keras.distribution.list_devices())
        shape = model_mesh(count, sizes.values())
        given = ", ".join(
            f"--{name.replace('_', '-')} {size}" for name, size in sizes.items()
        )
        print(
            f"--mesh {shape[0]},{shape[1]}: {count} devices, the "
            f"largest model axis that divides {given}"
        )
    try:
        strategy = distribution.make_distribution(args.distribute, shape)
    except (ValueError, RuntimeError) as error:
        raise SystemExit(f"--distribute {args.distribute}: {error}")
    shards = distribution.batch_shards(strategy)
    if args.batch_size % shards:
        raise SystemExit(
            f"--batch-size must be a multiple of the mesh's batch size "
            f"{shards}. Received: --batch-size={args.batch_size}"
        )
    mesh = strategy.device_mesh
    model = dict(zip(mesh.axis_names, mesh.shape)).get("model", 1)
    for name, size in sizes.items():
        if size % model:
            option = "--" + name.replace("_", "-")
            raise SystemExit(
                f"{option} must be a multiple of the mesh's model size "
                f"{model} (it is split across that many devices). "
                f"Received: {option}={size}"
            )
    keras.distribution.set_distribution(strategy)
    print(distribution.describe_mesh(strategy))
    return strategy


def print_sharding(model):
    """Print how the current distribution places each weight of `model`."""
    if distributed():
        from keras_selfattn import distribution

        print(distribution.describe_sharding(model))


def distributed():
    """True while a `keras.distribution` distribution is set."""
    import keras

    return keras.distribution.distribution() is not None


@contextlib.contextmanager
def one_device():
    """Run the block with no distribution set (new weights on one device)."""
    import keras

    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def pad_rows(inputs, multiple):
    """`inputs` (an array or a dict of arrays, rows first) padded to a
    multiple of `multiple` rows by repeating the last row."""
    import numpy as np

    def pad(array):
        extra = -len(array) % multiple
        if not extra:
            return array
        return np.concatenate([array, np.repeat(array[-1:], extra, axis=0)])

    if isinstance(inputs, dict):
        return {name: pad(array) for name, array in inputs.items()}
    return pad(inputs)


def predict_rows(model, inputs, batch_size=32):
    """`model.predict(inputs)` in batches that split evenly over the
    current distribution's batch axis (padded rows are dropped again)."""
    from keras_selfattn import distribution

    shards = distribution.batch_shards()
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    rows = len(first)
    batch_size = -(-batch_size // shards) * shards
    padded = pad_rows(inputs, shards)
    return model.predict(padded, batch_size=batch_size, verbose=0)[:rows]


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
