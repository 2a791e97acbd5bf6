"""The linear baseline the sentiment recipe prints beside its model:
TF-IDF of word unigrams and bigrams and a logistic regression
(scikit-learn), fit on the same training split and scored on the same
test reviews.

The classic strong result on long reviews (Wang and Manning 2012; Maas
et al. 2011): a model that does not beat it adds nothing.
"""

import time

import numpy as np

from recipes import reviews

# `C` candidates, chosen on the validation split.
REGULARIZATION = (1.0, 4.0, 16.0)


def linear_baseline(splits, extra=None):
    """Fit TF-IDF (word 1-2-grams, sublinear term frequency, terms in at
    least 2 training reviews) + logistic regression on `splits["train"]`,
    `C` picked on `splits["validation"]`; score `splits["test"]` and
    each `extra` set.

    Args:
        splits: `{"train", "validation", "test"}` -> `(texts, labels)`.
        extra: optional `{name: (texts, labels)}` also scored.

    Returns:
        `{"test_accuracy", "C", "seconds", "<name>_accuracy"...}`.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2),
        min_df=2,
        sublinear_tf=True,
        preprocessor=_clean,
    )
    train_texts, train_labels = splits["train"]
    features = vectorizer.fit_transform(train_texts)
    val_features = vectorizer.transform(splits["validation"][0])
    best = None
    for c in REGULARIZATION:
        model = LogisticRegression(C=c, max_iter=1000)
        model.fit(features, train_labels)
        accuracy = model.score(val_features, splits["validation"][1])
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    _, c, model = best
    scores = {"C": c}
    for name, (texts, labels) in {
        "test": splits["test"],
        **(extra or {}),
    }.items():
        predicted = model.predict(vectorizer.transform(texts))
        scores[f"{name}_accuracy"] = float(np.mean(predicted == labels))
    scores["seconds"] = round(time.perf_counter() - start, 1)
    return scores


def fit_beside(splits, scores):
    """`linear_baseline` on `splits` (and the short reviews), printed
    beside the model's `scores` (`side_by_side`); returns its result."""
    result = linear_baseline(splits, {"short_review": reviews.short_reviews()})
    print(side_by_side(scores, result))
    return result


def side_by_side(scores, result):
    """The model's `scores` and the baseline's `result` as a small table:
    test accuracy and accuracy on the short reviews."""
    return (
        f"{'':28}{'this model':>12}{'TF-IDF + LR':>13}\n"
        f"{'test accuracy':28}{scores['test_accuracy']:>12.4f}"
        f"{result['test_accuracy']:>13.4f}\n"
        f"{'short one-sentence reviews':28}"
        f"{scores['short_review_accuracy']:>12.0%}"
        f"{result['short_review_accuracy']:>13.0%}\n"
        f"(baseline: word 1-2-grams, C={result['C']}, "
        f"{result['seconds']:.0f} s)"
    )


def _clean(review):
    """Lowercased, IMDB's `<br />` line breaks as spaces."""
    return review.replace("<br />", " ").lower()
