"""The NER recipe's linear-chain CRF against brute-force enumeration in
NumPy: log-likelihood, its gradient, compiled, trained, saved and
reloaded, on the current backend."""

import itertools

import keras
import numpy as np
import pytest
from support import grads, jit, to_numpy

from keras_selfattn import text
from recipes import crf, tagging

TAGS = ["O", "B-A", "I-A", "B-B", "I-B"]


def brute_force(emissions, tags, labelled, transitions, start):
    """Per row: log-likelihood of `tags`, and the marginal probability of
    each tag at each labelled position, by enumerating every path."""
    log_likelihoods, marginals = [], np.zeros(emissions.shape)
    for b in range(len(emissions)):
        chain = np.flatnonzero(labelled[b])
        if not len(chain):
            log_likelihoods.append(0.0)
            continue
        scores = emissions[b, chain]

        def score(path):
            total = start[path[0]] + scores[np.arange(len(path)), path].sum()
            return total + sum(
                transitions[a, c] for a, c in itertools.pairwise(path)
            )

        paths = list(itertools.product(range(len(start)), repeat=len(chain)))
        all_scores = np.array([score(np.array(p)) for p in paths])
        log_partition = np.logaddexp.reduce(all_scores)
        log_likelihoods.append(score(tags[b, chain]) - log_partition)
        weights = np.exp(all_scores - log_partition)
        for path, weight in zip(paths, weights):
            marginals[b, chain, list(path)] += weight
    return np.array(log_likelihoods), marginals


def random_case(seed, batch=3, length=6):
    rng = np.random.default_rng(seed)
    num_tags = len(TAGS)
    emissions = rng.normal(size=(batch, length, num_tags)).astype("float32")
    labelled = rng.random((batch, length)) < 0.7
    labelled[:, 0] = False  # like [CLS]
    labelled[-1] = False  # a row with no labelled token
    tags = np.where(labelled, rng.integers(0, num_tags, (batch, length)), -100)
    allowed, allowed_start = tagging.allowed_transitions(TAGS)
    transitions = np.where(
        allowed, rng.normal(size=allowed.shape), crf.FORBIDDEN
    ).astype("float32")
    start = np.where(
        allowed_start, rng.normal(size=num_tags), crf.FORBIDDEN
    ).astype("float32")
    return emissions, tags, labelled, transitions, start


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_likelihood_and_gradient_match_brute_force(seed):
    emissions, tags, labelled, transitions, start = random_case(seed)
    # Valid paths only, so the likelihood is not vanishingly small.
    tags[0, labelled[0]] = 0
    want, marginals = brute_force(emissions, tags, labelled, transitions, start)

    def log_likelihood(emissions):
        return crf.sequence_log_likelihood(
            emissions, tags, labelled, transitions, start
        )

    got = to_numpy(log_likelihood(emissions))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
    assert got[-1] == 0.0 and np.all(got[:-1] < 0)
    # d log p(tags) / d emissions = [gold tag] - marginal, at labelled
    # tokens only.
    gold = np.eye(len(TAGS))[np.where(labelled, tags, 0)] * labelled[..., None]
    (gradient,) = grads(log_likelihood, emissions)
    np.testing.assert_allclose(gradient, gold - marginals, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(jit(log_likelihood)(emissions)), got, atol=1e-5
    )


def test_layer_penalises_forbidden_moves_and_learns_transitions():
    allowed, allowed_start = tagging.allowed_transitions(TAGS)
    layer = crf.LinearChainCRF(allowed, allowed_start, name="crf")
    emissions = np.zeros((1, 3, len(TAGS)), "float32")
    assert to_numpy(layer(emissions)).tolist() == emissions.tolist()
    transitions, start = layer.transition_scores()
    assert np.all(np.isneginf(transitions[~allowed]))
    assert np.all(transitions[allowed] == 0.0)
    assert np.isneginf(start[TAGS.index("I-A")])
    # A forbidden gold path costs about the penalty.
    forbidden = np.array([[0, 2, 2]])  # O, I-A, I-A
    loss = to_numpy(layer.negative_log_likelihood(forbidden, emissions))
    assert loss[0] > -crf.FORBIDDEN / 2
    with pytest.raises(ValueError, match="expects 5 tag scores"):
        crf.LinearChainCRF(allowed, allowed_start)(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="allowed"):
        crf.LinearChainCRF(allowed[:2], allowed_start)


def tiny_tagger():
    """A CRFTagger whose only input feature is the token id."""
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(8, len(TAGS), name="tags")(ids)
    x = crf.LinearChainCRF(*tagging.allowed_transitions(TAGS), name="crf")(x)
    return crf.CRFTagger({"token_ids": ids}, x, name="tagger")


def test_tagger_trains_compiled_saves_and_reloads(tmp_path):
    # Token 1 begins an entity "A" and token 2 continues it; the CRF must
    # learn that I-A follows B-A, which no single emission shows: token 3
    # is B-A or I-A depending only on the tag before it.
    ids = np.array([[1, 3, 3, 0], [4, 3, 0, 0], [1, 2, 4, 4]] * 32)
    tags = np.array([[1, 2, 2, -100], [0, 1, -100, -100], [1, 2, 0, 0]] * 32)
    model = tiny_tagger()
    model.compile(
        optimizer=keras.optimizers.Adam(0.1),
        jit_compile=keras.backend.backend() != "torch",
    )
    history = model.fit(
        {"token_ids": ids}, tags, batch_size=32, epochs=30, verbose=0
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.1 * losses[0], losses
    transitions, start = model.get_layer("crf").transition_scores()
    b_a, i_a = TAGS.index("B-A"), TAGS.index("I-A")
    assert transitions[b_a, i_a] > 0 and transitions[i_a, i_a] > 0
    emissions = to_numpy(model.predict({"token_ids": ids[:3]}, verbose=0))
    decoded = [
        tagging.viterbi_decode(e[t != text.IGNORE_INDEX], transitions, start)
        for e, t in zip(emissions, tags[:3])
    ]
    assert [d.tolist() for d in decoded] == [[1, 2, 2], [0, 1], [1, 2, 0, 0]]

    path = tmp_path / "tagger.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, crf.CRFTagger)
    np.testing.assert_allclose(
        to_numpy(loaded.predict({"token_ids": ids[:3]}, verbose=0)),
        emissions,
        atol=1e-6,
    )
    for got, want in zip(
        loaded.get_layer("crf").transition_scores(), (transitions, start)
    ):
        np.testing.assert_array_equal(got, want)
