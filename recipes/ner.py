"""Train a CoNLL-2003 named-entity tagger from keras-selfattn layers.

    python recipes/ner.py                          # full run (~15 min, CPU)
    python recipes/ner.py --init none              # from scratch (~12 min)
    python recipes/ner.py --lora 8                 # LoRA, encoder frozen
    python recipes/ner.py --smoke                  # whole path, tiny slice
    python recipes/ner.py --data my_conll/         # train/valid/test.txt
    python recipes/ner.py predict --model-dir runs/ner \\
        "Angela Merkel visited Paris."
    echo "EU rejects German call" | python recipes/ner.py predict
    python recipes/ner.py export --model-dir runs/ner --format onnx
    python recipes/ner.py predict --artifact runs/ner/model.onnx \\
        "Angela Merkel visited Paris."             # onnxruntime only
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
document. The character CNN and the output layer, trained from scratch,
learn at `--new-layers-learning-rate`, the encoder at `--learning-rate`
(`recipes/optimizers.py`). `--init DIR`, `--lora RANK` and
`--word-vectors glove-6b-50d`: see `--help` and the README.

`--init none` trains from scratch instead: a WordPiece tokenizer trained
on the training split, token + position embeddings plus the character
CNN, projected to the model width, mixed with the neighbouring tokens by
a width-3 convolution and Transformer encoder blocks, to tag scores for a
linear-chain CRF (`recipes/crf.py`) trained on whole tag sequences; half
of the tokens are replaced by [UNK] in training (`--word-dropout`); one
sentence a row.

The model is built in `recipes/ner_model.py`. Either way decoding keeps
the best tag sequence that is valid IOB2 (Viterbi; `I-X` only after `B-X`
or `I-X`).

Scores are CoNLL entity-level precision/recall/F1 (exact span and type),
micro-averaged, with per-type figures. `--distribute data|model` trains on
several devices through `keras.distribution` (JAX). Everything lands in
`--output-dir`: model.keras, tokenizer.json, labels.json, metrics.json,
learning_curves.png, history.csv and train.log. `export` writes the
model as an artifact beside them, with decoding.json (what decoding needs
beyond labels.json), and `predict --artifact` tags with it.
"""

if not __package__:  # run as a file: `python recipes/ner.py`
    import _launch

    _launch.run_as_module(__file__)

if __name__ == "__main__":  # `predict --artifact` imports no Keras
    import recipes

    recipes.use_default_backend("ner")
    from recipes import decoding, deploy

    deploy.serve_if_requested("runs/ner", decoding.label_entities)


import keras
import numpy as np

from keras_selfattn import text
from recipes import (
    cli,
    data,
    decoding,
    deploy,
    keras_tagging,
    ner_model,
    predict_command,
    tagger_inputs,
    training,
    word_vectors,
)

# Settings whose default depends on the mode (see `cli.ModeDefaults`):
# these train from scratch (`--init none`); `INIT_DEFAULTS` override them
# when fine-tuning, which is the default. `vocab_size`, `context` (what a
# row holds: one sentence, or consecutive sentences of a document up to
# `--max-length` tokens) and `output` ("crf": a linear-chain CRF trained
# on whole tag sequences; "softmax": per-token) are no options: the other
# values measured no gain (README).
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
    "word_vectors": "none",
    "word_vector_rows": None,
}
SMOKE_DEFAULTS = {
    "epochs": 1,
    "batch_size": 16,
    "max_length": 64,
    "vocab_size": 800,
    # The most frequent GloVe words only: a small model to save and load.
    "word_vector_rows": 20000,
}
# `--init` (the default): fine-tuning a pretrained encoder wants a small
# learning rate (the layers trained from scratch beside it a larger one,
# the from-scratch model's), its own dropout, few epochs and
# whole-document context; 8 rows a batch (32 give too few steps an epoch)
# and 5 epochs (README, NER).
INIT_DEFAULTS = {
    "epochs": 5,
    "batch_size": 8,
    "learning_rate": 2e-4,
    "new_layers_learning_rate": 1e-3,
    "dropout": 0.1,
    "word_dropout": 0.0,
    "weight_decay": 0.01,
    "context": "document",
    "output": "softmax",
}
SMOKE_SENTENCES = (400, 100, 100)
DEFAULT_INIT = "all-MiniLM-L6-v2"
MODES = cli.ModeDefaults(DEFAULTS, SMOKE_DEFAULTS, INIT_DEFAULTS, DEFAULT_INIT)
MODEL_SIZE = {
    "embedding_dim": 128,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_dim": 256,
}
# Epochs without a gain in validation F1 before training stops.
PATIENCE = 3


def parse_args(argv=None):
    parser, _ = cli.recipe_parser(
        __doc__, "runs/ner", "tag raw texts with a model", MODES, MODEL_SIZE
    )
    parser.add_argument(
        "--data", help="directory with your own train/valid/test.txt"
    )
    note = MODES.note
    parser.add_argument("--dropout", type=float, help=note("dropout"))
    parser.add_argument(
        "--word-dropout",
        type=float,
        help="fraction of training tokens replaced by [UNK]; "
        + note("word_dropout"),
    )
    parser.add_argument(
        "--word-vectors",
        choices=word_vectors.CHOICES,
        help="pretrained word vectors beside the character features, "
        "looked up by the lowercased word (frozen; recipes/word_vectors.py); "
        + note("word_vectors"),
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        help="AdamW's; " + note("weight_decay"),
    )
    parser.add_argument(
        "--new-layers-learning-rate",
        type=float,
        help="with --init: the learning rate of the layers trained from "
        "scratch beside the pretrained encoder (character CNN, output; "
        "--learning-rate is the encoder's); with --lora it defaults to "
        "--learning-rate; " + note("new_layers_learning_rate"),
    )
    args = cli.parse_args(parser, argv, MODES)
    new_rate = args.new_layers_learning_rate
    if args.command is None and new_rate is not None and not args.init:
        parser.error(
            "--new-layers-learning-rate: it needs --init (from scratch, every "
            f"layer is new). Received: --new-layers-learning-rate {new_rate}"
        )
    return args


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


def augmentation(tokenizer, args):
    """The training batches' transform: `word_dropout` at `--word-dropout`
    (None at 0)."""
    if args.word_dropout > 0:
        return word_dropout(args.word_dropout, tokenizer)
    return None


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


# ---------------------------------------------------------------- train


def train(args):
    run = training.Run(args)

    with run.phase("data"):
        documents = load_splits(args)
        train_sentences = [s for doc in documents["train"] for s in doc]
        tag_names = data.conll_tag_names(train_sentences)
        tag_ids = {tag: i for i, tag in enumerate(tag_names)}
        print_data_sizes(documents, tag_names)

    with run.phase("tokenize"):
        encoder, tokenizer = run.tokenizer(
            [" ".join(words) for words, _ in train_sentences]
        )
        words, vectors = word_vectors.load_chosen(
            args.word_vectors, args.word_vector_rows
        )
        index = None if words is None else word_vectors.word_index(words)
        splits, truncated = prepare_splits(tokenizer, documents, args, index)

    buckets = keras_tagging.length_buckets(args.max_length)
    train_batches = run.batches(
        "train",
        splits["train"].inputs,
        tagger_inputs.row_labels(splits["train"], tag_ids),
        buckets,
        transform=augmentation(tokenizer, args),
    )
    model = ner_model.build_model(
        args, tokenizer.get_vocab_size(), tag_names, encoder, vectors
    )
    history = fit(
        run, model, train_batches, splits, tag_names, buckets, encoder
    )

    with run.phase("evaluate"):
        tagger = keras_tagging.keras_tagger(model, tag_names, buckets)
        scores = evaluate(tagger, splits, tag_names, run.eval_batch_size)

    sample = {n: a[:64] for n, a in splits["test"].inputs.items()}
    files = {"labels.json": tag_names}
    if words is not None:
        files[word_vectors.VOCABULARY_FILE] = words
    run.save(model, sample, files)
    metrics = run.finish(
        run_metrics(scores, history, splits, truncated, tag_names, args)
    )
    test = scores["test"]["viterbi"]
    print(
        f"test entity F1 {test['f1']:.4f} (precision {test['precision']:.4f},"
        f" recall {test['recall']:.4f}); wrote {run.out}/: model.keras "
        "tokenizer.json labels.json metrics.json learning_curves.png"
    )
    return metrics


def print_data_sizes(documents, tag_names):
    """Documents and sentences per split, and the tags."""
    print(
        "documents / sentences: "
        + ", ".join(
            f"{name} {len(docs)} / {sum(map(len, docs))}"
            for name, docs in documents.items()
        )
        + f"; tags: {tag_names}"
    )


def prepare_splits(tokenizer, documents, args, word_index=None):
    """`({split: tagger_inputs.Prepared}, {split: words cut off})`; prints
    the rows' sizes (and, with `word_index`, the share of words with a
    vector)."""
    splits = {
        name: tagger_inputs.prepare(tokenizer, docs, args, word_index)
        for name, docs in documents.items()
    }
    if word_index is not None:
        print(
            "words with a vector: "
            + ", ".join(
                f"{name} {word_vectors.coverage(s.sentences, word_index):.1%}"
                for name, s in splits.items()
            )
        )
    lengths = (splits["train"].inputs["token_ids"] != 0).sum(1)
    truncated = {
        name: tagger_inputs.words_cut_off(split)
        for name, split in splits.items()
    }
    print(
        f"vocabulary {tokenizer.get_vocab_size()}; {args.context} rows: "
        f"{len(splits['train'].chunks)} in train, tokens per row: median "
        f"{int(np.median(lengths))}, max {lengths.max()}; words cut off by "
        f"the {args.max_length}-token limit: {truncated}"
    )
    return splits, truncated


def fit(run, model, train_batches, splits, tag_names, buckets, encoder):
    """Per-token cross-entropy, or the CRF's own (`crf.CRFTagger`), AdamW
    (the layers beside a pretrained `encoder` at their own rate, see
    `ner_model.learning_rate_scales`); keeps the epoch of the best entity
    F1 on the validation split. Returns the history."""
    args = run.args
    scales = ner_model.learning_rate_scales(model, encoder, args)
    if scales:
        new = [v for v in model.trainable_weights if v.path in scales]
        print(
            f"learning rate {args.learning_rate:g} for the pretrained "
            f"encoder, {args.new_layers_learning_rate:g} for the "
            f"{training.count_weights(new):,} weights trained from scratch"
        )
    loss = None
    if args.output == "softmax":
        loss = keras.losses.SparseCategoricalCrossentropy(
            ignore_class=text.IGNORE_INDEX
        )
    run.compile(
        model,
        steps=len(train_batches) * args.epochs,
        weight_decay=args.weight_decay,
        learning_rate_scales=scales,
        loss=loss,
    )
    validation_f1 = keras_tagging.EntityF1(
        splits["validation"], tag_names, run.eval_batch_size, buckets
    )
    return run.fit(
        model,
        train_batches,
        monitor="val_f1",
        patience=PATIENCE,
        curves=["loss", "f1"],
        callbacks=[validation_f1],
    )


def evaluate(tagger, splits, tag_names, batch_size):
    """`{split: {decoding: scores}}` of validation and test, Viterbi and
    argmax decoding (`decoding.evaluate`); printed."""
    scores = {
        name: decoding.evaluate(tagger, splits[name], tag_names, batch_size)
        for name in ("validation", "test")
    }
    for name, by_decoding in scores.items():
        for decoding_name, s in by_decoding.items():
            print(
                f"{name} ({decoding_name}): entity F1 {s['f1']:.4f}, "
                f"precision {s['precision']:.4f}, recall "
                f"{s['recall']:.4f}; per type: "
                + ", ".join(
                    f"{k} {v['f1']:.4f}" for k, v in s["per_type"].items()
                )
            )
    return scores


def run_metrics(scores, history, splits, truncated, tag_names, args):
    """What metrics.json holds of the run's own (`training.Run.finish`
    adds the rest): Viterbi scores, argmax F1, sizes and the data set."""
    test = scores["test"]["viterbi"]
    return {
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
        "val_f1_per_epoch": history["val_f1"],
        "sentences": {n: len(s.sentences) for n, s in splits.items()},
        "rows": {n: len(s.chunks) for n, s in splits.items()},
        "words_cut_off": truncated,
        "dataset": str(args.data) if args.data else "CoNLL-2003 English",
        "tag_names": tag_names,
    }


# ---------------------------------------------------------------- predict


def predict(args):
    texts = predict_command.input_texts(args.texts)
    if args.artifact:  # from `main()`; as a script, the file's top serves it
        lines = decoding.label_entities(deploy.ServedRun(args.artifact), texts)
    else:
        lines = keras_tagging.label_texts(args.model_dir, texts)
    print("\n".join(lines))


# ---------------------------------------------------------------- export


def export(args):
    """`export`: the artifact (`training.export_run`) and, beside it,
    `decoding.DECODER_FILE`, what `predict --artifact` decodes with."""
    return training.export_run(args, files=keras_tagging.decoder_files)


def main(argv=None):
    cli.run(parse_args(argv), train, predict, export)


if __name__ == "__main__":
    main()
