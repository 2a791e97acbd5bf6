"""A `CausalLM`'s decode step (`decode_step_model`) exported as ONNX on
the backend (`recipes.exporting.export_decode_step`: tf2onnx, jax2onnx,
torch's ONNX export) and served without Keras (`recipes.lm_serving`,
onnxruntime and NumPy): the artifact's logits and cache match
`call_with_cache` to 1e-4, and its greedy tokens equal
`keras_selfattn.generation.generate`'s, stop tokens and all.

One small LLaMA-style model (rotary positions, grouped key/value heads,
RMS norms, a gated feed-forward network, the output projection tied to
the embeddings) is exported once for the module.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest
from support import BACKEND, ROOT

from keras_selfattn import CausalLM, TransformerDecoder, generation
from recipes import exporting, lm_serving

# keras' exporters warn about their own internals.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning",
)

# Coprime sizes where the layers allow, so that a transposed axis fails.
VOCAB, WIDTH, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 23, 16, 20, 2, 4, 2
MAX_LENGTH = 10
LENGTHS = (4, 2, 5)  # ragged prompts, right-padded
ATOL = 1e-4


def build_lm():
    return CausalLM(
        keras.layers.Embedding(VOCAB, WIDTH),
        [
            TransformerDecoder(
                INTERMEDIATE,
                HEADS,
                num_key_value_heads=KV_HEADS,
                rotary_max_wavelength=10_000,
                normalize_first=True,
                normalization="rms_norm",
                gated_feedforward=True,
                activation="silu",
                use_bias=False,
            )
            for _ in range(LAYERS)
        ],
        final_norm=keras.layers.LayerNormalization(rms_scaling=True),
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`(lm, session)`: the model and its exported step in onnxruntime."""
    keras.utils.set_random_seed(1)
    lm = build_lm()
    directory = tmp_path_factory.mktemp("decode_step")
    path = exporting.export_decode_step(lm, directory, MAX_LENGTH)
    assert path == directory / lm_serving.DECODE_STEP_ARTIFACT
    return lm, lm_serving.load_decode_step(path)


def prompts():
    """`(token_ids, padding_mask)`: `(3, 5)` right-padded prompts."""
    mask = np.arange(max(LENGTHS))[None, :] < np.array(LENGTHS)[:, None]
    ids = np.random.default_rng(2).integers(1, VOCAB, mask.shape, "int32")
    return np.where(mask, ids, 0), mask


def keras_step(lm, token_ids, cache, index):
    logits, _, cache = lm.call_with_cache(
        keras.ops.convert_to_tensor(token_ids),
        keras.ops.convert_to_tensor(cache),
        index,
    )
    return keras.ops.convert_to_numpy(logits), keras.ops.convert_to_numpy(cache)


def test_steps_match_call_with_cache(exported):
    lm, session = exported
    step = lm_serving.DecodeStep(session)
    assert step.max_length == MAX_LENGTH
    assert step.cache_shape == tuple(lm.initial_cache(1, MAX_LENGTH).shape[1:])
    # torch's export fixes the batch (one row by default).
    assert step.batch_size == (1 if BACKEND == "torch" else None)
    assert step.tokens_per_call == 1
    check_steps(lm, step, [(0, 1), (1, 2), (2, 3)])


def check_steps(lm, step, feeds):
    """Feed the prompts' tokens `first:end` for each `(first, end)` of
    `feeds` in turn to the artifact's `step` (on the caches it returns)
    and to `call_with_cache` (on its own): the logits and caches agree."""
    rows = step.batch_size or 3
    tokens = prompts()[0][:rows]
    cache = keras_cache = step.initial_cache(rows)
    for first, end in feeds:
        logits, cache = step(tokens[:, first:end], cache, first)
        expected, keras_cache = keras_step(
            lm, tokens[:, first:end], keras_cache, first
        )
        assert logits.shape == (rows, end - first, VOCAB)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)
        np.testing.assert_allclose(cache, keras_cache, atol=ATOL, rtol=0)


def test_greedy_tokens_equal_generate(exported):
    check_greedy_tokens(*exported)


def check_greedy_tokens(lm, session):
    token_ids, mask = prompts()
    expected = generation.generate(
        lm, token_ids, MAX_LENGTH, padding_mask=mask, strategy="greedy"
    )
    served = lm_serving.greedy_tokens(session, token_ids, padding_mask=mask)
    np.testing.assert_array_equal(served["token_ids"], expected["token_ids"])
    np.testing.assert_array_equal(
        served["padding_mask"], expected["padding_mask"]
    )
    # A stop token the model generates in the first row: rows stop and
    # are padded as `generate` pads them.
    stop = int(expected["token_ids"][0, LENGTHS[0] + 1])
    expected = generation.generate(
        lm,
        token_ids,
        MAX_LENGTH,
        padding_mask=mask,
        strategy="greedy",
        stop_token_ids=[stop],
        pad_token_id=VOCAB,
    )
    assert not expected["padding_mask"].all()
    served = lm_serving.greedy_tokens(
        session,
        token_ids,
        padding_mask=mask,
        stop_token_ids=[stop],
        pad_token_id=VOCAB,
    )
    np.testing.assert_array_equal(served["token_ids"], expected["token_ids"])
    np.testing.assert_array_equal(
        served["padding_mask"], expected["padding_mask"]
    )


def test_a_prompt_fills_the_cache_in_one_call(tmp_path):
    keras.utils.set_random_seed(1)
    lm = build_lm()
    if BACKEND != "tensorflow":
        with pytest.raises(ValueError, match="sequence_length=None"):
            exporting.export_decode_step(
                lm, tmp_path, MAX_LENGTH, sequence_length=None
            )
        return
    path = exporting.export_decode_step(
        lm, tmp_path, MAX_LENGTH, sequence_length=None
    )
    session = lm_serving.load_decode_step(path)
    step = lm_serving.DecodeStep(session)
    assert step.tokens_per_call is None
    check_steps(lm, step, [(0, 3), (3, 4)])  # a prefill, then a step
    check_greedy_tokens(lm, session)


def test_greedy_tokens_checks_its_arguments(exported):
    _, session = exported
    token_ids, _ = prompts()
    with pytest.raises(ValueError, match="max_length=11"):
        lm_serving.greedy_tokens(session, token_ids, MAX_LENGTH + 1)
    with pytest.raises(ValueError, match="max_length=4"):
        lm_serving.greedy_tokens(session, token_ids, 4)
    with pytest.raises(ValueError, match="padding_mask"):
        lm_serving.greedy_tokens(
            session, token_ids, padding_mask=token_ids[:, ::-1] > 0
        )
    with pytest.raises(ValueError, match="session="):
        lm_serving.greedy_tokens(object(), token_ids)


def test_decode_step_model_shares_the_weights():
    lm = build_lm()
    step = lm.decode_step_model(MAX_LENGTH, batch_size=2)
    assert [id(w) for w in step.weights] == [id(w) for w in lm.weights]
    # The tied projection reads the embedding matrix at every call.
    embeddings = lm.token_embedding.embeddings
    embeddings.assign(keras.ops.convert_to_numpy(embeddings) * 2.0)
    token_ids = prompts()[0][:2, :3]
    cache = np.zeros(lm.initial_cache(2, MAX_LENGTH).shape, "float32")
    outputs = step(
        {
            "token_ids": token_ids,
            "cache": cache,
            "cache_update_index": np.array(0, "int32"),
        }
    )
    outputs = keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)
    logits, next_cache = keras_step(lm, token_ids, cache, 0)
    np.testing.assert_allclose(outputs["logits"], logits, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        outputs["next_cache"], next_cache, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"max_length": 0}, "max_length=0"),
        ({"max_length": 10, "batch_size": 1.5}, "batch_size=1.5"),
        ({"max_length": 10, "sequence_length": 0}, "sequence_length=0"),
    ],
)
def test_decode_step_model_checks_its_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_lm().decode_step_model(**arguments)


@pytest.mark.once
def test_serving_imports_no_keras():
    script = (
        "import sys, recipes.lm_serving\n"
        "frameworks = ('keras', 'tensorflow', 'jax', 'torch')\n"
        "print([name for name in frameworks if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
