"""The training run both recipes share, the model pieces both build
from, and loading a finished run.

A recipe's `train` reads top to bottom with what is its own; `Run` does
the rest, in this order:

    run = training.Run(args)          # output dir, seed, settings, devices
    with run.phase("data"): ...       # the recipe's data
    with run.phase("tokenize"):
        encoder, tokenizer = run.tokenizer(train_texts)   # --init or trained
    train = run.batches("train", inputs, targets, buckets)  # and the others
    run.compile(model, steps, weight_decay, loss=...)     # AdamW, schedule
    history = run.fit(model, train, "val_accuracy", patience, curves)
    with run.phase("evaluate"): ...   # the recipe's scores
    run.save(model, sample)           # model.keras, reloaded and checked
    metrics = run.finish({...})       # metrics.json

Everything lands in `--output-dir`: tokenizer.json, history.csv,
learning_curves.png, model.keras and metrics.json (settings, times,
backend and the recipe's scores).
"""

import argparse
import json
import sys
from pathlib import Path

import keras
import numpy as np

import keras_selfattn as ksa
from keras_selfattn import distribution, lora, pretrained, text
from keras_selfattn.downloads import atomic_write
import recipes
from recipes import (
    batching,
    distributed,
    exporting,
    optimizers,
    precision,
    reporting,
)


# Rows a batch of torch's ONNX artifacts, whose shape is fixed.
EXPORT_BATCH = 32


class Run:
    """One training run of `args` into `args.output_dir`.

    Creating it makes the directory, seeds every random generator with
    `--seed`, prints the backend and the settings and sets the
    `--distribute` distribution (before any model is built).
    """

    def __init__(self, args):
        self.args = args
        self.out = Path(args.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        keras.utils.set_random_seed(args.seed)
        self.timer = reporting.Timer()
        self.history = None
        print(recipes.BACKEND_NOTE)
        print(f"settings: {vars(args)}")
        used, reason = precision.resolve(args.precision)
        precision.apply(used)
        print(f"precision: {used} ({reason})")
        self.precision = {"used": used, "reason": reason}
        distributed.start(args)

    def phase(self, name):
        """`with run.phase(name):` times the block (see `Timer`)."""
        return self.timer(name)

    def tokenizer(self, texts):
        """`(encoder, tokenizer)`: with `--init`, the pretrained encoder and
        its tokenizer; else no encoder and a WordPiece tokenizer of
        `args.vocab_size` trained on `texts`. Saves tokenizer.json."""
        if self.args.init:
            encoder, tokenizer = load_pretrained(self.args)
        else:
            encoder = None
            tokenizer = text.train_tokenizer(
                texts, vocab_size=self.args.vocab_size
            )
        text.save_tokenizer(tokenizer, self.out / "tokenizer.json")
        return encoder, tokenizer

    @property
    def eval_batch_size(self):
        """Evaluation has no gradients to hold: larger batches are cheaper."""
        return 4 * self.args.batch_size

    def batches(self, name, inputs, targets, buckets, transform=None):
        """`batching.make_batches` of one split: `"train"` is shuffled
        (seeded by `--seed`) and rewritten by `transform`; the others come
        in order, `eval_batch_size` rows a batch. Batches split evenly
        over the devices; rows that cannot are counted in the log."""
        train = name == "train"
        batches = batching.make_batches(
            inputs,
            targets,
            self.args.batch_size if train else self.eval_batch_size,
            buckets,
            shuffle=train,
            seed=self.args.seed,
            transform=transform if train else None,
            multiple_of=distribution.batch_shards(),
        )
        if batches.left_out:
            print(
                f"{batches.left_out} {name} rows left out (each epoch) so "
                "batches split evenly over the devices"
            )
        return batches

    def compile(
        self, model, steps, weight_decay, learning_rate_scales=None, **options
    ):
        """`model.compile` with AdamW, learning rate `--learning-rate` with
        warm-up and cosine decay over `steps` (times a factor for the
        weights in `learning_rate_scales`, see `optimizers.ScaledAdamW`),
        XLA except on torch (eager), and `options` (loss, metrics); prints
        the summary, how many weights train and, under `--distribute`,
        where each weight sits."""
        schedule = warmup_cosine(self.args.learning_rate, steps)
        if learning_rate_scales:  # model.keras then names our class
            optimizer = optimizers.ScaledAdamW(
                schedule,
                weight_decay=weight_decay,
                learning_rate_scales=learning_rate_scales,
            )
        else:
            optimizer = keras.optimizers.AdamW(
                schedule, weight_decay=weight_decay
            )
        model.compile(
            optimizer=optimizer,
            jit_compile=keras.backend.backend() != "torch",
            **options,
        )
        model.summary(print_fn=lambda line, **_: print(line))
        trainable = count_weights(model.trainable_weights)
        total = model.count_params()
        print(
            f"trainable weights: {trainable:,} of {total:,} "
            f"({trainable / total:.2%})"
        )
        distributed.print_sharding(model)

    def fit(
        self,
        model,
        batches,
        monitor,
        patience,
        curves,
        callbacks=(),
        validation_data=None,
    ):
        """Train `--epochs` epochs (phase "train"), keeping the weights of
        the epoch with the highest `monitor`, stopping after `patience`
        epochs without a gain. `callbacks` run first (one may add
        `monitor` to the logs); history.csv, learning_curves.png (panels
        `curves`) and, with `--tensorboard`, TensorBoard logs are written.
        Returns the history dict."""
        callbacks = [
            *callbacks,
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                mode="max",
                patience=patience,
                restore_best_weights=True,
            ),
            keras.callbacks.CSVLogger(str(self.out / "history.csv")),
        ]
        if self.args.tensorboard:
            tensorboard = str(self.out / "tensorboard")
            callbacks.append(keras.callbacks.TensorBoard(tensorboard))
        with self.timer("train"):
            self.history = model.fit(
                batches,
                validation_data=validation_data,
                epochs=self.args.epochs,
                callbacks=callbacks,
                verbose=1 if sys.stdout.isatty() else 2,
            ).history
        reporting.plot_learning_curves(
            self.history, self.out / "learning_curves.png", curves
        )
        return self.history

    def save(self, model, sample, json_files=None):
        """Phase "save and reload": model.keras (and `json_files`, file name
        -> data) written atomically, then loaded back and checked to
        predict what `model` does on `sample`."""
        with self.timer("save and reload"):
            path = self.out / "model.keras"
            atomic_write(path, model.save)
            for name, data in (json_files or {}).items():
                reporting.write_json(data, self.out / name)
            check_reload(model, path, sample)

    def finish(self, metrics):
        """`metrics` plus the run's times, epochs, backend and settings,
        written to metrics.json; returns them."""
        metrics = {
            **metrics,
            "train_seconds": self.timer.seconds["train"],
            "phase_seconds": self.timer.seconds,
            "epochs_run": len(self.history["loss"]),
            "backend": keras.backend.backend(),
            "precision": self.precision,
            "settings": vars(self.args),
        }
        reporting.write_json(metrics, self.out / "metrics.json")
        return metrics


def warmup_cosine(learning_rate, steps):
    """Learning rate rising linearly over the first 10% of `steps` to
    `learning_rate`, then decaying to 0 along a cosine."""
    warmup = steps // 10
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(steps - warmup, 1),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def load_pretrained(args):
    """`(encoder, tokenizer)` of `--init`, with the run's `--dropout` on the
    residual branches; attention dropout stays the checkpoint's. With
    `--lora RANK` the encoder is frozen but for LoRA adapters of that rank
    on its query and value projections (`lora.enable_lora`)."""
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
    if args.lora:
        lora.enable_lora(encoder, args.lora)
        print(
            f"LoRA rank {args.lora} on {' and '.join(lora.LORA_TARGETS)}"
            f": {count_weights(encoder.trainable_weights):,} of the "
            f"encoder's {encoder.count_params():,} weights train"
        )
    return encoder, tokenizer


def count_weights(variables):
    """The number of values in `variables`."""
    return sum(int(np.prod(v.shape)) for v in variables)


def encode_with(encoder, token_ids):
    """`(hidden_states, padding_mask)` of the pretrained encoder for
    `token_ids` (0 = pad)."""
    padding_mask = keras.ops.not_equal(token_ids, 0)
    hidden = encoder({"token_ids": token_ids, "padding_mask": padding_mask})
    return hidden, padding_mask


def encoder_blocks(x, args, padding_mask=None, **options):
    """`args.num_layers` post-LN `TransformerEncoder` blocks trained from
    scratch (`--num-heads`, `--intermediate-dim`, `--dropout`, GELU),
    named `encoder_0`, `encoder_1`, ...; `options` go to each block."""
    for i in range(args.num_layers):
        x = ksa.TransformerEncoder(
            args.intermediate_dim,
            args.num_heads,
            dropout=args.dropout,
            activation="gelu",
            name=f"encoder_{i}",
            **options,
        )(x, padding_mask=padding_mask)
    return x


def check_reload(model, path, inputs, tolerance=1e-5):
    """Load the saved `.keras` file (no custom_objects) on one device, with
    no distribution, and check that it predicts what `model` does on
    `inputs`; prints the difference."""
    expected = batching.predict_rows(model, inputs)
    with distributed.one_device():
        loaded = keras.saving.load_model(path)
        diff = np.abs(expected - loaded.predict(inputs, verbose=0)).max()
    where = " on one device" if distributed.active() else ""
    print(f"reloaded {path}{where}: max |difference| {diff:.1e}")
    if diff > tolerance:
        raise RuntimeError(f"Reloaded model predicts differently: {diff}")


def export_run(args, files=None):
    """The `export` command: the run in `--model-dir` written as a
    `--format` artifact beside its tokenizer.json (`recipes.exporting`),
    with dynamic batch and length where the backend's exporter allows
    (torch's ONNX takes `export_sample`'s shape). `files(model,
    settings)`, if given, returns more JSON files (name -> data) that
    serving reads, written beside the artifact."""
    model, _, _, settings = load_run(args.model_dir)
    if precision.compute_in_float32(model):
        print("exporting in float32 (the run computed in bfloat16)")
    sample = export_sample(model, settings.max_length)
    path = exporting.export_artifact(model, args.model_dir, args.format, sample)
    written = files(model, settings) if files else {}
    for name, data in written.items():
        reporting.write_json(data, Path(args.model_dir) / name)
    size = sum(
        f.stat().st_size for f in [path, *path.rglob("*")] if f.is_file()
    )
    beside = "".join(f" and {name}" for name in written)
    print(
        f"wrote {path} ({args.format}, {size / 2**20:.1f} MiB){beside}; "
        f"serve it with: predict --artifact {path}"
    )
    return path


def export_sample(model, max_length):
    """Ones shaped like the model's input (`model.input`: one input, or a
    dict of them by name), `EXPORT_BATCH` rows of `max_length` tokens."""
    return keras.tree.map_structure(
        lambda x: np.ones((EXPORT_BATCH, max_length, *x.shape[2:]), x.dtype),
        model.input,
    )


def load_run(model_dir):
    """A trained run: `(model, tokenizer, metrics, settings)`, with the
    run's settings (from metrics.json) as an `argparse.Namespace`."""
    model_dir = Path(model_dir)
    model = keras.saving.load_model(model_dir / "model.keras")
    tokenizer = text.load_tokenizer(model_dir / "tokenizer.json")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return model, tokenizer, metrics, argparse.Namespace(**metrics["settings"])
