"""A tiny random BERT checkpoint (config.json, model.safetensors,
tokenizer.json) written the way Hugging Face writes them, for the
pretrained-loading tests and the recipes' `--init` tests."""

import json

import numpy as np
from safetensors.numpy import save_file

from keras_selfattn import pretrained, text

# Coprime sizes so a transposed or mis-split axis fails loudly.
TINY_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 67,
    "hidden_size": 15,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 22,
    "max_position_embeddings": 19,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "pad_token_id": 0,
}
CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "paris is the capital of france",
    "angela merkel visited paris",
] * 4


def random_tensors(config, seed=0):
    """BertModel-named tensors (pooler and position ids included), with
    a spread large enough that every weight moves the output."""
    cfg = pretrained.BertConfig.from_dict(config)
    rng = np.random.default_rng(seed)
    tensors = {
        name: rng.normal(0, 0.4, shape).astype("float32")
        for name, shape in pretrained.expected_tensors(cfg).items()
    }
    for name in tensors:
        if name.endswith("LayerNorm.weight"):
            tensors[name] += 1.0
    h = cfg.hidden_size
    tensors["pooler.dense.weight"] = rng.normal(size=(h, h)).astype("f4")
    tensors["pooler.dense.bias"] = np.zeros(h, "float32")
    positions = np.arange(cfg.max_position_embeddings, dtype="int64")
    tensors["embeddings.position_ids"] = positions[None]
    return tensors


def write_checkpoint(directory, tensors, config=TINY_CONFIG, corpus=CORPUS):
    """Write the three files; the WordPiece tokenizer is trained on
    `corpus` and must fit in the config's vocabulary."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"))
    tokenizer = text.train_tokenizer(
        corpus, vocab_size=config["vocab_size"], min_frequency=1
    )
    assert tokenizer.get_vocab_size() <= config["vocab_size"]
    text.save_tokenizer(tokenizer, directory / "tokenizer.json")
    return directory
