"""CoNLL entity scoring (against seqeval), valid-transition decoding and
the character ids of the NER recipe. Pure NumPy: the same on every
backend."""

import itertools

import numpy as np
import pytest
from seqeval import metrics as seqeval_metrics

from recipes import tagger_inputs, tagging

pytestmark = pytest.mark.once

TAGS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
        "B-PER", "I-PER"]  # fmt: skip

# (true, predicted) sentence lists; each case is one edge of the CoNLL
# reading of IOB tags.
EDGE_CASES = {
    "adjacent entities of one type": (
        [["B-PER", "B-PER", "I-PER", "O"]],
        [["B-PER", "I-PER", "I-PER", "O"]],
    ),
    "I- after O starts an entity": (
        [["O", "B-LOC", "I-LOC", "O"]],
        [["O", "I-LOC", "I-LOC", "O"]],
    ),
    "B- of another type splits": (
        [["B-ORG", "I-ORG", "B-LOC"]],
        [["B-ORG", "I-ORG", "I-LOC"]],
    ),
    "I- of another type splits": (
        [["B-ORG", "I-PER", "O"]],
        [["B-ORG", "I-ORG", "O"]],
    ),
    "entities at sentence end": (
        [["O", "B-MISC"], ["B-PER", "I-PER"]],
        [["O", "B-MISC"], ["B-PER", "O"]],
    ),
    "entity at sentence start, I- first": (
        [["I-PER", "O"], ["B-LOC"]],
        [["B-PER", "O"], ["I-LOC"]],
    ),
    "no predicted entities": (
        [["B-PER", "O"], ["O", "B-LOC"]],
        [["O", "O"], ["O", "O"]],
    ),
    "no true entities": (
        [["O", "O", "O"]],
        [["B-ORG", "O", "I-ORG"]],
    ),
    "entities do not cross sentences": (
        [["O", "B-PER"], ["I-PER", "O"]],
        [["O", "B-PER"], ["B-PER", "O"]],
    ),
}


def seqeval_scores(true, predicted):
    report = seqeval_metrics.classification_report(
        true, predicted, output_dict=True, zero_division=0
    )
    per_type = {
        kind: (r["precision"], r["recall"], r["f1-score"], r["support"])
        for kind, r in report.items()
        if not kind.endswith(" avg")
    }
    micro = (
        seqeval_metrics.precision_score(true, predicted, zero_division=0),
        seqeval_metrics.recall_score(true, predicted, zero_division=0),
        seqeval_metrics.f1_score(true, predicted, zero_division=0),
    )
    return micro, per_type


def assert_agrees_with_seqeval(true, predicted):
    ours = tagging.entity_scores(true, predicted)
    micro, per_type = seqeval_scores(true, predicted)
    np.testing.assert_allclose(
        [ours["precision"], ours["recall"], ours["f1"]], micro, atol=1e-12
    )
    # seqeval lists the types of the true entities (and of predicted ones
    # with zero support); compare every type it reports.
    for kind, expected in per_type.items():
        got = ours["per_type"][kind]
        np.testing.assert_allclose(
            [got["precision"], got["recall"], got["f1"], got["support"]],
            expected,
            atol=1e-12,
            err_msg=kind,
        )
    true_kinds = {k for _, k, *_ in _entities(true)}
    assert true_kinds <= set(ours["per_type"])


def _entities(sentences):
    return [
        (i, *span)
        for i, tags in enumerate(sentences)
        for span in tagging.entity_spans(tags)
    ]


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_entity_scores_agree_with_seqeval_on_edge_cases(case):
    assert_agrees_with_seqeval(*EDGE_CASES[case])


def test_entity_scores_agree_with_seqeval_on_random_tags():
    rng = np.random.default_rng(7)
    for _ in range(200):
        lengths = rng.integers(1, 9, size=rng.integers(1, 5))
        true = [list(rng.choice(TAGS, n)) for n in lengths]
        predicted = [
            [t if rng.random() < 0.6 else str(rng.choice(TAGS)) for t in s]
            for s in true
        ]
        assert_agrees_with_seqeval(true, predicted)


def test_entity_spans_edge_cases_by_hand():
    assert tagging.entity_spans(["B-PER", "B-PER", "I-PER"]) == [
        ("PER", 0, 1),
        ("PER", 1, 3),
    ]
    assert tagging.entity_spans(["O", "I-LOC", "I-LOC"]) == [("LOC", 1, 3)]
    assert tagging.entity_spans(["B-ORG", "I-LOC"]) == [
        ("ORG", 0, 1),
        ("LOC", 1, 2),
    ]
    assert tagging.entity_spans(["O", "O", "B-MISC"]) == [("MISC", 2, 3)]
    assert tagging.entity_spans([]) == []


def test_entity_scores_known_numbers_and_errors():
    scores = tagging.entity_scores(
        [["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]]
    )
    assert (scores["precision"], scores["recall"]) == (0.5, 0.5)
    assert scores["support"] == 2
    assert scores["per_type"]["ORG"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="same number of sentences"):
        tagging.entity_scores([["O"]], [])
    with pytest.raises(ValueError, match="Sentence 0 has 1 true tags"):
        tagging.entity_scores([["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="Unsupported NER tag 'E-PER'"):
        tagging.entity_scores([["E-PER"]], [["O"]])


def _valid(path, allowed, allowed_start):
    return allowed_start[path[0]] and all(
        allowed[a, b] for a, b in zip(path[:-1], path[1:])
    )


def test_allowed_transitions():
    allowed, allowed_start = tagging.allowed_transitions(TAGS)
    name = TAGS.index
    assert not allowed_start[name("I-PER")] and allowed_start[name("B-PER")]
    assert allowed[name("B-PER"), name("I-PER")]
    assert allowed[name("I-PER"), name("I-PER")]
    assert not allowed[name("O"), name("I-PER")]
    assert not allowed[name("B-LOC"), name("I-PER")]
    assert allowed[name("I-LOC"), name("B-PER")]
    assert allowed[:, name("O")].all()


@pytest.mark.parametrize("learned", [False, True])
def test_viterbi_is_the_best_valid_path_by_brute_force(learned):
    """Only IOB2 constraints (a softmax tagger), or learned transition and
    start scores on top of them (a CRF)."""
    tags = ["O", "B-A", "I-A", "B-B", "I-B"]
    allowed, allowed_start = tagging.allowed_transitions(tags)
    transitions, start = tagging.constraint_scores(tags)
    rng = np.random.default_rng(3)
    if learned:
        transitions = transitions + rng.normal(size=transitions.shape)
        start = start + rng.normal(size=start.shape)

    def total(scores, path):
        moves = sum(transitions[a, b] for a, b in zip(path[:-1], path[1:]))
        return (
            start[path[0]]
            + scores[np.arange(len(path)), list(path)].sum()
            + moves
        )

    for n in (1, 2, 3, 4):
        for _ in range(20):
            scores = np.log(rng.dirichlet(np.ones(5), size=n))
            valid = [
                p
                for p in itertools.product(range(5), repeat=n)
                if _valid(p, allowed, allowed_start)
            ]
            best = max(valid, key=lambda p: total(scores, p))
            path = tagging.viterbi_decode(scores, transitions, start)
            assert tuple(path.tolist()) == best
    empty = tagging.viterbi_decode(np.zeros((0, 5)), transitions, start)
    assert empty.shape == (0,)


def test_viterbi_repairs_an_invalid_argmax():
    probs = np.full((3, len(TAGS)), 0.01)
    probs[0, TAGS.index("O")] = 0.9
    probs[1, TAGS.index("I-PER")] = 0.5  # argmax: O, I-PER, I-PER
    probs[1, TAGS.index("B-PER")] = 0.4
    probs[2, TAGS.index("I-PER")] = 0.9
    path = tagging.viterbi_decode(
        np.log(probs), *tagging.constraint_scores(TAGS)
    )
    assert [TAGS[i] for i in path] == ["O", "B-PER", "I-PER"]


def test_char_ids():
    assert tagger_inputs.char_ids("Ab", 4).tolist() == [66, 99, 0, 0]
    assert tagger_inputs.char_ids("é", 3).tolist() == [0xC3 + 1, 0xA9 + 1, 0]
    long = tagger_inputs.char_ids("abcdefgh", 4)  # head and tail kept
    assert bytes(int(i) - 1 for i in long) == b"abgh"
    too_long = tagger_inputs.char_ids("x" * 300, 20)
    assert too_long.max() < tagger_inputs.NUM_CHAR_IDS


def test_token_char_ids_follow_word_ids():
    word_ids = np.array([[-1, 0, 1, 1, 1, -1, -1], [-1, 0, -1, -1, -1, -1, -1]])
    sentences = [["EU", "Frankfurter"], ["x"]]
    chars = tagger_inputs.token_char_ids(word_ids, sentences, 6)
    assert bytes(int(i) - 1 for i in chars[0, 1] if i) == b"EU"
    assert (chars[0, 2] == chars[0, 4]).all()
    assert bytes(int(i) - 1 for i in chars[0, 3]) == b"Frater"
    assert not chars[0, [0, 5, 6]].any() and not chars[1, 2:].any()
