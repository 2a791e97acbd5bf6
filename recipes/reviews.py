"""The sentiment recipe's reviews, with no Keras: their token ids (in
training, `predict` and `predict --artifact` alike) and the line
`predict` prints for each."""

from keras_selfattn import text


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
