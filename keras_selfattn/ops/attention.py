"""Scaled dot-product attention and mask helpers, written on `keras.ops`.

Layout follows `keras.ops.dot_product_attention`: query `(B, T, H, D)`,
key `(B, S, Hkv, D)`, value `(B, S, Hkv, Dv)`, output `(B, T, H, Dv)`.
Masks are boolean, True = may attend.

Semantics kept on every backend, eager and compiled:

- a query row whose keys are all masked gives exactly zeros, with finite
  (zero) gradients;
- softmax runs in float32 whatever the input dtype; the result is cast back
  to the value's dtype;
- grouped-query attention when `Hkv` divides `H` (query heads
  `g * (H // Hkv) ... (g + 1) * (H // Hkv) - 1` share key/value head `g`).

Three implementations keep these semantics (`implementation=`):

- `"einsum"`: materialises the `(B, H, T, S)` probabilities; the only one
  that applies attention dropout or returns the probabilities;
- `"fused"`: `keras.ops.dot_product_attention`, the backend's own kernel
  (torch's fused CPU/GPU kernels, cuDNN flash attention on JAX GPUs);
- `"blockwise"`: an online softmax over key blocks with a recomputing
  custom gradient (`keras_selfattn.ops.blockwise`): O(T * block) memory in
  the forward and the backward pass;

and `"auto"` picks one by backend, device and key length (see
`choose_implementation`).
"""

import math

import functools

import keras
from keras import ops

from keras_selfattn._validation import check_choice, check_rate
from keras_selfattn.ops.blockwise import MASKED_LOGIT, blockwise_attention

IMPLEMENTATIONS = ("auto", "einsum", "fused", "blockwise")
# Keys per block of the blockwise path. Measured (forward + backward, batch
# 2, width 256, 4 heads): 128 and 256 tie at 4096 keys on JAX and
# TensorFlow; at 1024 keys 128 is faster on TensorFlow and ties on JAX.
BLOCK_SIZE = 128
# "auto" on a CPU with JAX/TensorFlow: blockwise from this key length up.
BLOCKWISE_MIN_LENGTH = 256
_SOFTMAX_DTYPE = "float32"


def causal_mask(query_length, key_length=None):
    """Boolean `(query_length, key_length)` mask, True on/below the diagonal.

    Aligned top-left like `keras.layers.MultiHeadAttention`: query `i` may
    attend to keys `0..i`.

    Example:

    >>> from keras import ops
    >>> ops.convert_to_numpy(causal_mask(2, 3)).tolist()
    [[True, False, False], [True, True, False]]
    """
    key_length = query_length if key_length is None else key_length
    rows = ops.expand_dims(ops.arange(query_length, dtype="int32"), -1)
    cols = ops.expand_dims(ops.arange(key_length, dtype="int32"), 0)
    return ops.greater_equal(rows, cols)


def padding_to_attention_mask(key_padding_mask, query_padding_mask=None):
    """Turn `(B, S)` padding masks into a `(B, T or 1, S)` attention mask.

    `key_padding_mask` marks the keys that exist; `query_padding_mask`, when
    given, also masks the rows of padded queries (their output is zeros).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> m = padding_to_attention_mask(np.array([[True, False]]))
    >>> ops.convert_to_numpy(m).tolist()
    [[[True, False]]]
    """
    mask = ops.expand_dims(_as_bool(key_padding_mask), 1)
    if query_padding_mask is not None:
        query = ops.expand_dims(_as_bool(query_padding_mask), 2)
        mask = ops.logical_and(mask, query)
    return mask


def merge_masks(*masks):
    """Logical AND of the masks that are not None (None if all are None).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> m = merge_masks(None, np.array([True, True]), np.array([True, False]))
    >>> ops.convert_to_numpy(m).tolist()
    [True, False]
    """
    merged = None
    for mask in masks:
        if mask is None:
            continue
        mask = _as_bool(mask)
        merged = mask if merged is None else ops.logical_and(merged, mask)
    return merged


def scaled_dot_product_attention(
    query,
    key,
    value,
    mask=None,
    is_causal=False,
    scale=None,
    dropout_rate=0.0,
    seed=None,
    return_attention_scores=False,
    implementation="auto",
):
    """softmax(Q K^T * scale) V with boolean masks, in float32 softmax.

    Args:
        query: `(B, T, H, D)` float tensor.
        key: `(B, S, Hkv, D)` float tensor; `Hkv` must divide `H`.
        value: `(B, S, Hkv, Dv)` float tensor.
        mask: optional boolean (or 0/1 integer) tensor, True = may attend,
            of rank 2 `(T, S)` or rank 4, broadcastable to `(B, H, T, S)`.
        is_causal: if True, query `i` attends to keys `0..i` only.
        scale: logit scale; defaults to `1 / sqrt(D)`.
        dropout_rate: dropout on the attention probabilities, in [0, 1).
        seed: a `keras.random.SeedGenerator` or int for the dropout.
        return_attention_scores: also return the probabilities
            `(B, H, T, S)` (before dropout).
        implementation: `"auto"`, `"einsum"`, `"fused"` or `"blockwise"`
            (see the module docstring). Honoured exactly: dropout and
            returned probabilities need `"einsum"` (or `"auto"`, which then
            picks it).

    Returns:
        `(B, T, H, Dv)`, and the probabilities if asked, in the value's dtype.
        Rows whose keys are all masked are exactly zero.

    Example:

    >>> import numpy as np
    >>> q = np.random.rand(2, 3, 4, 8).astype("float32")
    >>> kv = np.random.rand(2, 5, 2, 8).astype("float32")
    >>> out = scaled_dot_product_attention(q, kv, kv, is_causal=True)
    >>> tuple(out.shape)
    (2, 3, 4, 8)
    >>> long = scaled_dot_product_attention(
    ...     q, kv, kv, implementation="blockwise"
    ... )
    >>> bool(np.allclose(long, scaled_dot_product_attention(q, kv, kv)))
    True
    """
    _check_qkv(query, key, value)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    if mask is not None:
        _check_sdpa_mask(mask, query, key)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    implementation = choose_implementation(
        implementation,
        key_length=key.shape[1],
        needs_probabilities=dropout_rate > 0.0 or return_attention_scores,
    )
    mask = merge_masks(mask)
    if mask is not None and len(mask.shape) == 2:
        mask = mask[None, None]
    if implementation == "fused":
        return _fused_attention(query, key, value, mask, is_causal, scale)
    if implementation == "blockwise":
        return _blockwise_attention(query, key, value, mask, is_causal, scale)
    output, probs = _einsum_attention(
        query, key, value, mask, is_causal, scale, dropout_rate, seed
    )
    if return_attention_scores:
        return output, probs
    return output


def choose_implementation(implementation, key_length, needs_probabilities):
    """The attention implementation to run: `implementation` unless "auto".

    "auto" picks, from `benchmarks/attention.py` measurements:
    `"einsum"` when dropout or the probabilities are needed; otherwise
    `"fused"` on torch (its fused kernel) and on JAX with a GPU/TPU (cuDNN
    flash attention); otherwise (JAX/TensorFlow on CPU) `"blockwise"` from
    `BLOCKWISE_MIN_LENGTH` keys up, or when the length is unknown, and
    `"einsum"` below.

    Example:

    >>> choose_implementation("blockwise", 8, needs_probabilities=False)
    'blockwise'
    >>> choose_implementation("auto", 8, needs_probabilities=True)
    'einsum'
    """
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    if implementation != "auto":
        if needs_probabilities and implementation != "einsum":
            raise ValueError(
                "Attention dropout and returned attention scores need "
                "implementation='einsum' (or 'auto'). Received: "
                f"implementation={implementation!r}"
            )
        return implementation
    if needs_probabilities:
        return "einsum"
    backend = keras.backend.backend()
    if backend == "torch" or (backend == "jax" and _accelerator() != "cpu"):
        return "fused"
    if key_length is None or key_length >= BLOCKWISE_MIN_LENGTH:
        return "blockwise"
    return "einsum"


@functools.lru_cache(maxsize=None)
def _accelerator():
    """ "cpu", "gpu" or "tpu": the default device type of the backend."""
    try:
        device = keras.distribution.list_devices()[0]
    except (AttributeError, RuntimeError, IndexError):
        return "cpu"  # backends without keras.distribution devices
    return device.split(":")[0].lower()


def _fused_attention(query, key, value, mask, is_causal, scale):
    """`keras.ops.dot_product_attention`, with empty rows set to zeros.

    Not every backend's kernel takes grouped key/value heads or a value
    size other than the key size, so key/value heads are repeated and the
    head sizes zero-padded to one size (neither changes the result). The
    kernels give a row whose keys are all masked the mean of the values;
    `ops.where` replaces it with zeros, which also zeroes the gradient
    flowing into that row.
    """
    if mask is not None and is_causal:
        causal = causal_mask(ops.shape(query)[1], ops.shape(key)[1])
        mask, is_causal = merge_masks(mask, causal), False
    if mask is not None and mask.shape[-1] != 1 and _eager_torch():
        key, value, mask = _trim_masked_key_tail(key, value, mask)
    groups = query.shape[2] // key.shape[2]
    if groups > 1:
        key = ops.repeat(key, groups, axis=2)
        value = ops.repeat(value, groups, axis=2)
    key_size, value_size = query.shape[-1], value.shape[-1]
    size = max(key_size, value_size)
    query, key, value = (
        _pad_last_axis(tensor, size) for tensor in (query, key, value)
    )
    output = ops.dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        scale=scale,
        is_causal=is_causal,
        # On torch, None makes Keras probe its flash kernel in a way
        # torch.compile cannot trace; False lets torch's own dispatcher pick
        # the kernel (flash included) instead.
        flash_attention=False if keras.backend.backend() == "torch" else None,
    )
    output = output[..., :value_size]
    if mask is None:
        return output
    row_has_key = ops.any(mask, axis=-1, keepdims=True)  # (B, H, T, 1)
    return ops.where(ops.swapaxes(row_has_key, 1, 2), output, 0.0)


def _eager_torch():
    """Backend fast path, torch only: True when running eagerly (not under
    `torch.compile`), where a shape may depend on the data. Its portable
    twin is the untrimmed kernel call that every other case takes."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return not torch.compiler.is_compiling()


def _trim_masked_key_tail(key, value, mask):
    """Drop the trailing keys that no query may attend to.

    Exact: those keys get zero probability everywhere (and zero gradient).
    A padded batch then costs what its longest row costs. At least one key
    is kept, so a fully masked batch still goes through the kernel.
    """
    seen = ops.convert_to_numpy(ops.any(mask, axis=(0, 1, 2)))
    keep = max(int(seen.nonzero()[0][-1]) + 1 if seen.any() else 0, 1)
    if keep == seen.shape[0]:
        return key, value, mask
    return key[:, :keep], value[:, :keep], mask[..., :keep]


def _pad_last_axis(tensor, size):
    missing = size - tensor.shape[-1]
    if missing == 0:
        return tensor
    return ops.pad(
        tensor, ((0, 0),) * (len(tensor.shape) - 1) + ((0, missing),)
    )


def _blockwise_attention(query, key, value, mask, is_causal, scale):
    """The blockwise path on `(B, T, H, D)` inputs (see `ops.blockwise`)."""
    query_length, key_length = query.shape[1], key.shape[1]
    if query_length is None:
        query_length = ops.shape(query)[1]
    dynamic = key_length is None
    if dynamic:
        key_length = ops.shape(key)[1]
        if key_length is None:  # symbolic inputs: only the output spec
            output, _ = _einsum_attention(
                query, key, value, mask, is_causal, scale
            )
            return output
        block_size = BLOCK_SIZE
    else:
        block_size = min(BLOCK_SIZE, key_length)
    padding = (-key_length) % block_size
    groups = query.shape[2] // key.shape[2]
    pads_keys = dynamic or padding > 0
    dtype = value.dtype
    query = ops.cast(query, _SOFTMAX_DTYPE) * ops.cast(scale, _SOFTMAX_DTYPE)
    query = _heads_first(query, 1, 0)
    key = _heads_first(key, groups, padding)
    value = _heads_first(value, groups, padding)
    if pads_keys and mask is not None and mask.shape[-1] != 1:
        mask = ops.pad(mask, ((0, 0), (0, 0), (0, 0), (0, padding)))

    def block_mask(start):
        parts = [mask]
        if mask is not None and mask.shape[-1] != 1:
            shape = ops.shape(mask)[:3] + (block_size,)
            parts = [ops.slice(mask, (0, 0, 0, start), shape)]
        if is_causal or pads_keys:
            columns = start + ops.arange(block_size, dtype="int32")
        if is_causal:
            rows = ops.arange(query_length, dtype="int32")[:, None]
            parts.append(rows >= columns[None, :])
        if pads_keys:
            parts.append(columns < key_length)
        return merge_masks(*parts)

    output = blockwise_attention(query, key, value, block_mask, block_size)
    return ops.cast(ops.swapaxes(output, 1, 2), dtype)


def _heads_first(tensor, groups, padding):
    """`(B, L, Hkv, D)` -> float32 `(B, Hkv * groups, L + padding, D)`."""
    tensor = ops.cast(tensor, _SOFTMAX_DTYPE)
    if groups > 1:
        tensor = ops.repeat(tensor, groups, axis=2)
    tensor = ops.transpose(tensor, (0, 2, 1, 3))
    if isinstance(padding, int) and padding == 0:
        return tensor
    return ops.pad(tensor, ((0, 0), (0, 0), (0, padding), (0, 0)))


def _einsum_attention(
    query, key, value, mask, is_causal, scale, dropout_rate=0.0, seed=None
):
    """Output and probabilities `(B, H, T, S)`, both in the value's dtype."""
    if is_causal:
        mask = merge_masks(
            mask, causal_mask(ops.shape(query)[1], ops.shape(key)[1])
        )
    query = ops.multiply(query, ops.cast(scale, query.dtype))
    logits = _attention_logits(query, key)
    probs = _masked_softmax(logits, mask)
    weights = probs
    if dropout_rate > 0.0:
        weights = keras.random.dropout(weights, dropout_rate, seed=seed)
    output = _attend(ops.cast(weights, value.dtype), value)
    return output, ops.cast(probs, value.dtype)


def _attention_logits(query, key):
    """Float32 logits `(B, H, T, S)`; grouped query heads share a key head.

    Query and key are widened to float32 first, so half-precision inputs
    get float32 products and sums (as fused kernels accumulate) and the
    logits are never rounded to 16 bits.
    """
    query = ops.cast(query, _SOFTMAX_DTYPE)
    key = ops.cast(key, _SOFTMAX_DTYPE)
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    if num_heads == num_kv_heads:
        logits = ops.einsum("bthd,bshd->bhts", query, key)
    else:
        groups = num_heads // num_kv_heads
        query = _split_heads(query, num_kv_heads, groups)
        logits = ops.einsum("btkgd,bskd->bkgts", query, key)
        logits = _merge_group_axes(logits, num_heads)
    return logits


def _masked_softmax(logits, mask):
    """Softmax over keys; masked entries and all-masked rows are zero."""
    if logits.shape[-1] == 1:
        probs = ops.ones_like(logits)  # one key: softmax is constant 1
    else:
        if mask is not None:
            logits = ops.where(mask, logits, MASKED_LOGIT)
        probs = ops.softmax(logits, axis=-1)
    if mask is None:
        return probs
    return ops.where(mask, probs, ops.zeros_like(probs))


def _attend(weights, value):
    """Weights `(B, H, T, S)` x value `(B, S, Hkv, Dv)` -> `(B, T, H, Dv)`."""
    num_heads, num_kv_heads = weights.shape[1], value.shape[2]
    if num_heads == num_kv_heads:
        return ops.einsum("bhts,bshd->bthd", weights, value)
    groups = num_heads // num_kv_heads
    shape = ops.shape(weights)
    weights = ops.reshape(
        weights, (-1, num_kv_heads, groups, shape[2], shape[3])
    )
    output = ops.einsum("bkgts,bskd->btkgd", weights, value)
    shape = ops.shape(output)
    return ops.reshape(output, (-1, shape[1], num_heads, shape[4]))


def _split_heads(query, num_kv_heads, groups):
    shape = ops.shape(query)
    return ops.reshape(query, (-1, shape[1], num_kv_heads, groups, shape[3]))


def _merge_group_axes(logits, num_heads):
    shape = ops.shape(logits)
    return ops.reshape(logits, (-1, num_heads, shape[3], shape[4]))


def _as_bool(mask):
    if keras.backend.standardize_dtype(mask.dtype) == "bool":
        return mask
    return ops.cast(mask, "bool")


def _check_qkv(query, key, value):
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if len(tensor.shape) != 4:
            raise ValueError(
                f"`{name}` must have rank 4 (batch, length, heads, dim). "
                f"Received: {name}.shape={tuple(tensor.shape)}"
            )
        check_float_input(name, tensor)
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            "`query` and `key` must have the same last dimension. Received: "
            f"query.shape={tuple(query.shape)}, key.shape={tuple(key.shape)}"
        )
    if key.shape[1:3] != value.shape[1:3]:
        raise ValueError(
            "`key` and `value` must have the same length and number of heads. "
            f"Received: key.shape={tuple(key.shape)}, "
            f"value.shape={tuple(value.shape)}"
        )
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    if num_heads is None or num_kv_heads is None:
        raise ValueError(
            "The heads axis (axis 2) must be known statically. Received: "
            f"query.shape={tuple(query.shape)}, key.shape={tuple(key.shape)}"
        )
    if num_heads % num_kv_heads:
        raise ValueError(
            "The number of key/value heads must divide the number of query "
            f"heads. Received: query heads={num_heads}, "
            f"key/value heads={num_kv_heads}"
        )


def check_mask(name, mask, expected_shape):
    """Raise unless `mask` is boolean/integer and fits `expected_shape`.

    Each dim of `mask` must be 1 or equal to the expected one (None in
    either means unknown and passes).
    """
    _check_mask_dtype(name, mask)
    _check_mask_shape(name, mask, expected_shape)


def _check_mask_dtype(name, mask):
    check_dtype(
        name,
        mask,
        lambda dtype: dtype == "bool" or keras.backend.is_int_dtype(dtype),
        "a boolean (True = may attend) or integer tensor",
    )


def _check_mask_shape(name, mask, expected_shape):
    shape = tuple(mask.shape)
    expected_shape = tuple(expected_shape)
    if len(shape) != len(expected_shape):
        raise ValueError(
            f"`{name}` must have rank {len(expected_shape)}, shape "
            f"{_describe(expected_shape)}. Received: {name}.shape={shape}"
        )
    for got, want in zip(shape, expected_shape):
        if got is None or want is None or got == 1 or got == want:
            continue
        raise ValueError(
            f"`{name}` must have shape {_describe(expected_shape)} (or 1 on "
            f"broadcast axes). Received: {name}.shape={shape}"
        )


def _describe(shape):
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _check_sdpa_mask(mask, query, key):
    batch, query_length, num_heads = query.shape[:3]
    key_length = key.shape[1]
    if len(mask.shape) == 2:
        check_mask("mask", mask, (query_length, key_length))
    elif len(mask.shape) == 4:
        check_mask("mask", mask, (batch, num_heads, query_length, key_length))
    else:
        raise ValueError(
            "`mask` must have rank 2 (T, S) or rank 4 (B, H, T, S); for a "
            "(B, T, S) mask use `ops.expand_dims(mask, 1)`. "
            f"Received: mask.shape={tuple(mask.shape)}"
        )


def check_dtype(name, tensor, accepts, description):
    """Raise TypeError unless `accepts(dtype)` for `tensor`'s dtype."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if not accepts(dtype):
        raise TypeError(
            f"`{name}` must be {description}. Received: {name}.dtype={dtype}"
        )


def check_float_input(name, tensor):
    """Raise TypeError unless `tensor` has a floating-point dtype."""
    check_dtype(
        name, tensor, keras.backend.is_float_dtype, "a floating-point tensor"
    )
