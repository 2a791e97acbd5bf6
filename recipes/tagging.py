"""IOB2 tag sequences: entity spans, CoNLL entity scores and decoding by
the best valid path (Viterbi). Pure Python and NumPy.

    >>> entity_spans(["B-PER", "I-PER", "O", "I-LOC"])
    [('PER', 0, 2), ('LOC', 3, 4)]
    >>> entity_scores([["B-PER", "O"]], [["B-PER", "B-LOC"]])["f1"]
    0.6666666666666666
"""

import numpy as np

from recipes.data import split_tag


# --------------------------------------------------------------- scoring


def entity_spans(tags):
    """Entities of one sentence as `(type, start, end)`, end exclusive.

    The CoNLL (conlleval/seqeval default) reading: an entity starts at
    `B-X`, or at `I-X` that follows `O` or another type, and runs over the
    `I-X` that follow it.
    """
    spans = []
    start = kind = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, tag_kind = split_tag(tag)
        if start is not None and (prefix != "I" or tag_kind != kind):
            spans.append((kind, start, i))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, tag_kind
    return spans


def _prf(correct, predicted, true):
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    total = precision + recall
    f1 = 2 * precision * recall / total if total else 0.0
    return precision, recall, f1


def entity_scores(true_tags, predicted_tags):
    """CoNLL entity-level precision, recall and F1 (exact span and type),
    micro-averaged over all entities, plus the same per entity type.

    Args:
        true_tags, predicted_tags: per sentence, a list of IOB tags; the
            two must have the same sentences and lengths.

    Returns:
        `{"precision", "recall", "f1", "support", "per_type": {type:
        {"precision", "recall", "f1", "support"}}}`; support counts true
        entities.
    """
    if len(true_tags) != len(predicted_tags):
        raise ValueError(
            "`true_tags` and `predicted_tags` must have the same number of "
            f"sentences. Received: {len(true_tags)} and "
            f"{len(predicted_tags)}"
        )
    true, predicted = set(), set()
    for i, (t, p) in enumerate(zip(true_tags, predicted_tags)):
        if len(t) != len(p):
            raise ValueError(
                f"Sentence {i} has {len(t)} true tags but {len(p)} "
                "predicted tags."
            )
        true.update((i, *span) for span in entity_spans(t))
        predicted.update((i, *span) for span in entity_spans(p))
    correct = true & predicted

    def scores(keep):
        counts = [sum(map(keep, s)) for s in (correct, predicted, true)]
        precision, recall, f1 = _prf(*counts)
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": counts[2],
        }

    kinds = sorted({entity[1] for entity in true | predicted})
    result = scores(lambda entity: True)
    result["per_type"] = {
        kind: scores(lambda entity, kind=kind: entity[1] == kind)
        for kind in kinds
    }
    return result


# -------------------------------------------------------------- decoding


def allowed_transitions(tag_names):
    """Boolean `(C, C)` matrix `allowed[previous, next]` and `(C,)` vector
    `allowed_start` of valid IOB2 moves: `I-X` only after `B-X` or `I-X`."""
    parts = [split_tag(tag) for tag in tag_names]
    allowed_start = np.array([prefix != "I" for prefix, _ in parts])
    allowed = np.ones((len(parts), len(parts)), dtype=bool)
    for j, (prefix, kind) in enumerate(parts):
        if prefix == "I":
            allowed[:, j] = [k == kind for _, k in parts]
    return allowed, allowed_start


def constraint_scores(tag_names):
    """`(transitions (C, C), start (C,))` scores that only forbid the
    invalid IOB2 moves: 0 where allowed, `-inf` where not (the transition
    scores of a tagger without learned ones)."""
    return forbid_moves(0.0, 0.0, *allowed_transitions(tag_names))


def forbid_moves(transitions, start, allowed, allowed_start):
    """`(transitions, start)` move scores with the moves that `allowed` and
    `allowed_start` forbid set to `-inf`, as `viterbi_decode` takes them.

    >>> forbid_moves(np.ones((2, 2)), 0.0, np.eye(2, dtype=bool), [1, 0])
    (array([[  1., -inf],
           [-inf,   1.]]), array([  0., -inf]))
    """
    return (
        np.where(allowed, transitions, -np.inf),
        np.where(allowed_start, start, -np.inf),
    )


def viterbi_decode(scores, transitions, start):
    """The tag path with the highest total score: `start[first tag]`, plus
    each position's `scores`, plus `transitions[previous, next]` for each
    move; `-inf` forbids a move.

    Args:
        scores: `(n, C)` per-position tag scores (log-probabilities, or a
            CRF's emissions).
        transitions: `(C, C)` move scores (`constraint_scores`, or a CRF's).
        start: `(C,)` first-tag scores.

    Returns:
        int array `(n,)` of tag ids.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    total = scores[0] + start
    back = np.zeros(scores.shape, dtype=np.int64)
    for t in range(1, n):
        candidates = total[:, None] + transitions  # previous x next
        back[t] = candidates.argmax(axis=0)
        total = candidates.max(axis=0) + scores[t]
    path = np.empty(n, dtype=np.int64)
    path[-1] = total.argmax()
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path
