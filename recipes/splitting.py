"""Seeded, stratified train / validation / test splits of a labelled data
set: the same labels and seed always give the same split.

    >>> import numpy as np
    >>> parts = split_indices(np.array([0, 1] * 10), 4, 2, seed=0)
    >>> {name: len(rows) for name, rows in parts.items()}
    {'train': 14, 'validation': 2, 'test': 4}
"""

import numpy as np


def _num_items(name, value, total):
    """`value` as a count: an int, or a float fraction of `total`."""
    if isinstance(value, float) and 0.0 < value < 1.0:
        return round(value * total)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a non-negative integer or a fraction in "
            f"(0, 1). Received: {name}={value!r}"
        )
    if value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative integer or a fraction in "
            f"(0, 1). Received: {name}={value!r}"
        )
    return int(value)


def _stratified_take(labels, indices, count, rng):
    """Split `indices` into (taken, rest), `count` taken, stratified by
    label (per-class counts proportional, largest remainder)."""
    if count == 0:
        return indices[:0], indices
    classes, class_sizes = np.unique(labels[indices], return_counts=True)
    exact = class_sizes * count / len(indices)
    quota = np.floor(exact).astype(int)
    short = count - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    taken, rest = [], []
    for cls, q in zip(classes, quota, strict=True):
        members = indices[labels[indices] == cls]
        members = members[rng.permutation(len(members))]
        taken.append(members[:q])
        rest.append(members[q:])
    taken = np.concatenate(taken)
    rest = np.concatenate(rest)
    # Shuffle so the classes are interleaved inside each part.
    return taken[rng.permutation(len(taken))], rest[rng.permutation(len(rest))]


def split_indices(labels, num_test, num_validation, seed):
    """Seeded, stratified split into train / validation / test indices.

    Test is taken from all examples; validation is carved from what remains
    (the training part), so it never overlaps test. Each part keeps the
    label proportions (per-class quotas, largest remainder) and is shuffled.
    The same `labels` and `seed` always give the same split.

    Args:
        labels: 1-D integer array.
        num_test, num_validation: counts, or fractions in (0, 1) of all
            examples (test) and of the training part (validation).
        seed: integer seed of `numpy.random.default_rng`.

    Returns:
        dict `{"train", "validation", "test"}` of int64 index arrays.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"`labels` must be 1-D. Received: labels.shape={labels.shape}"
        )
    total = len(labels)
    num_test = _num_items("num_test", num_test, total)
    if num_test >= total:
        raise ValueError(
            f"`num_test` must be smaller than the number of examples "
            f"({total}). Received: num_test={num_test}"
        )
    num_validation = _num_items(
        "num_validation", num_validation, total - num_test
    )
    if num_validation >= total - num_test:
        raise ValueError(
            f"`num_validation` must leave training examples (train has "
            f"{total - num_test}). Received: num_validation={num_validation}"
        )
    rng = np.random.default_rng(seed)
    everything = np.arange(total, dtype=np.int64)
    test, train = _stratified_take(labels, everything, num_test, rng)
    validation, train = _stratified_take(labels, train, num_validation, rng)
    return {"train": train, "validation": validation, "test": test}


def split_dataset(
    texts, labels, num_test, num_validation, seed, label_names=None
):
    """Split `(texts, labels)` with `split_indices` and describe the split.

    `label_names[i]` names label id `i` in `info` (default: the id).

    Returns:
        `(splits, info)`: `splits[name] = (list_of_texts, labels_array)` for
        name in train/validation/test, and `info` a JSON-able dict (method,
        seed, sizes, per-class counts, how many distinct test texts also
        occur verbatim in train or validation) for the recipe to print and
        store with its checkpoint.
    """
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(
            f"`texts` and `labels` must have the same length. Received: "
            f"len(texts)={len(texts)}, len(labels)={len(labels)}"
        )
    index = split_indices(labels, num_test, num_validation, seed)
    splits = {
        name: ([texts[i] for i in idx], labels[idx])
        for name, idx in index.items()
    }
    classes = np.unique(labels)
    names = {
        c: str(label_names[c]) if label_names is not None else str(c)
        for c in classes.tolist()
    }
    train_set = set(splits["train"][0]) | set(splits["validation"][0])
    info = {
        "method": (
            "stratified by label; seeded numpy default_rng permutation; "
            "test drawn first, validation carved from the rest (train)"
        ),
        "seed": int(seed),
        "sizes": {name: len(idx) for name, idx in index.items()},
        "class_counts": {
            name: {names[c]: int((lab == c).sum()) for c in names}
            for name, (_, lab) in splits.items()
        },
        "test_texts_seen_in_train": sum(
            1 for t in set(splits["test"][0]) if t in train_set
        ),
    }
    return splits, info


def first_rows(splits, sizes):
    """`splits` with the named ones cut to their first `sizes[name]` rows
    (None, or more rows than a split holds: all of it), and the sizes
    that cut a split.

    >>> first_rows({"a": ([1, 2, 3], [0, 1, 0]), "b": ([4], [1])},
    ...            {"a": 2, "b": 5})
    ({'a': ([1, 2], [0, 1]), 'b': ([4], [1])}, {'a': 2})
    """
    cut = {}
    for name, size in sizes.items():
        texts, labels = splits[name]
        if size is not None and size < len(texts):
            splits = {**splits, name: (texts[:size], labels[:size])}
            cut[name] = size
    return splits, cut
