"""Train an IMDB sentiment classifier from keras-selfattn layers.

    python recipes/sentiment.py                    # full run (~5 min, CPU)
    python recipes/sentiment.py --smoke            # whole path, tiny slice
    python recipes/sentiment.py --init all-MiniLM-L6-v2  # fine-tune MiniLM
    python recipes/sentiment.py --data my.csv --text-column review \\
        --label-column stars                       # your own CSV
    python recipes/sentiment.py predict --model-dir runs/sentiment \\
        "A warm, funny film." "Two hours I will never get back."
    echo "Loved it" | python recipes/sentiment.py predict --explain
    python recipes/sentiment.py export --model-dir runs/sentiment \\
        --format onnx                              # runs/sentiment/model.onnx
    python recipes/sentiment.py predict \\
        --artifact runs/sentiment/model.onnx "Loved it"  # onnxruntime only
    KERAS_BACKEND=jax python recipes/sentiment.py --distribute data
    KERAS_BACKEND=jax python recipes/sentiment.py --distribute model \\
        --mesh 2,2                                 # 4 devices: batch x model

Data: the 50,000 IMDB reviews (Maas et al. 2011), split 25,000 test /
22,500 train / 2,500 validation, stratified, seed 1337; a WordPiece
tokenizer trained on the training split; long reviews keep head and tail.
Model (README, Sentiment): a Transformer encoder's score plus an NBSVM
score of hashed token n-grams (`recipes/ngrams.py`; `--no-ngram-branch`,
`--no-encoder`), a logistic output; batches padded to length buckets.
`--mlm-epochs N` first pretrains the encoder as a masked language model
on the training reviews (`recipes/pretraining.py`).
The run also prints a TF-IDF + logistic regression baseline on the same
split (`--no-baseline`). `--precision auto|float32|bfloat16`:
`recipes/precision.py`.

`--init all-MiniLM-L6-v2` (or a BERT checkpoint directory) fine-tunes a
pretrained encoder with its own tokenizer instead, on a subset by
default (`INIT_DEFAULTS`).

`--distribute data|model` trains on several devices through
`keras.distribution` (JAX; see `keras_selfattn.distribution`); batches
then split evenly over the mesh's batch axis, and the saved model loads on
one device. Everything lands in `--output-dir`: model.keras, tokenizer.json,
metrics.json, learning_curves.png and train.log.
"""

if not __package__:  # run as a file: `python recipes/sentiment.py`
    import _launch

    _launch.run_as_module(__file__)

if __name__ == "__main__":  # `predict --artifact` imports no Keras
    import recipes

    recipes.use_default_backend("sentiment")
    from recipes import deploy, reviews

    deploy.serve_if_requested("runs/sentiment", reviews.label_reviews)

import argparse
from pathlib import Path

import keras
import numpy as np

import keras_selfattn as ksa
from keras_selfattn import text
from keras_selfattn.downloads import resolve_cache_dir
from recipes import (
    baseline,
    batching,
    cli,
    explaining,
    ngrams,
    predict_command,
    pretraining,
    reviews,
    training,
)

# Settings whose default depends on the mode (see `cli.ModeDefaults`).
DEFAULTS = {
    "epochs": 2,
    "batch_size": 32,
    "max_length": 512,
    "vocab_size": 20000,
    "learning_rate": 1e-3,
}
SMOKE_DEFAULTS = {
    "epochs": 1,
    "batch_size": 32,
    "max_length": 128,
    "vocab_size": 2000,
}
# `--init`: a pretrained encoder costs far more per token than the default
# model on a CPU (README, Sentiment), so by default it fine-tunes one epoch
# on 4,000 reviews cut to 128 tokens and is scored on 5,000 test reviews.
INIT_DEFAULTS = {
    "epochs": 1,
    "batch_size": 16,
    "max_length": 128,
    "learning_rate": 1e-4,
    "train_size": 4000,
    "test_size": 5000,
}
MODES = cli.ModeDefaults(DEFAULTS, SMOKE_DEFAULTS, INIT_DEFAULTS)
# The n-gram weights' step, as a multiple of the encoder's: measured on
# the default run (JAX, seed 1337), 1x 0.904, 3x 0.919, 10x 0.908 test
# accuracy.
NGRAM_LEARNING_RATE_SCALE = 3.0
MODEL_SIZE = {
    "embedding_dim": 64,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_dim": 128,
}


def parse_args(argv=None):
    parser, pred = cli.recipe_parser(
        __doc__,
        "runs/sentiment",
        "label texts with a trained model",
        MODES,
        MODEL_SIZE,
    )
    pred.add_argument(
        "--explain",
        action="store_true",
        help="also write a PNG heat map of attention per text",
    )
    parser.add_argument("--data", help="your own CSV instead of IMDB")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    note = MODES.note
    parser.add_argument(
        "--train-size",
        type=int,
        help="train on this many reviews of the training split (default "
        f"all) {note('train_size')}",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        help=f"score this many test reviews (default all) {note('test_size')}",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fit and score the TF-IDF + logistic regression "
        "baseline on the same split (recipes/baseline.py). Default on",
    )
    args = cli.parse_args(parser, argv, MODES)
    if not args.encoder and not (args.ngram_branch and args.init is None):
        parser.error(
            "--no-encoder leaves the n-gram branch alone: it needs "
            "--ngram-branch and no --init"
        )
    from_scratch = args.encoder and args.init is None
    if args.mlm_epochs < 0 or (args.mlm_epochs and not from_scratch):
        parser.error(
            "--mlm-epochs must be 0 or more; it pretrains the encoder trained "
            "from scratch (no --no-encoder, no --init). Received: --mlm-epochs"
            f" {args.mlm_epochs}, --init {args.init}, --encoder {args.encoder}"
        )
    return args


def add_model_arguments(parser):
    """The options that shape and regularise the model: dropout, the
    attention path, short crops, the n-gram branch and the encoder."""
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout on the residual branches and the pooled output "
        "(default 0.1)",
    )
    parser.add_argument(
        "--attention-dropout",
        type=float,
        default=0.0,
        help="dropout on attention probabilities (default 0: lets the "
        "fused/blockwise kernels run in training)",
    )
    parser.add_argument(
        "--attention",
        default="auto",
        choices=ksa.ops.IMPLEMENTATIONS,
        help="attention implementation (default auto)",
    )
    parser.add_argument(
        "--short-crops",
        type=float,
        default=0.1,
        help="fraction of training reviews replaced by short random windows",
    )
    parser.add_argument(
        "--ngram-branch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add a linear score of the hashed token unigrams and bigrams, "
        "NBSVM-weighted, to the encoder's (wide and deep; "
        "recipes/ngrams.py). Default on",
    )
    parser.add_argument(
        "--encoder",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the Transformer encoder's score (`--no-encoder`: the n-gram "
        "branch alone, for comparison). Default on",
    )
    parser.add_argument(
        "--mlm-epochs",
        type=int,
        default=0,
        help="first pretrain the encoder as a masked language model on the "
        "training reviews for this many epochs (recipes/pretraining.py; "
        "from scratch only). Default 0",
    )


# ---------------------------------------------------------------- data


# ---------------------------------------------------------------- model


def build_model(args, vocab_size, encoder=None):
    """The encoder's score (`--encoder`) plus the n-gram bag's linear
    score (`--ngram-branch`) -> logistic output. The encoder is `encoder`
    (pretrained, `--init`) or blocks trained from scratch, then masked
    mean pooling and a score."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    scores = []
    if args.encoder:
        scores.append(encoder_score(token_ids, vocab_size, args, encoder))
    if args.ngram_branch:
        wide = ngrams.NgramScore(
            vocab_size,
            learning_rate_scale=NGRAM_LEARNING_RATE_SCALE,
            dtype="float32",
            name="ngram_score",
        )
        scores.append(wide(token_ids))
    score = scores[0]
    if len(scores) > 1:
        score = keras.layers.Add(name="score")(scores)
    probability = keras.layers.Activation("sigmoid", name="positive")(score)
    return keras.Model(token_ids, probability, name="sentiment")


def encoder_score(token_ids, vocab_size, args, encoder=None):
    """`encoder` (or a scratch one) -> masked mean pooling -> a score."""
    if encoder is None:
        x = scratch_encoder(token_ids, vocab_size, args)
        x = keras.layers.GlobalAveragePooling1D(name="mean_pool")(x)
    else:
        x, padding_mask = training.encode_with(encoder, token_ids)
        x = keras.layers.GlobalAveragePooling1D(name="mean_pool")(
            x, mask=padding_mask
        )
    x = keras.layers.Dropout(args.dropout, name="pool_dropout")(x)
    return keras.layers.Dense(1, name="encoder_score")(x)


def encoder_states(model, args):
    """The part of `model` from token ids to its scratch encoder's states
    (the last block's output): the same layers, so the same weights."""
    last = model.get_layer(f"encoder_{args.num_layers - 1}")
    return keras.Model(model.input, last.output, name="encoder")


def scratch_encoder(token_ids, vocab_size, args):
    """Embeddings and encoder blocks trained from scratch; the output
    carries the padding mask (`mask_zero`)."""
    x = ksa.TokenAndPositionEmbedding(
        vocab_size,
        args.max_length,
        args.embedding_dim,
        mask_zero=True,
        name="embedding",
    )(token_ids)
    x = keras.layers.Dropout(args.dropout, name="embedding_dropout")(x)
    return training.encoder_blocks(
        x,
        args,
        attention_dropout=args.attention_dropout,
        implementation=args.attention,
    )


# ---------------------------------------------------------------- train


def train(args):
    run = training.Run(args)

    with run.phase("data"):
        splits, split_info, label_names = reviews.load_splits(args)
        print(f"split: {split_info}")

    with run.phase("tokenize"):
        encoder, tokenizer = run.tokenizer(splits["train"][0])
        encoded = encode_splits(tokenizer, splits, args)

    batches = review_batches(run, encoded, tokenizer, args)
    model = build_model(args, tokenizer.get_vocab_size(), encoder)
    if args.ngram_branch:
        model.get_layer("ngram_score").adapt(*encoded["train"])
    if args.mlm_epochs:
        with run.phase("pretrain"):
            pretraining.pretrain(
                run,
                encoder_states(model, args),
                encoded["train"][0],
                tokenizer.get_vocab_size(),
                batching.bucket_lengths(args.max_length),
                args.mlm_epochs,
            )
    fit(run, model, batches)

    with run.phase("evaluate"):
        test_rows = len(encoded["test"][1])
        scores = evaluate(model, batches["test"], test_rows, tokenizer, args)
    if args.baseline:
        with run.phase("baseline"):
            scores["baseline"] = baseline.fit_beside(splits, scores)

    run.save(model, encoded["test"][0][:64])
    metrics = run.finish(
        {**scores, "split": split_info, "label_names": list(label_names)}
    )
    print(f"wrote {run.out}/: model.keras tokenizer.json metrics.json ...")
    return metrics


def encode_splits(tokenizer, splits, args):
    """`{split: (ids, labels)}`, the ids cached on disk (but for
    `--smoke`); prints the training reviews' lengths."""
    cache = None if args.smoke else resolve_cache_dir() / "encoded"
    encoded = {
        name: (
            reviews.encode_reviews(tokenizer, texts, args.max_length, cache),
            labels,
        )
        for name, (texts, labels) in splits.items()
    }
    lengths = (encoded["train"][0] != 0).sum(1)
    print(
        f"vocabulary {tokenizer.get_vocab_size()}; train tokens per "
        f"review: median {int(np.median(lengths))}, "
        f"{(lengths >= args.max_length).mean():.0%} truncated to "
        f"{args.max_length}"
    )
    return encoded


def review_batches(run, encoded, tokenizer, args):
    """`{split: batches}` in length buckets; `--short-crops` of the
    training reviews."""
    buckets = batching.bucket_lengths(args.max_length)
    augment = None
    if args.short_crops > 0:
        augment = reviews.short_crops(
            args.short_crops,
            tokenizer.token_to_id(text.CLS_TOKEN),
            tokenizer.token_to_id(text.SEP_TOKEN),
        )
    return {
        name: run.batches(
            name, ids, labels.astype("float32"), buckets, transform=augment
        )
        for name, (ids, labels) in encoded.items()
    }


def fit(run, model, batches):
    """Binary cross-entropy, AdamW; keeps the epoch of the best validation
    accuracy."""
    run.compile(
        model,
        steps=len(batches["train"]) * run.args.epochs,
        weight_decay=0.01,
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    run.fit(
        model,
        batches["train"],
        monitor="val_accuracy",
        patience=1,
        curves=["loss", "accuracy"],
        validation_data=batches["validation"],
    )


def evaluate(model, test_batches, test_rows, tokenizer, args):
    """Test accuracy and loss (of the `test_rows` reviews the batches
    hold), and the accuracy on `reviews.SHORT_REVIEWS`; printed."""
    test_loss, test_accuracy = model.evaluate(test_batches, verbose=0)
    short_accuracy = short_review_accuracy(model, tokenizer, args)
    test_reviews = test_rows - test_batches.left_out
    print(
        f"test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f} "
        f"({test_reviews} reviews); short one-sentence "
        f"reviews: {short_accuracy:.0%} of {len(reviews.SHORT_REVIEWS)}"
    )
    return {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "short_review_accuracy": float(short_accuracy),
    }


def short_review_accuracy(model, tokenizer, args):
    texts, labels = reviews.short_reviews()
    probabilities = predict_probabilities(model, tokenizer, texts, args)
    return float(((probabilities > 0.5) == labels).mean())


def predict_probabilities(model, tokenizer, texts, args):
    ids = reviews.encode_reviews(tokenizer, texts, args.max_length)
    width = max(int((ids != 0).sum(1).max()), 1)
    return batching.predict_rows(model, ids[:, :width])[:, 0]


# ---------------------------------------------------------------- predict


def predict(args):
    model_dir = Path(args.model_dir)
    model, tokenizer, saved, settings = training.load_run(model_dir)
    label_names = saved["label_names"]
    texts = predict_command.input_texts(args.texts)
    probabilities = predict_probabilities(model, tokenizer, texts, settings)
    for i, (review, p) in enumerate(zip(texts, probabilities)):
        print(reviews.review_line(label_names, p, review))
        if args.explain:
            path = model_dir / f"explain_{i}.png"
            ids = reviews.encode_reviews(
                tokenizer, [review], settings.max_length
            )
            explaining.attention_heat_map(model, tokenizer, ids, path)
            print(f"\tattention heat map: {path}")


def main(argv=None):
    cli.run(parse_args(argv), train, predict, training.export_run)


if __name__ == "__main__":
    main()
