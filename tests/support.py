"""Helpers the tests share: the NumPy attention oracle, gradients and jit
per backend, and fresh-process runs of scripts and recipes."""

import os
import re
import subprocess
import sys

import keras
import numpy as np

BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")


def later_backends():
    """The backends after this one in `BACKENDS`: a cross-backend check
    parametrized over them runs once per pair when the suite runs under
    every backend."""
    return list(BACKENDS[BACKENDS.index(BACKEND) + 1 :])


def other_backends():
    """The backends other than this one, in `BACKENDS` order. The recipe
    tests each reload their model under one of them (sentiment the first,
    NER the second): together they cover both, at half the cost."""
    return [backend for backend in BACKENDS if backend != BACKEND]


def numpy_attention(
    query,
    key,
    value,
    mask=None,
    is_causal=False,
    scale=None,
    bias=None,
    soft_cap=None,
):
    """Independent float64 reference for scaled dot-product attention.

    Layout `(B, T, H, D)`; key/value heads are repeated for grouped queries.
    `bias` (broadcastable to `(B, H, T, S)`) is added to the scaled logits,
    then `soft_cap * tanh(x / soft_cap)`. Rows with no allowed key give
    zeros. Returns (output, probabilities).
    """
    query, key, value = (np.asarray(t, np.float64) for t in (query, key, value))
    batch, q_len, heads, dim = query.shape
    k_len, kv_heads = key.shape[1], key.shape[2]
    key = np.repeat(key, heads // kv_heads, axis=2)
    value = np.repeat(value, heads // kv_heads, axis=2)
    scale = 1.0 / np.sqrt(dim) if scale is None else scale
    logits = np.einsum("bthd,bshd->bhts", query, key) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if soft_cap is not None:
        logits = soft_cap * np.tanh(logits / soft_cap)
    allowed = np.ones((batch, heads, q_len, k_len), bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask).astype(bool), allowed.shape)
    if is_causal:
        allowed &= np.tril(np.ones((q_len, k_len), bool))
    logits = np.where(allowed, logits, -np.inf)
    row_max = logits.max(-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(logits - row_max) * allowed
    total = weights.sum(-1, keepdims=True)
    probs = np.divide(
        weights, total, out=np.zeros_like(weights), where=total > 0
    )
    return np.einsum("bhts,bshd->bthd", probs, value), probs


def numpy_attention_grads(
    query,
    key,
    value,
    upstream,
    mask=None,
    is_causal=False,
    scale=None,
    bias=None,
    soft_cap=None,
):
    """Float64 gradients of `sum(upstream * attention(q, k, v))`, by hand.

    dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(P * dP)), times
    1 - tanh^2 under a soft cap; dQ = scale dS K; dK = scale dS^T Q;
    grouped heads sum into their key head. Returns (dq, dk, dv) in the
    inputs' layout, and with a `bias` also dS `(B, H, T, S)`, the gradient
    of the (unbroadcast) bias.
    """
    _, probs = numpy_attention(
        query, key, value, mask, is_causal, scale, bias, soft_cap
    )
    query, key, value, upstream = (
        np.asarray(t, np.float64) for t in (query, key, value, upstream)
    )
    heads, kv_heads = query.shape[2], key.shape[2]
    groups = heads // kv_heads
    scale = 1.0 / np.sqrt(query.shape[-1]) if scale is None else scale
    key_rep = np.repeat(key, groups, axis=2)
    value_rep = np.repeat(value, groups, axis=2)
    grad_value = np.einsum("bhts,bthd->bshd", probs, upstream)
    grad_probs = np.einsum("bthd,bshd->bhts", upstream, value_rep)
    grad_logits = probs * (
        grad_probs - (probs * grad_probs).sum(-1, keepdims=True)
    )
    if soft_cap is not None:
        logits = np.einsum("bthd,bshd->bhts", query, key_rep) * scale
        if bias is not None:
            logits = logits + np.asarray(bias, np.float64)
        grad_logits = grad_logits * (1.0 - np.tanh(logits / soft_cap) ** 2)
    grad_query = scale * np.einsum("bhts,bshd->bthd", grad_logits, key_rep)
    grad_key = scale * np.einsum("bhts,bthd->bshd", grad_logits, query)

    def sum_groups(grad):
        batch, length = grad.shape[:2]
        return grad.reshape(batch, length, kv_heads, groups, -1).sum(3)

    grads = grad_query, sum_groups(grad_key), sum_groups(grad_value)
    return grads if bias is None else grads + (grad_logits,)


def rand(rng, *shape):
    """Float32 standard-normal values of `shape` from `rng`."""
    return rng.standard_normal(shape).astype("float32")


def keep_one_key_per_row(mask):
    """A copy of `mask` in which every query row keeps key 0, so layers
    that treat rows with no key differently (ours: zeros) agree."""
    mask = mask.copy()
    mask[..., 0] = True
    return mask


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def grads(fn, *args):
    """Gradients of `sum(fn(*args))` with respect to every argument."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(tf.cast(fn(*variables), tf.float32))
        return [to_numpy(g) for g in tape.gradient(total, variables)]
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def total(*a):
            return jnp.sum(fn(*a).astype(jnp.float32))

        argnums = tuple(range(len(args)))
        return [to_numpy(g) for g in jax.grad(total, argnums)(*args)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    fn(*tensors).float().sum().backward()
    return [to_numpy(t.grad) for t in tensors]


def jit(fn):
    """Compile `fn` with the backend's compiler (XLA; torch.compile)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import torch

    return torch.compile(fn)


def reload_difference(stdout):
    """The max |difference| a recipe printed after reloading its model.

    Not always exactly 0: the trained model may have been traced with a
    dynamic length (TensorFlow) and run another attention kernel than the
    fresh reload, which rounds differently in the last bits.
    """
    match = re.search(r"reloaded .*: max \|difference\| (\S+)", stdout)
    assert match, "the recipe did not report its reload check"
    return float(match.group(1))


# Runs the module named first as `python -m MODULE ARGS...` would, then
# prints the frameworks the process imported ("frameworks: []" if none).
FRAMEWORKS_PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
frameworks = ("keras", "tensorflow", "jax", "torch")
print("frameworks:", [name for name in frameworks if name in sys.modules])
"""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_probing_frameworks(module, args, stdin=None):
    """Run `python -m module *args` in a fresh process from the repository
    root; returns its stdout, which ends with the frameworks it imported
    (see `FRAMEWORKS_PROBE`)."""
    return run_script(
        "-c", [FRAMEWORKS_PROBE, module, *args], stdin=stdin, cwd=ROOT
    )


def run_script(script, args, backend=BACKEND, stdin=None, cwd=None):
    """Run a recipe script in a fresh process under `backend` (in `cwd`);
    asserts it succeeds and returns its stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


# Text on which a byte-level BPE tokenizer rebuilt from a GGUF file must
# give transformers' ids: Unicode (accents, emoji, CJK), digits, runs of
# spaces, tabs, newlines and CRLF, contractions, control tokens inside
# text, code and the empty string.
TOKENIZER_TEXTS = [
    "Hello world",
    " leading space",
    "Ünïcødé — 東京 😀 naïve café, Straße, ﬁ ligature",
    "digits 1234567 and 3.14159, 2024-12-05, 10,000",
    "runs   of    spaces\t\ttabs \t mixed",
    "new\nlines\n\n\nand\r\nCRLF\r\n",
    "it's we'll I'M don't THEY'RE you've she'd",
    "   ",
    "",
    "<|endoftext|>x<|im_end|> <|im_start|>user\ntext",
    "def f(x):\n    return x**2  # comment",
]


def right_padded(tokenizer, texts):
    """`(ids, mask)`: the texts' ids (of different lengths) in one
    right-padded batch."""
    encoded = [tokenizer.encode(text).ids for text in texts]
    ids = np.zeros((len(texts), max(map(len, encoded))), "int32")
    mask = np.zeros(ids.shape, bool)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
    assert len(set(map(len, encoded))) == len(texts), "lengths must differ"
    return ids, mask


def torch_outputs(model, ids, mask):
    """A Hugging Face torch `model`'s outputs on int `ids` with the
    attention `mask` (NumPy), without gradients."""
    import torch

    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )


def gguf_reference(path):
    """transformers' tokenizer and float32 `LlamaForCausalLM` read from
    the GGUF file at `path`: the oracle of `keras_selfattn.pretrained`."""
    import pytest

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    return tokenizer, model
