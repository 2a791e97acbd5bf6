"""Scaled dot-product attention: the public op and the choice of path.

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

Three implementations keep these semantics (`implementation=`), one module
each:

- `"einsum"` (`ops.einsum`): materialises the `(B, H, T, S)` probabilities;
  the only one that applies attention dropout or returns the probabilities;
- `"fused"` (`ops.fused`): `keras.ops.dot_product_attention`, the backend's
  own kernel (torch's fused CPU/GPU kernels, cuDNN flash attention on JAX
  GPUs);
- `"blockwise"` (`ops.blockwise`): an online softmax over key blocks with a
  recomputing custom gradient: O(T * block) memory in the forward and the
  backward pass;

and `"auto"` picks one by backend, device and key length (see
`choose_implementation`).
"""

import functools
import math

import keras
from keras import ops

from keras_selfattn._validation import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_rate,
    static_shape,
)
from keras_selfattn.ops.blockwise import blockwise_attention
from keras_selfattn.ops.checks import (
    check_attention_bias,
    check_attention_mask,
    check_position_bias,
    check_qkv,
)
from keras_selfattn.ops.einsum import einsum_attention
from keras_selfattn.ops.fused import fused_attention
from keras_selfattn.ops.masks import as_bool, merge_masks, sliding_window_mask

IMPLEMENTATIONS = ("auto", "einsum", "fused", "blockwise")
# Keys per block of the blockwise path. Measured (forward + backward, batch
# 2, width 256, 4 heads): 128 and 256 tie at 4096 keys on JAX and
# TensorFlow; at 1024 keys 128 is faster on TensorFlow and ties on JAX.
BLOCK_SIZE = 128
# "auto" on a CPU with JAX/TensorFlow: blockwise from this key length up.
BLOCKWISE_MIN_LENGTH = 256
# "auto" with a backend's fused kernel and a sliding window: blockwise (its
# band) from this many windows of keys up, the fused kernel's dense mask
# below. Measured on torch, window 256, forward + backward, fused vs
# blockwise: 0.147 vs 0.192 s at 2048 keys, 0.679 vs 0.363 s at 4096.
SPARSE_BAND_WINDOWS = 12


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
    sliding_window=None,
    flash_attention=None,
    attention_bias=None,
    position_bias=None,
    logit_soft_cap=None,
):
    """softmax(cap(Q K^T * scale + biases)) V with boolean masks, in float32.

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
        sliding_window: optional positive int: query `i` attends only to
            keys `j` with `|i - j| < sliding_window` (with `is_causal`, the
            `sliding_window` keys up to `i`).
        flash_attention: as in `keras.ops.dot_product_attention`, for the
            `"fused"` path: None lets the backend decide (and follows
            `keras.config.disable_flash_attention()`), False never uses
            the backend's flash kernel, True requires it (and so
            `"fused"`; `"auto"` picks it) and fails where the backend has
            none.
        attention_bias: optional float tensor added to the logits, of rank
            2 `(T, S)` or rank 4, broadcastable to `(B, H, T, S)`;
            differentiable on every path.
        position_bias: optional `PositionBias` (`alibi_bias`,
            `relative_position_bias`) added to the logits; the blockwise
            path computes it tile by tile from positions.
        logit_soft_cap: optional positive float: the biased logits `x`
            become `logit_soft_cap * tanh(x / logit_soft_cap)` (Gemma 2)
            before masking. Not on `"fused"`.

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
    >>> from keras_selfattn.ops import alibi_bias
    >>> alibi = scaled_dot_product_attention(
    ...     q, kv, kv, position_bias=alibi_bias(4), logit_soft_cap=50.0
    ... )
    >>> tuple(alibi.shape)
    (2, 3, 4, 8)
    """
    check_qkv(query, key, value)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    check_attention_mask(mask, query, key)
    check_attention_bias(attention_bias, query, key)
    check_position_bias(position_bias)
    check_positive_int("sliding_window", sliding_window, allow_none=True)
    logit_soft_cap = check_positive_float(
        "logit_soft_cap", logit_soft_cap, allow_none=True
    )
    check_implementation(
        implementation,
        dropout_rate > 0.0 or return_attention_scores,
        flash_attention,
        logit_soft_cap,
    )
    return attention_core(
        query,
        key,
        value,
        mask=mask,
        is_causal=is_causal,
        scale=scale,
        dropout_rate=dropout_rate,
        seed=seed,
        return_attention_scores=return_attention_scores,
        implementation=implementation,
        sliding_window=sliding_window,
        flash_attention=flash_attention,
        attention_bias=attention_bias,
        position_bias=position_bias,
        logit_soft_cap=logit_soft_cap,
    )


def attention_core(
    query,
    key,
    value,
    *,
    mask,
    is_causal,
    scale,
    dropout_rate,
    seed,
    return_attention_scores,
    implementation,
    sliding_window=None,
    flash_attention=None,
    attention_bias=None,
    position_bias=None,
    logit_soft_cap=None,
):
    """`scaled_dot_product_attention` without its checks or defaults.

    Trusts its arguments: callers pass what `scaled_dot_product_attention`
    checks (shapes, dtypes, mask, rate, `check_implementation`), and every
    argument, with the same meaning (`scale=None`: `1 / sqrt(D)`). The
    layers call it after checking their own inputs.

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 2, 1, 4), "float32")
    >>> out = attention_core(
    ...     x, x, x, mask=None, is_causal=True, scale=None, dropout_rate=0.0,
    ...     seed=None, return_attention_scores=False, implementation="auto",
    ... )
    >>> tuple(out.shape)
    (1, 2, 1, 4)
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    implementation = _resolve_implementation(
        implementation,
        key_length=static_shape(key)[1],
        needs_probabilities=dropout_rate > 0.0 or return_attention_scores,
        flash_attention=flash_attention,
        sliding_window=sliding_window,
        tiled_features=(
            position_bias is not None or logit_soft_cap is not None
        ),
    )
    if mask is not None:
        mask = as_bool(mask)
        if len(mask.shape) == 2:
            mask = mask[None, None]
    if attention_bias is not None:
        attention_bias = ops.convert_to_tensor(attention_bias)
        if len(attention_bias.shape) == 2:
            attention_bias = attention_bias[None, None]
    if implementation == "blockwise":  # builds its window tile by tile
        return blockwise_attention(
            query,
            key,
            value,
            mask,
            is_causal,
            scale,
            BLOCK_SIZE,
            sliding_window,
            bias=attention_bias,
            position_bias=position_bias,
            logit_soft_cap=logit_soft_cap,
        )
    if sliding_window is not None:
        window = sliding_window_mask(
            ops.shape(query)[1], ops.shape(key)[1], sliding_window
        )
        mask = merge_masks(mask, window[None, None])
    if implementation == "fused":
        return fused_attention(
            query,
            key,
            value,
            mask,
            is_causal,
            scale,
            flash_attention,
            bias=attention_bias,
            position_bias=position_bias,
        )
    output, probs = einsum_attention(
        query,
        key,
        value,
        mask,
        is_causal,
        scale,
        dropout_rate,
        seed,
        bias=attention_bias,
        position_bias=position_bias,
        logit_soft_cap=logit_soft_cap,
    )
    if return_attention_scores:
        return output, probs
    return output


def check_implementation(
    implementation,
    needs_probabilities=False,
    flash_attention=None,
    logit_soft_cap=None,
):
    """Return `implementation` if it is known and gives what is needed.

    Attention dropout and returned probabilities (`needs_probabilities`)
    need `"einsum"`, or `"auto"`, which then picks it. `flash_attention`
    (None or a bool) True needs `"fused"` or `"auto"`, and no
    probabilities. A `logit_soft_cap` needs a path other than `"fused"`
    (keras' kernel caps logits on TPUs only).

    Example:

    >>> check_implementation("fused")
    'fused'
    """
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    if needs_probabilities and implementation not in ("auto", "einsum"):
        raise ValueError(
            "Attention dropout and returned attention scores need "
            "implementation='einsum' (or 'auto'). Received: "
            f"implementation={implementation!r}"
        )
    if flash_attention not in (None, True, False):
        raise ValueError(
            "`flash_attention` must be None, True or False. Received: "
            f"flash_attention={flash_attention!r}"
        )
    if flash_attention and implementation not in ("auto", "fused"):
        raise ValueError(
            "flash_attention=True runs the backend's flash kernel, which "
            "only implementation='fused' (or 'auto') calls. Received: "
            f"flash_attention=True, implementation={implementation!r}"
        )
    if flash_attention and needs_probabilities:
        raise ValueError(
            "Attention dropout and returned attention scores are not "
            "supported with flash_attention=True; use "
            "flash_attention=None or False. Received: flash_attention=True"
        )
    if logit_soft_cap is not None and (
        implementation == "fused" or flash_attention
    ):
        raise ValueError(
            "`logit_soft_cap` needs implementation='einsum', 'blockwise' or "
            "'auto' (the backend kernels of 'fused' cannot cap logits), and "
            f"flash_attention other than True. Received: logit_soft_cap="
            f"{logit_soft_cap!r}, implementation={implementation!r}, "
            f"flash_attention={flash_attention!r}"
        )
    return implementation


def choose_implementation(
    implementation,
    key_length,
    needs_probabilities,
    flash_attention=None,
    sliding_window=None,
    tiled_features=False,
):
    """The attention implementation to run: `implementation` unless "auto".

    "auto" picks, from `benchmarks/attention.py` measurements:
    `"fused"` when `flash_attention=True`;
    `"einsum"` when dropout or the probabilities are needed; otherwise
    `"fused"` on torch (its fused kernel) and on JAX with a GPU/TPU (cuDNN
    flash attention), unless `tiled_features` (a position bias or a soft
    cap, which the blockwise path computes tile by tile) or a
    `sliding_window` with `SPARSE_BAND_WINDOWS` windows of keys or more
    (the blockwise path then visits only the band);
    otherwise `"blockwise"` from `BLOCKWISE_MIN_LENGTH` keys up, or when
    the length is unknown, and `"einsum"` below. On JAX and torch only
    export leaves the length unknown, and their exporters need a path
    without loops: then `"fused"` where the fused kernel runs, else
    `"einsum"`.

    Example:

    >>> choose_implementation("blockwise", 8, needs_probabilities=False)
    'blockwise'
    >>> choose_implementation("auto", 8, needs_probabilities=True)
    'einsum'
    """
    check_implementation(implementation, needs_probabilities, flash_attention)
    return _resolve_implementation(
        implementation,
        key_length,
        needs_probabilities,
        flash_attention,
        sliding_window,
        tiled_features,
    )


def _resolve_implementation(
    implementation,
    key_length,
    needs_probabilities,
    flash_attention=None,
    sliding_window=None,
    tiled_features=False,
):
    """`choose_implementation` for checked arguments."""
    if implementation != "auto":
        return implementation
    if flash_attention:
        return "fused"
    if needs_probabilities:
        return "einsum"
    backend = keras.backend.backend()
    fused_kernel = backend == "torch" or (
        backend == "jax" and _accelerator() != "cpu"
    )
    sparse_band = sliding_window is not None and (
        key_length is None or key_length >= SPARSE_BAND_WINDOWS * sliding_window
    )
    if key_length is None and backend != "tensorflow":
        # Only export leaves a JAX or torch length unknown, and their
        # exporters cannot convert the blockwise loop (its custom gradient,
        # its bounds read from the mask; README, "Deploy").
        return "fused" if fused_kernel and not tiled_features else "einsum"
    if fused_kernel and not (tiled_features or sparse_band):
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
