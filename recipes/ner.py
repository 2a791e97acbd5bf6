"""Train a CoNLL-2003 named-entity tagger from keras-selfattn layers.

    python recipes/ner.py                          # full run (~17 min, CPU)
    python recipes/ner.py --init none              # from scratch (~12 min)
    python recipes/ner.py --smoke                  # whole path, tiny slice
    python recipes/ner.py --data my_conll/         # train/valid/test.txt
    python recipes/ner.py predict --model-dir runs/ner \\
        "Angela Merkel visited Paris."
    echo "EU rejects German call" | python recipes/ner.py predict
    KERAS_BACKEND=jax python recipes/ner.py --distribute model --mesh 2,2

Data: CoNLL-2003 English (14,041 / 3,250 / 3,453 sentences; PER, LOC,
ORG, MISC in IOB2). Only the words are used (no POS or chunk columns), so
the model tags raw text too. Words go through a lowercased WordPiece
tokenizer (`is_pretokenized=True`); the first sub-token of each word
carries its tag, the others are ignored.

Model (default): the pretrained MiniLM-L6 encoder (`--init
all-MiniLM-L6-v2`, built from our layers by `keras_selfattn.pretrained`,
with its own uncased tokenizer) fine-tuned with a character CNN over the
UTF-8 bytes of each token's word beside its output, so case and spelling
reach the per-token softmax; rows hold consecutive sentences of a
document. `--init DIR` takes another BERT checkpoint directory.

`--init none` trains from scratch instead: a WordPiece tokenizer trained
on the training split, token + position embeddings plus the character
CNN (`--features shape,chars` adds a word-shape class; it measured no
gain), projected to the model width, mixed with the neighbouring tokens
by a width-3 convolution and Transformer encoder blocks, to tag scores
for a linear-chain CRF (`recipes/crf.py`) trained on whole tag sequences
(`--output softmax`: per-token softmax instead); half of the tokens are
replaced by [UNK] in training (`--word-dropout`); one sentence a row.

Either way decoding keeps the best tag sequence that is valid IOB2
(Viterbi; `I-X` only after `B-X` or `I-X`).

Scores are CoNLL entity-level precision/recall/F1 (exact span and type),
micro-averaged, with per-type figures. `--distribute data|model` trains on
several devices through `keras.distribution` (JAX). Everything lands in
`--output-dir`: model.keras, tokenizer.json, labels.json, metrics.json,
learning_curves.png, history.csv and train.log.
"""

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: I001  (sets KERAS_BACKEND before keras is imported)

BACKEND_NOTE = common.choose_backend()

import keras
import numpy as np

import crf
import data
import keras_selfattn as ksa
import tagging
from keras_selfattn import text

# Training from scratch (`--init none`); `INIT_DEFAULTS` override these
# when fine-tuning, which is the default.
DEFAULTS = {
    "epochs": 12,
    "batch_size": 32,
    "max_length": 192,
    "vocab_size": 12000,
    "learning_rate": 1e-3,
    "dropout": 0.3,
    "word_dropout": 0.5,
    "weight_decay": 0.05,
    "context": "sentence",
    "output": "crf",
}
SMOKE_DEFAULTS = {
    "epochs": 1,
    "batch_size": 16,
    "max_length": 64,
    "vocab_size": 800,
}
# `--init` (the default): fine-tuning a pretrained encoder wants a small
# learning rate, its own dropout, few epochs and whole-document context;
# 8 rows of up to 192 tokens a batch give 231 steps an epoch (32 rows: 59,
# too few). A third epoch measured +0.008 test F1 for ~7 more minutes.
INIT_DEFAULTS = {
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 2e-4,
    "dropout": 0.1,
    "word_dropout": 0.0,
    "weight_decay": 0.01,
    "context": "document",
    "output": "softmax",
}
SMOKE_SENTENCES = (400, 100, 100)
DEFAULT_INIT = "all-MiniLM-L6-v2"


def parse_args(argv=None):
    parser, _ = common.recipe_parser(
        __doc__,
        "runs/ner",
        "tag raw texts with a model",
        default_init=DEFAULT_INIT,
    )
    parser.add_argument(
        "--data", help="directory with your own train/valid/test.txt"
    )
    # Defaults of these depend on --smoke and --init (see *DEFAULTS).
    note = common.default_notes(DEFAULTS, INIT_DEFAULTS, DEFAULT_INIT)
    parser.add_argument("--epochs", type=int, help=note("epochs"))
    parser.add_argument("--batch-size", type=int, help=note("batch_size"))
    parser.add_argument("--max-length", type=int, help=note("max_length"))
    parser.add_argument("--vocab-size", type=int, help=note("vocab_size"))
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--intermediate-dim", type=int, default=256)
    parser.add_argument("--dropout", type=float, help=note("dropout"))
    parser.add_argument(
        "--word-dropout",
        type=float,
        help="fraction of training tokens replaced by [UNK]; "
        + note("word_dropout"),
    )
    parser.add_argument(
        "--features",
        default="chars",
        help="features of each token's word besides the token: chars (a "
        "character CNN), shape (case/digit class), both or none",
    )
    parser.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lowercase the tokens (case stays in the shape feature)",
    )
    parser.add_argument(
        "--local-context",
        type=int,
        default=3,
        help="width of a convolution over neighbouring tokens before the "
        "encoder (0: none)",
    )
    parser.add_argument(
        "--context",
        choices=("sentence", "document"),
        help="what a model row holds: consecutive sentences of a document "
        "up to --max-length tokens, or one sentence; " + note("context"),
    )
    parser.add_argument(
        "--output",
        choices=("crf", "softmax"),
        help="tag output: a linear-chain CRF trained on whole tag sequences, "
        "or a per-token softmax; decoding is Viterbi over valid IOB2 either "
        "way; " + note("output"),
    )
    parser.add_argument("--char-dim", type=int, default=32)
    parser.add_argument("--char-filters", type=int, default=64)
    parser.add_argument("--max-word-bytes", type=int, default=20)
    parser.add_argument(
        "--learning-rate", type=float, help=note("learning_rate")
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        help="AdamW's; " + note("weight_decay"),
    )
    parser.add_argument("--patience", type=int, default=3)
    args = common.parse_recipe_args(
        parser, argv, DEFAULTS, SMOKE_DEFAULTS, INIT_DEFAULTS
    )
    if args.command != "predict":
        args.features = parse_features(args.features)
    return args


def parse_features(value):
    """`"shape,chars"` -> `["chars", "shape"]`; `"none"` -> `[]`."""
    names = [] if value in ("", "none") else value.split(",")
    if set(names) - {"shape", "chars"}:
        raise SystemExit(
            "--features takes 'shape', 'chars', 'shape,chars' or 'none'. "
            f"Received: --features={value!r}"
        )
    return sorted(set(names))


# ---------------------------------------------------------------- data


def load_splits(args):
    """`{"train", "validation", "test"}` -> list of documents, each a list
    of `(words, tags)`."""
    if args.data:
        splits = data.read_conll_dir(args.data, documents=True)
    else:
        splits = data.load_conll2003(documents=True)
    if args.smoke:
        splits = {
            name: _first_sentences(documents, n)
            for (name, documents), n in zip(splits.items(), SMOKE_SENTENCES)
        }
    return splits


def _first_sentences(documents, count):
    out = []
    for document in documents:
        if count <= 0:
            break
        out.append(document[:count])
        count -= len(out[-1])
    return out


Prepared = collections.namedtuple(
    "Prepared", ["sentences", "chunks", "inputs", "word_ids"]
)
Prepared.__doc__ = """One split ready for the model: `sentences` (words,
tags), `chunks` (per model row, the indices of its sentences), `inputs`
(see `model_inputs`) and `word_ids` of the rows."""


def prepare(tokenizer, documents, settings):
    """Pack a split's sentences into rows and encode them: one sentence per
    row, or with `settings.context == "document"` as many consecutive
    sentences of a document as fit in `settings.max_length` tokens."""
    sentences = [s for document in documents for s in document]
    words = [w for w, _ in sentences]
    if settings.context == "document":
        document_ids = [d for d, doc in enumerate(documents) for _ in doc]
        special = tokenizer.post_processor.num_special_tokens_to_add(False)
        budget = settings.max_length - special
        chunks = tagging.pack_sentences(
            text.count_word_tokens(tokenizer, words), document_ids, budget
        )
    else:
        chunks = [[i] for i in range(len(sentences))]
    rows = [[w for i in chunk for w in words[i]] for chunk in chunks]
    encoding = text.encode_words(
        tokenizer, rows, max_length=settings.max_length
    )
    starts = [
        np.cumsum([0] + [len(words[i]) for i in chunk[:-1]]) for chunk in chunks
    ]
    inputs = model_inputs(encoding, rows, starts, settings)
    return Prepared(sentences, chunks, inputs, encoding.word_ids)


def model_inputs(encoding, rows, sentence_starts, settings):
    """The arrays the model reads: "token_ids", and "word_shapes" and
    "word_chars" when those features are on."""
    shapes, chars = tagging.token_word_features(
        encoding.word_ids, rows, settings.max_word_bytes, sentence_starts
    )
    inputs = {"token_ids": encoding.ids}
    if "shape" in settings.features:
        inputs["word_shapes"] = shapes
    if "chars" in settings.features:
        inputs["word_chars"] = chars
    return inputs


def word_positions(word_ids, chunks, sentence_lengths):
    """Per row, the position of each word's first sub-token (-1: the word
    was cut off by the length limit)."""
    row_lengths = [sum(sentence_lengths[i] for i in c) for c in chunks]
    return text.first_token_positions(word_ids, row_lengths)


def words_cut_off(prepared):
    """Number of words that lost all their tokens to `max_length`."""
    lengths = [len(words) for words, _ in prepared.sentences]
    positions = word_positions(prepared.word_ids, prepared.chunks, lengths)
    return int(sum((p < 0).sum() for p in positions))


def row_labels(prepared, tag_ids):
    """Tag ids on each row's tokens (first sub-token of each word)."""
    return text.align_labels(
        prepared.word_ids,
        [
            [tag_ids[t] for i in chunk for t in prepared.sentences[i][1]]
            for chunk in prepared.chunks
        ],
    )


def word_dropout(rate, tokenizer):
    """Augmentation: replace `rate` of the word tokens by `[UNK]`, so the
    tagger also learns to read unseen words from their shape and
    characters."""
    unk_id = tokenizer.token_to_id(text.UNK_TOKEN)
    special = [tokenizer.token_to_id(t) for t in text.SPECIAL_TOKENS]
    special = np.array([i for i in special if i is not None] + [text.PAD_ID])

    def transform(batch, rng):
        ids = batch["token_ids"]
        words = ~np.isin(ids, special)
        drop = (rng.random(ids.shape) < rate) & words
        ids[drop] = unk_id
        return batch

    return transform


# ---------------------------------------------------------------- model


def build_model(args, vocab_size, tag_names, encoder=None):
    """Token ids + word features -> encoder -> tag scores: a linear-chain
    CRF's emissions (`--output crf`, a `crf.CRFTagger`) or a softmax. The
    encoder is `encoder` (pretrained, `--init`) with the word features
    beside its output, or else blocks trained from scratch over the
    embeddings and word features."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    inputs = {"token_ids": token_ids}
    features = word_features(inputs, args)
    if encoder is None:
        x = scratch_encoder(token_ids, features, vocab_size, args)
    else:
        x, _ = common.encode_with(encoder, token_ids)
        if features:
            x = keras.layers.Concatenate(name="features")([x, *features])
        x = keras.layers.Dropout(args.dropout, name="head_dropout")(x)
    softmax = args.output == "softmax"
    scores = keras.layers.Dense(
        len(tag_names),
        activation="softmax" if softmax else None,
        dtype="float32",
        name="tags",
    )(x)
    if softmax:
        return keras.Model(inputs, scores, name="ner_tagger")
    scores = crf.LinearChainCRF(
        *tagging.allowed_transitions(tag_names), name="crf"
    )(scores)
    return crf.CRFTagger(inputs, scores, name="ner_tagger")


def word_features(inputs, args):
    """Per-token features of the token's word (`--features`); adds their
    inputs to `inputs`."""
    features = []
    if "shape" in args.features:
        word_shapes = keras.Input((None,), dtype="int32", name="word_shapes")
        inputs["word_shapes"] = word_shapes
        features.append(
            keras.layers.Embedding(
                tagging.NUM_SHAPE_IDS, 16, name="shape_embedding"
            )(word_shapes)
        )
    if "chars" in args.features:
        word_chars = keras.Input(
            (None, args.max_word_bytes), dtype="int32", name="word_chars"
        )
        inputs["word_chars"] = word_chars
        features.append(char_features(word_chars, args))
    return features


def scratch_encoder(token_ids, features, vocab_size, args):
    """Embeddings (+ word features), a local convolution and encoder
    blocks, all trained from scratch."""
    padding_mask = keras.ops.not_equal(token_ids, 0)
    x = ksa.TokenAndPositionEmbedding(
        vocab_size,
        args.max_length,
        args.embedding_dim,
        name="token_embedding",
    )(token_ids)
    if features:
        x = keras.layers.Concatenate(name="features")([x, *features])
        x = keras.layers.Dense(args.embedding_dim, name="feature_projection")(x)
    if args.local_context:
        x = keras.layers.Conv1D(
            args.embedding_dim,
            args.local_context,
            padding="same",
            activation="gelu",
            name="local_context",
        )(x)
    x = keras.layers.LayerNormalization(name="embedding_norm")(x)
    x = keras.layers.Dropout(args.dropout, name="embedding_dropout")(x)
    for i in range(args.num_layers):
        x = ksa.TransformerEncoder(
            args.num_heads,
            args.intermediate_dim,
            dropout=args.dropout,
            activation="gelu",
            name=f"encoder_{i}",
        )(x, padding_mask=padding_mask)
    return x


def char_features(word_chars, args):
    """`(B, L, bytes)` byte ids -> `(B, L, char_filters)`: a width-3 CNN
    over each token's word, max-pooled over the bytes."""
    chars = keras.layers.Embedding(
        tagging.NUM_CHAR_IDS, args.char_dim, name="char_embedding"
    )(word_chars)
    chars = keras.layers.Conv2D(
        args.char_filters,
        (1, 3),
        padding="same",
        activation="relu",
        name="char_conv",
    )(chars)
    chars = keras.layers.MaxPooling2D(
        (1, args.max_word_bytes), name="char_pool"
    )(chars)
    return keras.layers.Reshape((-1, args.char_filters), name="char_features")(
        chars
    )


def compile_model(model, args, steps):
    """AdamW with warm-up and cosine decay; the loss is per-token
    cross-entropy, or the CRF's own (`crf.CRFTagger.compute_loss`)."""
    schedule = common.warmup_cosine(args.learning_rate, steps)
    loss = None
    if args.output == "softmax":
        loss = keras.losses.SparseCategoricalCrossentropy(
            ignore_class=text.IGNORE_INDEX
        )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            schedule, weight_decay=args.weight_decay
        ),
        loss=loss,
        jit_compile=keras.backend.backend() != "torch",
    )


# ---------------------------------------------------------------- decode


def chain_scores(model, tag_names):
    """`(transitions, start)` for Viterbi: the CRF's learned scores, or
    only the IOB2 constraints for a softmax tagger."""
    layer = crf.find_crf(model)
    if layer is None:
        return tagging.constraint_scores(tag_names)
    return layer.transition_scores()


def predict_scores(model, inputs, batch_size, buckets):
    """Per-token tag scores `(n, L, tags)` in log space (CRF emissions, or
    log-probabilities) for the rows of `inputs`, run in length-sorted
    batches padded to buckets (zeros beyond each bucket)."""
    outputs = predict_outputs(model, inputs, batch_size, buckets)
    if crf.find_crf(model) is None:
        outputs = np.log(np.maximum(outputs, 1e-12))
    return outputs


def predict_outputs(model, inputs, batch_size, buckets):
    """The model's outputs `(n, L, tags)` for the rows of `inputs`, run in
    length-sorted batches padded to buckets (zeros beyond each bucket)."""
    ids = inputs["token_ids"]
    lengths = (ids != 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        bucket = int(np.searchsorted(buckets, lengths[rows].max()))
        width = buckets[min(bucket, len(buckets) - 1)]
        batch = {name: a[rows, :width] for name, a in inputs.items()}
        # Under --distribute a batch must split evenly over the devices.
        batch = common.pad_rows(batch, ksa.distribution.batch_shards())
        outputs = keras.ops.convert_to_numpy(model.predict_on_batch(batch))
        outputs = outputs[: len(rows)]
        if out is None:
            out = np.zeros((*ids.shape, outputs.shape[-1]), np.float32)
        out[rows, :width] = outputs
    return out


def decode_tags(
    scores, word_ids, chunks, sentence_lengths, tag_names, chain=None
):
    """Per-sentence tag names from the rows' per-token tag scores.

    Each word reads its first sub-token; each sentence of a row is decoded
    on its own, by Viterbi with `chain = (transitions, start)` (see
    `chain_scores`) or, if `chain` is None, by argmax. Words truncated away
    are tagged "O".
    """
    outside = tag_names.index("O")
    positions = word_positions(word_ids, chunks, sentence_lengths)
    tags = [None] * len(sentence_lengths)
    for row, where, chunk in zip(scores, positions, chunks):
        word_scores = np.full((len(where), len(tag_names)), -1e9)
        word_scores[where < 0, outside] = 0.0
        word_scores[where >= 0] = row[where[where >= 0]]
        start = 0
        for i in chunk:
            part = word_scores[start : start + sentence_lengths[i]]
            start += sentence_lengths[i]
            if chain is None:
                best = part.argmax(axis=-1)
            else:
                best = tagging.viterbi_decode(part, *chain)
            tags[i] = [tag_names[j] for j in best]
    return tags


def tag_prepared(model, prepared, tag_names, batch_size, buckets):
    """Predicted tags (Viterbi) of every sentence of a prepared split."""
    scores = predict_scores(model, prepared.inputs, batch_size, buckets)
    return decode_prepared(
        scores, prepared, tag_names, chain_scores(model, tag_names)
    )


def decode_prepared(scores, prepared, tag_names, chain):
    """`decode_tags` for the rows of a prepared split."""
    return decode_tags(
        scores,
        prepared.word_ids,
        prepared.chunks,
        [len(words) for words, _ in prepared.sentences],
        tag_names,
        chain,
    )


class EntityF1(keras.callbacks.Callback):
    """Adds `val_f1` (entity micro-F1 on the validation split, Viterbi
    decoding) to the logs at the end of every epoch."""

    def __init__(self, prepared, tag_names, batch_size, buckets):
        super().__init__()
        self.prepared, self.tag_names = prepared, tag_names
        self.batch_size, self.buckets = batch_size, buckets

    def on_epoch_end(self, epoch, logs=None):
        predicted = tag_prepared(
            self.model,
            self.prepared,
            self.tag_names,
            self.batch_size,
            self.buckets,
        )
        scores = tagging.entity_scores(
            [tags for _, tags in self.prepared.sentences], predicted
        )
        logs["val_f1"] = scores["f1"]
        print(f"epoch {epoch + 1}: validation entity F1 {scores['f1']:.4f}")


# ---------------------------------------------------------------- train


def evaluate(model, prepared, tag_names, batch_size, buckets):
    """Entity scores of one split, with Viterbi and with argmax decoding."""
    true = [tags for _, tags in prepared.sentences]
    scores = predict_scores(model, prepared.inputs, batch_size, buckets)
    chains = {"viterbi": chain_scores(model, tag_names), "argmax": None}
    return {
        decoding: tagging.entity_scores(
            true, decode_prepared(scores, prepared, tag_names, chain)
        )
        for decoding, chain in chains.items()
    }


def train(args):
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    timer = common.Timer()
    print(BACKEND_NOTE)
    print(f"settings: {vars(args)}")
    common.start_distribution(args)  # before any model is built

    with timer("data"):
        documents = load_splits(args)
        train_sentences = [s for doc in documents["train"] for s in doc]
        tag_names = data.conll_tag_names(train_sentences)
        tag_ids = {tag: i for i, tag in enumerate(tag_names)}
        print(
            "documents / sentences: "
            + ", ".join(
                f"{name} {len(docs)} / {sum(map(len, docs))}"
                for name, docs in documents.items()
            )
            + f"; tags: {tag_names}"
        )

    with timer("tokenize"):
        encoder = None
        if args.init:
            encoder, tokenizer = common.load_pretrained(args)
        else:
            tokenizer = text.train_tokenizer(
                [" ".join(words) for words, _ in train_sentences],
                vocab_size=args.vocab_size,
                lowercase=args.lowercase,
            )
        text.save_tokenizer(tokenizer, out / "tokenizer.json")
        splits = {
            name: prepare(tokenizer, docs, args)
            for name, docs in documents.items()
        }
        lengths = (splits["train"].inputs["token_ids"] != 0).sum(1)
        truncated = {
            name: words_cut_off(split) for name, split in splits.items()
        }
        print(
            f"vocabulary {tokenizer.get_vocab_size()}; {args.context} rows: "
            f"{len(splits['train'].chunks)} in train, tokens per row: median "
            f"{int(np.median(lengths))}, max {lengths.max()}; words cut off by "
            f"the {args.max_length}-token limit: {truncated}"
        )

    buckets = common.bucket_lengths(args.max_length, smallest=16)
    augment = None
    if args.word_dropout > 0:
        augment = word_dropout(args.word_dropout, tokenizer)
    train_batches = common.make_batches(
        splits["train"].inputs,
        row_labels(splits["train"], tag_ids),
        args.batch_size,
        buckets,
        shuffle=True,
        seed=args.seed,
        transform=augment,
        multiple_of=ksa.distribution.batch_shards(),
    )
    if train_batches.left_out:
        print(
            f"{train_batches.left_out} training rows per epoch left out so "
            "batches split evenly over the devices"
        )

    model = build_model(args, tokenizer.get_vocab_size(), tag_names, encoder)
    compile_model(model, args, steps=len(train_batches) * args.epochs)
    model.summary(print_fn=lambda line, **_: print(line))
    common.print_sharding(model)
    callbacks = [
        EntityF1(splits["validation"], tag_names, 4 * args.batch_size, buckets),
        keras.callbacks.EarlyStopping(
            monitor="val_f1",
            mode="max",
            patience=args.patience,
            restore_best_weights=True,
        ),
        keras.callbacks.CSVLogger(str(out / "history.csv")),
    ]
    with timer("train"):
        history = model.fit(
            train_batches,
            epochs=args.epochs,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    common.plot_learning_curves(
        {"loss": history.history["loss"], "val_f1": history.history["val_f1"]},
        out / "learning_curves.png",
        ["loss", "f1"],
    )

    with timer("evaluate"):
        scores = {
            name: evaluate(
                model, splits[name], tag_names, 4 * args.batch_size, buckets
            )
            for name in ("validation", "test")
        }
        for name, by_decoding in scores.items():
            for decoding, s in by_decoding.items():
                print(
                    f"{name} ({decoding}): entity F1 {s['f1']:.4f}, "
                    f"precision {s['precision']:.4f}, recall "
                    f"{s['recall']:.4f}; per type: "
                    + ", ".join(
                        f"{k} {v['f1']:.4f}" for k, v in s["per_type"].items()
                    )
                )

    with timer("save and reload"):
        path = out / "model.keras"
        common.save_model_atomic(model, path)
        common.write_json_atomic(tag_names, out / "labels.json")
        sample = {n: a[:64] for n, a in splits["test"].inputs.items()}
        common.check_reload(model, path, sample)

    test = scores["test"]["viterbi"]
    metrics = {
        "test_f1": test["f1"],
        "test_precision": test["precision"],
        "test_recall": test["recall"],
        "test_per_type": test["per_type"],
        "valid_f1": scores["validation"]["viterbi"]["f1"],
        "valid_per_type": scores["validation"]["viterbi"]["per_type"],
        "argmax_decoding": {
            "test_f1": scores["test"]["argmax"]["f1"],
            "valid_f1": scores["validation"]["argmax"]["f1"],
        },
        "train_seconds": timer.seconds["train"],
        "phase_seconds": timer.seconds,
        "epochs_run": len(history.history["loss"]),
        "val_f1_per_epoch": history.history["val_f1"],
        "backend": keras.backend.backend(),
        "sentences": {n: len(s.sentences) for n, s in splits.items()},
        "rows": {n: len(s.chunks) for n, s in splits.items()},
        "words_cut_off": truncated,
        "dataset": str(args.data) if args.data else "CoNLL-2003 English",
        "settings": vars(args),
        "tag_names": tag_names,
    }
    common.write_json_atomic(metrics, out / "metrics.json")
    print(
        f"test entity F1 {test['f1']:.4f} (precision {test['precision']:.4f},"
        f" recall {test['recall']:.4f}); wrote {out}/: model.keras "
        "tokenizer.json labels.json metrics.json learning_curves.png"
    )
    return metrics


# ---------------------------------------------------------------- predict


def tag_texts(model, tokenizer, tag_names, settings, texts):
    """Entities of raw texts: per text, a list of `(type, start, end)`
    character offsets (end exclusive), from the tokenizer's word spans.
    Each text is one row (its own context)."""
    encoding = text.encode_text_words(
        tokenizer, texts, max_length=settings.max_length
    )
    rows = [
        [t[a:b] for a, b in spans]
        for t, spans in zip(texts, encoding.word_spans)
    ]
    inputs = model_inputs(encoding, rows, None, settings)
    buckets = common.bucket_lengths(settings.max_length, smallest=16)
    tags = decode_tags(
        predict_scores(model, inputs, 64, buckets),
        encoding.word_ids,
        [[i] for i in range(len(rows))],
        [len(words) for words in rows],
        tag_names,
        chain_scores(model, tag_names),
    )
    return [
        [
            (kind, spans[start][0], spans[end - 1][1])
            for kind, start, end in tagging.entity_spans(sentence_tags)
        ]
        for sentence_tags, spans in zip(tags, encoding.word_spans)
    ]


def predict(args):
    model_dir = Path(args.model_dir)
    model, tokenizer, _, settings = common.load_run(model_dir)
    tag_names = json.loads((model_dir / "labels.json").read_text())
    texts = common.input_texts(args.texts)
    for raw, entities in zip(
        texts, tag_texts(model, tokenizer, tag_names, settings, texts)
    ):
        print(raw)
        for kind, start, end in entities:
            print(f"\t{kind}\t{start}\t{end}\t{raw[start:end]}")


def main(argv=None):
    common.run_recipe(parse_args(argv), train, predict)


if __name__ == "__main__":
    main()
