"""LLaMA from GGUF files (`keras_selfattn.pretrained.llama`): a tiny
random model written as llama.cpp's converter writes it (query and key
rows permuted, some tensors quantized, a byte-level BPE vocabulary with
control tokens), loaded by `load_llama` and by Hugging Face transformers,
the oracle: the same logits, greedy tokens and token ids; and the errors
for files that are not LLaMA GGUF checkpoints."""

import json

import gguf
import numpy as np
import pytest
import tokenizers
from support import TOKENIZER_TEXTS, right_padded, to_numpy, torch_outputs
from tokenizers import models, pre_tokenizers, trainers

from keras_selfattn import prompts
from keras_selfattn.pretrained.gguf import (
    gguf_tokenizer,
    read_gguf,
    read_gguf_metadata,
)
from keras_selfattn.pretrained.llama import (
    LlamaConfig,
    load_llama,
    unpermute_rotary,
)

# Query heads, key/value heads and width differ (a mixed-up head count
# fails); the feed-forward width, 96, is three Q8_0 blocks of 32.
CONFIG = LlamaConfig(
    vocabulary_size=331,
    num_layers=2,
    num_query_heads=6,
    num_key_value_heads=2,
    hidden_dim=48,
    intermediate_dim=96,
    rope_max_wavelength=10000.0,
    layer_norm_epsilon=1e-5,
    max_sequence_length=64,
)
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED_TOKENS = ["<think>"]
BOS_ID, EOS_ID = 1, 2  # <|im_start|>, <|im_end|>, as SmolLM2's file
# SmolLM2's template, shortened.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'"
    " + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Tensors stored quantized (the rest as float32): both readers dequantize
# them, so they agree; Q8_0 and Q4_1 blocks are 32 values along a row.
QUANTIZED = {
    "blk.0.ffn_down.weight": gguf.GGMLQuantizationType.Q8_0,
    "blk.1.ffn_down.weight": gguf.GGMLQuantizationType.Q4_1,
    "token_embd.weight": gguf.GGMLQuantizationType.F16,
}
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "It's a small model: it doesn't know much, but it'll learn.",
    "Numbers like 1234 and 3.14 appear in text, as do emails and URLs.",
    "def square(x):\n    return x * x\n",
    "Café, naïve, résumé — 東京 and 😀 are Unicode.",
] * 3
ATOL = 1e-4  # float32 logits of magnitude ~10


# ------------------------------------------------------ writing the file


def train_vocabulary():
    """`(tokens, token types, merges)` of a byte-level BPE trained on
    `CORPUS`, spelled as llama.cpp writes them (the special tokens first,
    as plain text)."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=CONFIG.vocabulary_size,
        special_tokens=CONTROL_TOKENS + USER_DEFINED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    assert len(tokens) == CONFIG.vocabulary_size
    types = [
        gguf.TokenType.CONTROL
        if token in CONTROL_TOKENS
        else gguf.TokenType.USER_DEFINED
        if token in USER_DEFINED_TOKENS
        else gguf.TokenType.NORMAL
        for token in tokens
    ]
    merges = [" ".join(pair) for pair in model["merges"]]
    return tokens, types, merges


def permute_rotary(weight, num_heads):
    """llama.cpp's converter (`LlamaModel.permute`): per head, the rows of
    the two rotated halves interleaved."""
    rows, columns = weight.shape
    return (
        weight.reshape(num_heads, 2, rows // num_heads // 2, columns)
        .swapaxes(1, 2)
        .reshape(rows, columns)
    )


def random_tensors(config, seed=0):
    """GGUF-named tensors in transformers' layout (`(out, in)`, rotary
    halves), spread so that every weight moves the logits."""
    rng = np.random.default_rng(seed)
    h, ffn = config.hidden_dim, config.intermediate_dim
    q_rows = config.num_query_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim

    def normal(scale, *shape):
        return rng.normal(0.0, scale, shape).astype("float32")

    tensors = {
        "token_embd.weight": normal(1.0, config.vocabulary_size, h),
        "output_norm.weight": 1.0 + normal(0.2, h),
    }
    for i in range(config.num_layers):
        tensors.update(
            {
                f"blk.{i}.attn_q.weight": normal(0.2, q_rows, h),
                f"blk.{i}.attn_k.weight": normal(0.2, kv_rows, h),
                f"blk.{i}.attn_v.weight": normal(0.3, kv_rows, h),
                f"blk.{i}.attn_output.weight": normal(0.3, h, q_rows),
                f"blk.{i}.ffn_gate.weight": normal(0.3, ffn, h),
                f"blk.{i}.ffn_up.weight": normal(0.3, ffn, h),
                f"blk.{i}.ffn_down.weight": normal(0.2, h, ffn),
                f"blk.{i}.attn_norm.weight": 1.0 + normal(0.2, h),
                f"blk.{i}.ffn_norm.weight": 1.0 + normal(0.2, h),
            }
        )
    return tensors


def write_gguf(
    path,
    tensors,
    vocabulary,
    config=CONFIG,
    architecture="llama",
    pre="smollm",
):
    """Write a LLaMA GGUF file as llama.cpp's `convert_hf_to_gguf.py` does:
    its metadata keys, the query and key rows permuted, the `QUANTIZED`
    tensors quantized."""
    tokens, types, merges = vocabulary
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_sequence_length)
    writer.add_embedding_length(config.hidden_dim)
    writer.add_feed_forward_length(config.intermediate_dim)
    writer.add_head_count(config.num_query_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_max_wavelength)
    writer.add_layer_norm_rms_eps(config.layer_norm_epsilon)
    writer.add_vocab_size(config.vocabulary_size)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, array in tensors.items():
        if name.endswith("attn_q.weight"):
            array = permute_rotary(array, config.num_query_heads)
        elif name.endswith("attn_k.weight"):
            array = permute_rotary(array, config.num_key_value_heads)
        kind = QUANTIZED.get(name)
        if kind is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(
                name, gguf.quants.quantize(array, kind), raw_dtype=kind
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def vocabulary():
    return train_vocabulary()


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, vocabulary):
    path = tmp_path_factory.mktemp("tiny_llama") / "tiny-llama.gguf"
    return write_gguf(path, random_tensors(CONFIG), vocabulary)


@pytest.fixture(scope="module")
def ours(gguf_file):
    """Our `(causal_lm, tokenizer)`, loaded once."""
    return load_llama(gguf_file)


# ------------------------------------------------------------- the model


@pytest.mark.once  # no backend
def test_the_file_holds_what_llama_cpp_writes(gguf_file):
    """The writer above quantizes and permutes (else the parity tests
    below would not exercise dequantizing and unpermuting)."""
    reader = gguf.GGUFReader(str(gguf_file))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert {n: types[n] for n in QUANTIZED} == QUANTIZED
    _, tensors = read_gguf(gguf_file)
    original = random_tensors(CONFIG)
    name = "blk.0.ffn_down.weight"  # Q8_0: 8 bits per value, one scale
    scale = np.abs(original[name]).max()
    np.testing.assert_allclose(tensors[name], original[name], atol=scale / 100)
    assert not np.array_equal(tensors[name], original[name])
    name = "blk.1.attn_k.weight"
    np.testing.assert_array_equal(
        tensors[name], permute_rotary(original[name], 2)
    )


def test_logits_match_transformers(ours, reference_model):
    causal_lm, tokenizer = ours
    ids, mask = right_padded(
        tokenizer,
        [
            "The capital of France is Paris.",
            "<|im_start|>user\nIt's 3.14, naïve 東京!<|im_end|>\n",
        ],
    )
    logits = to_numpy(causal_lm({"token_ids": ids, "padding_mask": mask}))
    expected = torch_outputs(reference_model, ids, mask).logits.numpy()
    assert logits.shape == (*ids.shape, CONFIG.vocabulary_size)
    assert np.abs(expected[mask]).max() > 5.0, "logits too small to tell"
    np.testing.assert_allclose(logits[mask], expected[mask], rtol=0, atol=ATOL)


def test_greedy_generation_matches_transformers(ours, reference_model):
    import torch

    causal_lm, tokenizer = ours
    ids, mask = right_padded(
        tokenizer, ["The quick brown fox", "Paris is the capital of"]
    )
    max_length = ids.shape[1] + 6
    out = causal_lm.generate(
        ids, max_length, padding_mask=mask, stop_token_ids=[EOS_ID]
    )
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
        assert got == expected, row


# ------------------------------------------------------------- tokenizer


@pytest.mark.once  # no backend
def test_tokenizer_matches_transformers(gguf_file, reference_tokenizer):
    metadata = read_gguf_metadata(gguf_file)
    tokenizer = gguf_tokenizer(metadata)
    assert tokenizer.get_vocab_size() == CONFIG.vocabulary_size
    chat = prompts.apply_chat_template(
        metadata["tokenizer.chat_template"],
        [{"role": "user", "content": "What is 2 + 2?"}],
    )
    assert chat == reference_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    for text in [*TOKENIZER_TEXTS, chat, "a<think>b</think>"]:
        ids = tokenizer.encode(text).ids
        assert ids == reference_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
        assert tokenizer.decode(ids) == reference_tokenizer.decode(
            ids, skip_special_tokens=True
        )
    # Control tokens stay whole and count as special; <think> stays whole.
    assert tokenizer.encode("<|im_start|>").ids == [BOS_ID]
    assert tokenizer.encode("<think>").ids == [3]
    assert tokenizer.decode([BOS_ID, 3]) == "<think>"


@pytest.mark.once  # no backend
def test_unpermute_rotary_inverts_llama_cpp_permutation():
    # One head of 8 rows: the file interleaves the halves [0..4), [4..8).
    rows = np.arange(8, dtype="float32")[:, None]
    assert permute_rotary(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert unpermute_rotary(rows, 1)[:, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    rng = np.random.default_rng(0)
    for num_heads, head_dim, columns in [(6, 8, 5), (2, 8, 7), (3, 2, 1)]:
        weight = rng.normal(size=(num_heads * head_dim, columns))
        permuted = permute_rotary(weight, num_heads)
        np.testing.assert_array_equal(
            unpermute_rotary(permuted, num_heads), weight
        )
        # Heads stay apart: head j's rows come from head j's rows only.
        for head in range(num_heads):
            block = slice(head * head_dim, (head + 1) * head_dim)
            assert sorted(map(tuple, permuted[block])) == sorted(
                map(tuple, weight[block])
            )


# ---------------------------------------------------------------- errors


@pytest.mark.once  # fails before any backend computes
def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a GGUF file, just some bytes" * 4)
    with pytest.raises(ValueError, match="`path` must be a GGUF file"):
        load_llama(path)
    with pytest.raises(ValueError, match="`name_or_path`.*no-such-model"):
        load_llama("no-such-model")
    with pytest.raises(ValueError, match="`name_or_path`"):
        load_llama(tmp_path / "missing.gguf")


@pytest.mark.once
def test_another_architecture_is_refused(tmp_path, vocabulary):
    path = write_gguf(
        tmp_path / "qwen.gguf",
        random_tensors(CONFIG),
        vocabulary,
        architecture="qwen2",
    )
    with pytest.raises(ValueError, match="general.architecture='qwen2'"):
        load_llama(path)


@pytest.mark.once
def test_a_missing_tensor_is_listed(tmp_path, vocabulary):
    tensors = random_tensors(CONFIG)
    del tensors["blk.1.ffn_gate.weight"]
    path = write_gguf(tmp_path / "missing.gguf", tensors, vocabulary)
    with pytest.raises(ValueError, match=r"Missing: \['blk.1.ffn_gate.weight'"):
        load_llama(path)


@pytest.mark.once
def test_an_unknown_pre_tokenizer_is_refused(tmp_path, vocabulary):
    path = write_gguf(
        tmp_path / "pre.gguf", random_tensors(CONFIG), vocabulary, pre="qwen2"
    )
    with pytest.raises(ValueError, match="tokenizer.ggml.pre`='qwen2'"):
        gguf_tokenizer(read_gguf_metadata(path))
    with pytest.raises(ValueError, match="tokenizer.ggml.pre`='qwen2'"):
        load_llama(path)


# ------------------------------------------------------------ the recipe


@pytest.mark.once  # fresh processes; their backend is the suite's first
def test_generate_recipe_chats_exports_and_serves(ours, gguf_file, tmp_path):
    """`recipes/generate.py` on the tiny file: the chat template, greedy
    tokens equal to `generate`'s, the JSON record; then `export` and
    `predict --artifact` (onnxruntime, no Keras) give the same answer."""
    from support import ROOT, run_script

    causal_lm, tokenizer = ours
    question = "Is Paris the capital?"
    text = prompts.apply_chat_template(
        CHAT_TEMPLATE, [{"role": "user", "content": question}]
    )
    ids = np.array([tokenizer.encode(text).ids], "int32")
    new = 5
    expected = causal_lm.generate(
        ids, ids.shape[1] + new, stop_token_ids=[0, EOS_ID]
    )
    tail = expected["token_ids"][0, ids.shape[1] :]
    tail = tail[expected["padding_mask"][0, ids.shape[1] :]]
    answer = tokenizer.decode(tail.tolist(), skip_special_tokens=True)

    script = f"{ROOT}/recipes/generate.py"
    options = ["--max-new-tokens", str(new), "--sampler", "greedy"]
    model = ["--model", str(gguf_file)]
    out = run_script(script, [*model, *options, "--jsonl", question])
    record = json.loads(out.strip().splitlines()[-1])
    assert record["prompt"] == question
    assert record["completion"] == answer
    assert record["new_tokens"] == len(tail)
    assert record["prefill_seconds"] > 0

    run_script(
        script,
        ["export", *model, "--model-dir", str(tmp_path), "--max-length", "64"],
    )
    served = run_script(
        script,
        [
            "predict",
            "--artifact",
            str(tmp_path / "decode_step.onnx"),
            "--max-new-tokens",
            str(new),
            question,
        ],
    )
    assert served.rstrip("\n") == answer
