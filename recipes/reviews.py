"""The sentiment recipe's reviews, with no Keras: the splits a run
trains on, their token ids (in training, `predict` and `predict
--artifact` alike), the line `predict` prints for each, and the short
reviews every run is checked on."""

import numpy as np

from keras_selfattn import text
from recipes import data, splitting

LABEL_NAMES = ("negative", "positive")

# One-sentence reviews written for the sentiment recipe: what people type
# into `predict`. The model (and the baseline) are checked on them after
# training.
SHORT_REVIEWS = [
    ("A wonderful film, I loved every minute of it.", 1),
    ("Brilliant acting and a moving story.", 1),
    ("One of the best movies I have seen this year.", 1),
    ("Funny, smart and beautifully shot.", 1),
    ("I would happily watch it again.", 1),
    ("A masterpiece.", 1),
    ("Great cast, great script, great fun.", 1),
    ("The soundtrack is superb and the ending made me cry.", 1),
    ("Highly recommended for the whole family.", 1),
    ("Charming and heartfelt from start to finish.", 1),
    ("A boring, predictable mess.", 0),
    ("Terrible acting and an awful script.", 0),
    ("I walked out after half an hour.", 0),
    ("The worst movie I have ever seen.", 0),
    ("Two hours of my life I will never get back.", 0),
    ("Dull, slow and completely pointless.", 0),
    ("Avoid this one.", 0),
    ("The plot makes no sense and the jokes fall flat.", 0),
    ("A waste of a talented cast.", 0),
    ("Painfully bad from the first scene.", 0),
]


def load_splits(args):
    """Train/validation/test texts and labels, and a description."""
    if args.data:
        texts, labels, names = data.load_text_csv(
            args.data, args.text_column, args.label_column
        )
        if len(names) != 2:
            raise ValueError(
                "This recipe trains a binary classifier; `--data` has "
                f"{len(names)} labels: {names}"
            )
        splits, info = splitting.split_dataset(
            texts, labels, 0.2, 0.1, args.seed, label_names=names
        )
        info["dataset"] = str(args.data)
        return cap_splits(splits, info, args), info, tuple(names)
    texts, labels = data.load_imdb()
    splits, info = data.split_imdb(texts, labels, seed=args.seed)
    if args.smoke:
        splits, _ = splitting.first_rows(
            splits, dict(zip(splits, (600, 200, 200)))
        )
        info["smoke"] = {name: len(s[0]) for name, s in splits.items()}
    return cap_splits(splits, info, args), info, LABEL_NAMES


def cap_splits(splits, info, args):
    """The first `--train-size` / `--test-size` rows of the (shuffled,
    stratified) splits; the sizes used are recorded in `info`."""
    sizes = {"train": args.train_size, "test": args.test_size}
    splits, cut = splitting.first_rows(splits, sizes)
    if cut:
        info["subset"] = cut
    return splits


def short_reviews():
    """`(texts, labels)` of `SHORT_REVIEWS`, the labels an int array."""
    texts = [review for review, _ in SHORT_REVIEWS]
    return texts, np.array([label for _, label in SHORT_REVIEWS])


def encode_reviews(tokenizer, texts, max_length, cache_dir=None):
    """Token ids of `texts`: reviews longer than `max_length` keep their
    head and tail."""
    return text.encode_texts(
        tokenizer,
        texts,
        max_length=max_length,
        truncation="head+tail",
        cache_dir=cache_dir,
    )


def review_line(label_names, probability, review):
    """`label<TAB>probability<TAB>review`, what `predict` prints."""
    label = label_names[int(probability > 0.5)]
    return f"{label}\t{probability:.3f}\t{review}"


def label_reviews(run, texts):
    """`predict --artifact`'s lines, a review each, from `run` (a
    `deploy.ServedRun`)."""
    ids = encode_reviews(run.tokenizer, texts, run.settings.max_length)
    probabilities = run.predict_rows(ids)[:, 0]
    labels = run.metrics["label_names"]
    return [review_line(labels, p, t) for p, t in zip(probabilities, texts)]


def short_crops(fraction, cls_id, sep_id, shortest=4, longest=40):
    """Augmentation: replace `fraction` of a batch's reviews by a random
    window of 4-40 of their tokens, so the model also learns to read
    one-sentence inputs (what people type into `predict`)."""

    def transform(batch, rng):
        for row in np.flatnonzero(rng.random(len(batch)) < fraction):
            tokens = batch[row][batch[row] != 0][1:-1]  # drop [CLS] [SEP]
            size = int(rng.integers(shortest, longest + 1))
            if len(tokens) <= size:
                continue
            start = int(rng.integers(0, len(tokens) - size + 1))
            window = tokens[start : start + size]
            batch[row] = 0
            batch[row, : size + 2] = [cls_id, *window, sep_id]
        return batch

    return transform
