"""Scaled dot-product attention: the public op and the table of paths.

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

A call is described once (`AttentionProblem`: checked inputs, every
mask and bias at rank 4), and `attention_core` runs it on one of the paths
of `PATHS`, each a function `path(problem) -> (output, probabilities or
None)` in a module of its own, each saying what it supports
(`AttentionPath`):

- `"einsum"` (`ops.einsum`): materialises the `(B, H, T, S)` probabilities;
  the only one that applies attention dropout or returns the probabilities;
- `"fused"` (`ops.fused`): `keras.ops.dot_product_attention`, the backend's
  own kernel (torch's fused CPU/GPU kernels, cuDNN flash attention on JAX
  GPUs);
- `"blockwise"` (`ops.blockwise`): an online softmax over key blocks with a
  recomputing custom gradient: O(T * block) memory in the forward and the
  backward pass;

and `"auto"` picks one by backend, device, key length and what the call
needs (see `choose_implementation`), never one that the current trace
cannot carry.
"""

import dataclasses
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
from keras_selfattn.ops.blockwise import blockwise_path
from keras_selfattn.ops.checks import (
    check_attention_bias,
    check_attention_mask,
    check_position_bias,
    check_qkv,
)
from keras_selfattn.ops.einsum import einsum_path
from keras_selfattn.ops.fused import fused_path, torch_compiling
from keras_selfattn.ops.masks import as_bool, merge_masks, sliding_window_mask

BACKENDS = ("jax", "tensorflow", "torch")


@dataclasses.dataclass(frozen=True)
class AttentionProblem:
    """One attention call, as every path takes it: checked inputs and
    the options of `scaled_dot_product_attention`, with the same
    meaning. Made once per call: a rank-2 mask or bias becomes rank 4, an
    integer mask boolean, and `scale=None` `1 / sqrt(D)`.

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 2, 1, 4), "float32")
    >>> problem = AttentionProblem(x, x, x, mask=np.ones((2, 2), bool))
    >>> tuple(problem.mask.shape), problem.scale
    ((1, 1, 2, 2), 0.5)
    """

    query: object
    key: object
    value: object
    mask: object = None
    is_causal: bool = False
    scale: float = None
    sliding_window: int = None
    attention_bias: object = None
    position_bias: object = None
    logit_soft_cap: float = None
    dropout_rate: float = 0.0
    seed: object = None
    flash_attention: bool = None
    return_attention_scores: bool = False

    def __post_init__(self):
        if self.scale is None:
            scale = 1.0 / math.sqrt(self.query.shape[-1])
            object.__setattr__(self, "scale", scale)
        if self.mask is not None:
            object.__setattr__(self, "mask", _rank_4(as_bool(self.mask)))
        if self.attention_bias is not None:
            bias = ops.convert_to_tensor(self.attention_bias)
            object.__setattr__(self, "attention_bias", _rank_4(bias))

    @property
    def needs_probabilities(self):
        """Whether the call needs the probabilities materialised (dropout
        on them, or returned)."""
        return self.dropout_rate > 0.0 or self.return_attention_scores

    @property
    def tiled_features(self):
        """A position bias or a soft cap: what the blockwise path computes
        tile by tile and the fused kernels cannot (or only whole)."""
        return self.position_bias is not None or self.logit_soft_cap is not None

    def banded_mask(self, key_length=None):
        """The mask with the sliding window folded in, for the paths that
        take the window as a dense `(T, S)` band (`key_length` keys;
        default: the key's)."""
        if self.sliding_window is None:
            return self.mask
        if key_length is None:
            key_length = ops.shape(self.key)[1]
        window = sliding_window_mask(
            ops.shape(self.query)[1], key_length, self.sliding_window
        )
        return merge_masks(self.mask, window[None, None])


def _rank_4(tensor):
    """A `(T, S)` mask or bias as `(1, 1, T, S)`; rank 4 as it is."""
    return tensor[None, None] if len(tensor.shape) == 2 else tensor


@dataclasses.dataclass(frozen=True)
class AttentionPath:
    """One attention path and what it supports.

    Attributes:
        run: `run(problem) -> (output, probabilities or None)`.
        gives_probabilities: applies attention dropout and returns the
            probabilities.
        caps_logits: applies `logit_soft_cap`.
        runs_flash: can run the backend's flash kernel.
        exports_on: the backends whose exporters (`model.export`) trace
            it under sizes known only at run time.
    """

    run: object
    gives_probabilities: bool = False
    caps_logits: bool = True
    runs_flash: bool = False
    exports_on: tuple = BACKENDS


PATHS = {
    "einsum": AttentionPath(einsum_path, gives_probabilities=True),
    "fused": AttentionPath(fused_path, caps_logits=False, runs_flash=True),
    # jax2onnx, jax2tf's gradient and torch.export cannot convert its
    # loop's custom gradient or its bounds, read from the mask.
    "blockwise": AttentionPath(blockwise_path, exports_on=("tensorflow",)),
}
IMPLEMENTATIONS = ("auto", *PATHS)
# "auto" on a CPU with JAX/TensorFlow: blockwise from this key length up.
BLOCKWISE_MIN_LENGTH = 256
# "auto" with a backend's fused kernel and a sliding window: blockwise (its
# band) from this many windows of keys up, the fused kernel's dense mask
# below (`benchmarks/attention.py`).
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
    problem = AttentionProblem(
        query,
        key,
        value,
        mask=mask,
        is_causal=is_causal,
        scale=scale,
        sliding_window=sliding_window,
        attention_bias=attention_bias,
        position_bias=position_bias,
        logit_soft_cap=logit_soft_cap,
        dropout_rate=dropout_rate,
        seed=seed,
        flash_attention=flash_attention,
        return_attention_scores=return_attention_scores,
    )
    return attention_core(problem, implementation)


def attention_core(problem, implementation="auto"):
    """The attention of an `AttentionProblem` (checked inputs), on the
    path `implementation` names or the one `"auto"` picks for it:
    `scaled_dot_product_attention` without its checks. The layers call
    it after checking their own inputs and `check_implementation`.

    Returns the output, and the probabilities too when the problem asks
    for them (`return_attention_scores`).

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 2, 1, 4), "float32")
    >>> out = attention_core(AttentionProblem(x, x, x, is_causal=True))
    >>> tuple(out.shape)
    (1, 2, 1, 4)
    """
    output, probabilities = PATHS[path_for(implementation, problem)].run(
        problem
    )
    if problem.return_attention_scores:
        return output, probabilities
    return output


def decode_implementation(implementation, flash_attention):
    """The path for a cached call (queries over a key/value cache, its
    mask and biases explicit): `implementation` unless "auto", which picks
    `"fused"` for `flash_attention=True`, else `"einsum"` (one pass over
    the keys; the fused kernels copy them into their own layout)."""
    if implementation != "auto":
        return implementation
    return "fused" if flash_attention else "einsum"


def check_implementation(
    implementation,
    needs_probabilities=False,
    flash_attention=None,
    logit_soft_cap=None,
):
    """Return `implementation` if it is known and gives what is needed.

    Attention dropout and returned probabilities (`needs_probabilities`)
    need a path that gives them (`"einsum"`), or `"auto"`, which then
    picks it. `flash_attention` (None or a bool) True needs a path that
    runs the flash kernel (`"fused"`) or `"auto"`, and no probabilities.
    A `logit_soft_cap` needs a path that caps logits (not `"fused"`:
    keras' kernel caps logits on TPUs only).

    Example:

    >>> check_implementation("fused")
    'fused'
    """
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    path = PATHS.get(implementation)  # None for "auto"
    if needs_probabilities and path and not path.gives_probabilities:
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
    if flash_attention and path and not path.runs_flash:
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
        flash_attention or (path and not path.caps_logits)
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
    symbolic=None,
):
    """The attention path to run: `implementation` unless "auto".

    "auto" picks, from `benchmarks/attention.py` measurements:
    `"fused"` when `flash_attention=True`;
    `"einsum"` when dropout or the probabilities are needed; otherwise
    `"fused"` on torch (its fused kernel) and on JAX with a GPU/TPU (cuDNN
    flash attention), unless `tiled_features` (a position bias or a soft
    cap, which the blockwise path computes tile by tile) or a
    `sliding_window` with `SPARSE_BAND_WINDOWS` windows of keys or more
    (the blockwise path then visits only the band);
    otherwise `"blockwise"` from `BLOCKWISE_MIN_LENGTH` keys up, or when
    the length is unknown, and `"einsum"` below.

    `symbolic` (default: `key_length is None`) says the call is traced
    with a size known only at run time (the batch, the lengths), or by
    torch's compiler. On JAX and torch that is how `model.export` traces,
    and "auto" then picks a path that exports on the backend
    (`AttentionPath.exports_on`): `"fused"` where the fused kernel runs,
    else `"einsum"`.

    Example:

    >>> choose_implementation("blockwise", 8, needs_probabilities=False)
    'blockwise'
    >>> choose_implementation("auto", 8, needs_probabilities=True)
    'einsum'
    """
    check_implementation(implementation, needs_probabilities, flash_attention)
    return _resolve(
        implementation,
        key_length,
        needs_probabilities,
        flash_attention,
        sliding_window,
        tiled_features,
        key_length is None if symbolic is None else symbolic,
    )


def _resolve(
    implementation,
    key_length,
    needs_probabilities,
    flash_attention,
    sliding_window,
    tiled_features,
    symbolic,
):
    """`choose_implementation` for checked arguments: the fastest path
    for the call, kept only if the trace can carry it."""
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
    if fused_kernel and not (tiled_features or sparse_band):
        choice = "fused"
    elif key_length is None or key_length >= BLOCKWISE_MIN_LENGTH:
        choice = "blockwise"
    else:
        choice = "einsum"
    if symbolic and backend not in PATHS[choice].exports_on:
        return "fused" if fused_kernel and not tiled_features else "einsum"
    return choice


def path_for(implementation, problem):
    """The name of the path that runs `problem` (checked where it was
    made): what the problem needs, and whether it is traced with a size
    (batch, lengths) known only at run time or by torch's compiler."""
    query_shape = static_shape(problem.query)
    key_length = static_shape(problem.key)[1]
    return _resolve(
        implementation,
        key_length,
        problem.needs_probabilities,
        problem.flash_attention,
        problem.sliding_window,
        problem.tiled_features,
        None in (*query_shape[:2], key_length) or torch_compiling(),
    )


@functools.lru_cache(maxsize=None)
def _accelerator():
    """ "cpu", "gpu" or "tpu": the default device type of the backend."""
    try:
        device = keras.distribution.list_devices()[0]
    except (AttributeError, RuntimeError, IndexError):
        return "cpu"  # backends without keras.distribution devices
    return device.split(":")[0].lower()
