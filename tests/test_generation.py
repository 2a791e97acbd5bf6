"""CausalLM's cached forward pass and keras_selfattn.generation.

Oracles: the full causal pass (cached logits), an argmax loop over full
recomputation without a cache (greedy tokens), keras-hub's samplers
driving our `next`, and NumPy references for the sampling filters.
"""

import inspect

import keras
import numpy as np
import pytest

from keras_selfattn import (
    CausalLM,
    TokenAndPositionEmbedding,
    TransformerDecoder,
    generation,
)

# Coprime sizes, so that a transposed axis fails loudly.
VOCAB, WIDTH, HEADS, INTERMEDIATE, LAYERS = 23, 16, 4, 20, 2
MAX_LENGTH = 11
LENGTHS = (5, 3, 7)  # ragged prompts, right-padded; the shortest is 3
START = min(LENGTHS)
PROMPT_LENGTH = max(LENGTHS)
ATOL = 1e-5


def keras_hub_or_skip():
    return pytest.importorskip("keras_hub", reason="keras-hub not installed")


def make_decoder(num_heads=HEADS, **options):
    """One of our decoder blocks."""
    return TransformerDecoder(INTERMEDIATE, num_heads, **options)


def tied_lm(**decoder_options):
    """Learned absolute positions (the cached pass passes `start_index`),
    a final norm and the output projection tied to the embeddings."""
    return CausalLM(
        TokenAndPositionEmbedding(VOCAB, MAX_LENGTH, WIDTH),
        [make_decoder(**decoder_options) for _ in range(LAYERS)],
        final_norm=keras.layers.LayerNormalization(),
    )


def head_lm():
    """A plain embedding and a separate output layer, no final norm."""
    return CausalLM(
        keras.layers.Embedding(VOCAB, WIDTH),
        [make_decoder() for _ in range(LAYERS)],
        head=keras.layers.Dense(VOCAB),
    )


@pytest.fixture(scope="module")
def models():
    """Built once for the module: the compiled loops are kept per model."""
    keras.utils.set_random_seed(1)
    return {"tied": tied_lm(), "head": head_lm()}


@pytest.fixture(scope="module")
def lm(models):
    return models["tied"]


def random_tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(1, VOCAB, shape, "int32")


def prompts():
    """`(token_ids, padding_mask)`: `(3, 7)` right-padded prompts."""
    mask = np.arange(PROMPT_LENGTH)[None, :] < np.array(LENGTHS)[:, None]
    return np.where(mask, random_tokens(mask.shape, seed=1), 0), mask


def padded(token_ids, mask):
    """The prompts and mask padded to `MAX_LENGTH` (keras-hub's layout)."""
    pad = [(0, 0), (0, MAX_LENGTH - token_ids.shape[1])]
    return np.pad(token_ids, pad), np.pad(mask, pad)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def recomputed_greedy(model, token_ids, mask):
    """Greedy decoding by running the whole model, without a cache, over
    the tokens so far for every new one (at the full length: under the
    causal mask the positions after `index - 1` change nothing)."""
    tokens, mask = padded(token_ids, mask)
    for index in range(START, MAX_LENGTH):
        logits = numpy(model(tokens))[:, index - 1]
        tokens[:, index] = np.where(
            mask[:, index], tokens[:, index], logits.argmax(-1)
        )
    return tokens


# ---------------------------------------------------------- cached pass


@pytest.mark.parametrize("kind", ["tied", "head"])
def test_cached_decoding_equals_the_full_causal_pass(models, kind):
    model = models[kind]
    tokens = random_tokens((3, MAX_LENGTH))
    full = numpy(model(tokens))
    assert full.shape == (3, MAX_LENGTH, VOCAB) and full.dtype == np.float32

    hidden_states, cache = model.prefill(tokens, START)
    assert tuple(cache.shape) == (3, LAYERS, 2, MAX_LENGTH, HEADS, 4)
    assert tuple(hidden_states.shape) == (3, MAX_LENGTH, WIDTH)
    assert not numpy(hidden_states)[:, START:].any()
    stepped = []
    for index in range(START, MAX_LENGTH):
        logits, hidden, cache = model.next(tokens, cache, index)
        assert tuple(hidden.shape) == (3, WIDTH)
        stepped.append(numpy(logits))
    np.testing.assert_allclose(
        np.stack(stepped, 1), full[:, START - 1 : -1], atol=ATOL
    )

    # A prompt and then several tokens at once, from an int tensor index
    # (as long as the prompt: JAX compiles its eager ops once per shape).
    cache = model.initial_cache(3, MAX_LENGTH)
    logits, _, cache = model.call_with_cache(tokens[:, :START], cache, 0)
    np.testing.assert_allclose(numpy(logits), full[:, :START], atol=ATOL)
    index = keras.ops.convert_to_tensor(START, "int32")
    chunk = tokens[:, START : 2 * START]
    logits, _, _ = model.call_with_cache(chunk, cache, index)
    np.testing.assert_allclose(
        numpy(logits), full[:, START : 2 * START], atol=ATOL
    )


def test_right_padding_leaves_the_real_positions_alone(lm):
    token_ids, mask = padded(*prompts())
    full = numpy(lm(token_ids))
    masked = numpy(lm(token_ids, padding_mask=mask))
    np.testing.assert_allclose(masked[mask], full[mask], atol=ATOL)


def test_cache_shapes_must_agree_across_blocks():
    model = CausalLM(
        keras.layers.Embedding(VOCAB, WIDTH),
        [make_decoder(num_heads=4), make_decoder(num_heads=2)],
    )
    with pytest.raises(ValueError, match="same cache shape"):
        model.initial_cache(3, MAX_LENGTH)


def test_a_sliding_window_ring_cache_decodes_as_the_full_pass():
    parameters = inspect.signature(type(make_decoder()).__init__).parameters
    if "sliding_window" not in parameters:
        pytest.skip("the decoder block under test has no sliding window")
    keras.utils.set_random_seed(2)
    model = tied_lm(sliding_window=2)  # a 3-token prefill outgrows the ring
    tokens = random_tokens((3, MAX_LENGTH))
    full = numpy(model(tokens))
    _, cache = model.prefill(tokens, START)
    assert tuple(cache.shape) == (3, LAYERS, 2, 2, HEADS, 4)
    stepped = []
    for index in range(START, MAX_LENGTH):
        logits, _, cache = model.next(tokens, cache, index)
        stepped.append(numpy(logits))
    np.testing.assert_allclose(
        np.stack(stepped, 1), full[:, START - 1 : -1], atol=ATOL
    )
    token_ids, mask = prompts()
    out = model.generate(token_ids, MAX_LENGTH, padding_mask=mask)
    np.testing.assert_array_equal(
        out["token_ids"], recomputed_greedy(model, token_ids, mask)
    )


# ----------------------------------------------------------- our loop


def test_greedy_equals_argmax_over_full_recomputation(lm):
    token_ids, mask = prompts()
    out = lm.generate(token_ids, MAX_LENGTH, padding_mask=mask)
    expected = recomputed_greedy(lm, token_ids, mask)
    np.testing.assert_array_equal(out["token_ids"], expected)
    assert out["token_ids"].dtype == np.int32
    assert out["padding_mask"].all()
    # The same tokens uncompiled (the portable twin) and streamed.
    eager = lm.generate(
        token_ids, MAX_LENGTH, padding_mask=mask, jit_compile=False
    )
    np.testing.assert_array_equal(eager["token_ids"], expected)


def test_the_callback_streams_each_step_in_order(lm):
    token_ids, mask = prompts()
    seen = []
    out = generation.generate(
        lm,
        token_ids,
        MAX_LENGTH,
        padding_mask=mask,
        on_token=lambda step, tokens: seen.append((step, tokens.copy())),
    )
    steps = [step for step, _ in seen]
    assert steps == list(range(START, MAX_LENGTH))
    assert all(t.shape == (3,) and t.dtype == np.int32 for _, t in seen)
    streamed = np.stack([tokens for _, tokens in seen], axis=1)
    np.testing.assert_array_equal(out["token_ids"][:, START:], streamed)
    expected = recomputed_greedy(lm, token_ids, mask)
    np.testing.assert_array_equal(out["token_ids"], expected)


def test_top_k_1_sampling_equals_greedy(lm):
    token_ids, mask = prompts()
    greedy = lm.generate(token_ids, MAX_LENGTH, padding_mask=mask)
    sampled = lm.generate(
        token_ids,
        MAX_LENGTH,
        padding_mask=mask,
        strategy="sample",
        top_k=1,
        temperature=3.0,
        seed=5,
    )
    np.testing.assert_array_equal(sampled["token_ids"], greedy["token_ids"])


def test_sampling_with_a_seed_is_reproducible(lm):
    token_ids, mask = prompts()
    options = dict(
        padding_mask=mask,
        strategy="sample",
        temperature=1.5,
        top_k=9,
        top_p=0.9,
    )
    first = lm.generate(token_ids, MAX_LENGTH, seed=3, **options)
    again = lm.generate(token_ids, MAX_LENGTH, seed=3, **options)
    streamed = lm.generate(
        token_ids, MAX_LENGTH, seed=3, on_token=lambda *_: None, **options
    )
    other = lm.generate(token_ids, MAX_LENGTH, seed=4, **options)
    tokens = first["token_ids"]
    np.testing.assert_array_equal(again["token_ids"], tokens)
    np.testing.assert_array_equal(streamed["token_ids"], tokens)
    assert (other["token_ids"] != tokens).any()
    assert ((tokens >= 0) & (tokens < VOCAB)).all()
    np.testing.assert_array_equal(
        tokens[:, :PROMPT_LENGTH][mask], token_ids[mask]
    )
    # Two generators seeded alike draw alike.
    seeded = [
        lm.generate(
            token_ids,
            MAX_LENGTH,
            seed=keras.random.SeedGenerator(7),
            **options,
        )["token_ids"]
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*seeded)


def test_stop_tokens_stop_rows_and_then_the_loop(lm):
    token_ids, mask = prompts()
    free = lm.generate(token_ids, MAX_LENGTH, padding_mask=mask)["token_ids"]
    # A token each row generates (rows may stop earlier on another's).
    stop_ids = [int(free[row, LENGTHS[row] + 1]) for row in range(3)]
    steps = []
    out = lm.generate(
        token_ids,
        MAX_LENGTH,
        padding_mask=mask,
        stop_token_ids=stop_ids,
        pad_token_id=VOCAB,  # no token's id: padding shows
        on_token=lambda step, tokens: steps.append(step),
    )
    compiled = lm.generate(
        token_ids,
        MAX_LENGTH,
        padding_mask=mask,
        stop_token_ids=stop_ids,
        pad_token_id=VOCAB,
    )
    expected_mask = np.ones_like(mask, shape=free.shape)
    for row in range(3):
        generated = np.arange(MAX_LENGTH) >= LENGTHS[row]
        ends = np.flatnonzero(generated & np.isin(free[row], stop_ids))
        expected_mask[row, ends[0] + 1 :] = False
    ends = [
        np.flatnonzero(~row)[0] - 1 for row in expected_mask if not row.all()
    ]
    assert len(ends) == 3  # every row stops
    assert steps == list(range(START, max(ends) + 1))
    for result in (out, compiled):
        np.testing.assert_array_equal(result["padding_mask"], expected_mask)
        np.testing.assert_array_equal(
            result["token_ids"], np.where(expected_mask, free, VOCAB)
        )


# ------------------------------------------------- keras-hub's samplers


def test_keras_hub_samplers_drive_the_model(lm):
    keras_hub = keras_hub_or_skip()
    token_ids, mask = prompts()
    prompt, full_mask = padded(token_ids, mask)

    def run(sampler):
        hidden_states, cache = lm.prefill(prompt, START)
        return numpy(
            sampler(
                next=lm.next,
                prompt=keras.ops.convert_to_tensor(prompt),
                cache=cache,
                index=START,
                mask=keras.ops.convert_to_tensor(full_mask),
                hidden_states=hidden_states,
            )
        )

    ours = lm.generate(token_ids, MAX_LENGTH, padding_mask=mask)
    greedy = run(keras_hub.samplers.GreedySampler())
    np.testing.assert_array_equal(greedy, ours["token_ids"])
    for sampler in (
        keras_hub.samplers.TopKSampler(k=5, seed=1),
        keras_hub.samplers.TopPSampler(p=0.9, seed=1),
        keras_hub.samplers.BeamSampler(num_beams=2),
    ):
        tokens = run(sampler)
        assert tokens.shape == (3, MAX_LENGTH), type(sampler).__name__
        assert ((tokens >= 0) & (tokens < VOCAB)).all()
        np.testing.assert_array_equal(tokens[full_mask], prompt[full_mask])


# ------------------------------------------------------ sampling filters


def test_filters_match_numpy():
    logits = np.random.default_rng(3).normal(size=(5, VOCAB)) * 2
    logits = logits.astype("float32")
    kept = numpy(generation.top_k_logits(logits, 4)) > -1e30
    expected = logits >= np.sort(logits, axis=-1)[:, -4:-3]
    np.testing.assert_array_equal(kept, expected)

    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    for p in (0.05, 0.5, 0.9):
        kept = numpy(generation.top_p_logits(logits, p)) > -1e30
        order = np.argsort(-probabilities, axis=-1)
        ordered = np.take_along_axis(probabilities, order, -1)
        count = ((np.cumsum(ordered, -1) - ordered) < p).sum(-1)
        expected = np.zeros_like(kept)
        for row in range(len(logits)):
            expected[row, order[row, : count[row]]] = True
        np.testing.assert_array_equal(kept, expected)

    uniform = np.linspace(0.0, 0.999, 5).astype("float32")
    tokens = numpy(generation.sample_from_uniform(logits, uniform))
    cumulative = np.cumsum(probabilities, -1)
    expected = (cumulative < (1 - uniform[:, None])).sum(-1)
    np.testing.assert_array_equal(tokens, expected)


# ------------------------------------------------------------- saving


@pytest.mark.parametrize("kind", ["tied", "head"])
def test_keras_file_round_trip_gives_the_same_logits(models, kind, tmp_path):
    model = models[kind]
    path = tmp_path / "lm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CausalLM)
    tokens = random_tokens((3, MAX_LENGTH))
    np.testing.assert_array_equal(numpy(loaded(tokens)), numpy(model(tokens)))
    _, cache = loaded.prefill(tokens, START)
    logits, _, _ = loaded.next(tokens, cache, START)
    np.testing.assert_allclose(
        numpy(logits), numpy(model(tokens))[:, START - 1], atol=ATOL
    )


# ------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "options, name",
    [
        ({"strategy": "beam"}, "strategy"),
        ({"max_length": PROMPT_LENGTH - 1}, "max_length"),
        ({"strategy": "sample", "top_p": 0.0}, "top_p"),
        ({"strategy": "sample", "top_p": 1.5}, "top_p"),
        ({"strategy": "sample", "top_k": 0}, "top_k"),
        ({"strategy": "sample", "temperature": 0.0}, "temperature"),
        ({"strategy": "sample", "temperature": -1.0}, "temperature"),
        ({"top_k": 3}, "top_k"),
        ({"seed": "a"}, "seed"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"padding_mask": np.array([[0, 1, 1]] * 3, bool)}, "padding_mask"),
    ],
)
def test_bad_arguments_name_the_argument(lm, options, name):
    token_ids = random_tokens((3, PROMPT_LENGTH))
    if "padding_mask" in options:
        token_ids = token_ids[:, :3]
    options = {"max_length": MAX_LENGTH, **options}
    with pytest.raises(ValueError, match=f"`{name}`"):
        generation.generate(lm, token_ids, **options)


def test_bad_model_arguments_name_the_argument():
    with pytest.raises(ValueError, match="`decoders`"):
        CausalLM(keras.layers.Embedding(VOCAB, WIDTH), [])
    with pytest.raises(ValueError, match="`head=None`"):
        CausalLM(
            keras.Sequential([keras.layers.Embedding(VOCAB, WIDTH)]),
            [make_decoder()],
        )
    with pytest.raises(ValueError, match="`max_length`"):
        head_lm().initial_cache(3, 0)
