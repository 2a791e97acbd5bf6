"""The fused path: `keras.ops.dot_product_attention`, the backend's kernel.

Torch's fused CPU/GPU kernels, cuDNN flash attention on JAX GPUs. Holds
the one backend fast path of the package: on eager torch each batch row
runs only up to the last key it may see (padding trimmed off, as a
variable-length kernel would), and without a mask where every query sees
every key that is left.
"""

import keras
from keras import ops

from keras_selfattn.ops.masks import causal_mask, masked_logit, merge_masks


def fused_path(problem):
    """`keras.ops.dot_product_attention` on an `AttentionProblem`, with
    empty rows set to zeros; returns `(output, None)`.

    `flash_attention` as in `keras.ops.dot_product_attention` (None also
    honours `keras.config.disable_flash_attention()`). The attention bias
    and the position bias (built whole here) are added to the logits;
    with either, the mask is folded into that bias (torch's kernel takes
    a bias or a mask, not both). Not every backend's kernel takes grouped
    key/value heads or a value size other than the key size, so key/value
    heads are repeated and the head sizes zero-padded to one size
    (neither changes the result). The kernels give a row whose keys are
    all masked the mean of the values; `ops.where` replaces it with
    zeros, which also zeroes the gradient flowing into that row.
    """
    query, key, value = problem.query, problem.key, problem.value
    mask, bias = problem.banded_mask(), problem.attention_bias
    is_causal, scale = problem.is_causal, problem.scale
    flash_attention = problem.flash_attention
    if problem.position_bias is not None:
        full = problem.position_bias.full(
            ops.shape(query)[1], ops.shape(key)[1]
        )
        bias = full[None] if bias is None else bias + full[None]
    if (mask is not None or bias is not None) and is_causal:
        causal = causal_mask(ops.shape(query)[1], ops.shape(key)[1])
        mask, is_causal = merge_masks(mask, causal[None, None]), False
    if bias is None and mask is not None and _eager_torch():
        output = _attend_unpadded_rows(
            query, key, value, mask, scale, flash_attention
        )
        return output, None
    output = _kernel(
        query, key, value, mask, bias, is_causal, scale, flash_attention
    )
    return _zero_empty_rows(output, mask), None


def _zero_empty_rows(output, mask):
    """Zeros for the query rows with no visible key (`mask` may be None)."""
    if mask is None:
        return output
    row_has_key = ops.any(mask, axis=-1, keepdims=True)  # (B, H, T, 1)
    return ops.where(ops.swapaxes(row_has_key, 1, 2), output, 0.0)


def _kernel(query, key, value, mask, bias, is_causal, scale, flash_attention):
    """`keras.ops.dot_product_attention` for any key/value heads and head
    sizes, the mask folded into the bias when there is one."""
    groups = query.shape[2] // key.shape[2]
    if groups > 1:
        key = ops.repeat(key, groups, axis=2)
        value = ops.repeat(value, groups, axis=2)
    key_size, value_size = query.shape[-1], value.shape[-1]
    size = max(key_size, value_size)
    query, key, value = (
        _pad_last_axis(tensor, size) for tensor in (query, key, value)
    )
    if flash_attention is None:
        flash_attention = keras.config.is_flash_attention_enabled()
    if flash_attention is None and keras.backend.backend() == "torch":
        # On torch, None makes Keras probe its flash kernel in a way
        # torch.compile cannot trace; False lets torch's own dispatcher pick
        # the kernel (flash included) instead.
        flash_attention = False
    kernel_mask = mask
    if bias is not None:
        bias = ops.cast(bias, query.dtype)
        if mask is not None:
            bias = ops.where(mask, bias, masked_logit(query.dtype))
        kernel_mask = None
    output = ops.dot_product_attention(
        query,
        key,
        value,
        bias=bias,
        mask=kernel_mask,
        scale=scale,
        is_causal=is_causal,
        flash_attention=flash_attention,
    )
    return output[..., :value_size]


def _pad_last_axis(tensor, size):
    """`tensor` zero-padded on its last axis to `size` entries."""
    missing = size - tensor.shape[-1]
    if missing == 0:
        return tensor
    return ops.pad(
        tensor, ((0, 0),) * (len(tensor.shape) - 1) + ((0, missing),)
    )


# Backend fast path (torch, eager): the package's only import of torch.
# Its portable twin is the untrimmed `_kernel` call of `fused_path`, which
# torch's compiler and the other backends run; tests/test_attention_paths.py
# compares compiled with eager calls, and both with the NumPy oracle.


def torch_compiling():
    """True while torch's compiler traces the call (`torch.compile`,
    `torch.export`, torch's ONNX export); False on other backends.

    The package's one backend fast path reads it (`_eager_torch`), and
    "auto" picks only paths that torch's exporters trace while it holds.
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def _eager_torch():
    """Backend fast path, torch only: True when running eagerly (not under
    `torch.compile`), where a shape may depend on the data. Its portable
    twin is the untrimmed kernel call that every other case takes."""
    return keras.backend.backend() == "torch" and not torch_compiling()


# A batch of at most SPLIT_ROWS_UP_TO rows on the CPU runs one call per row
# when that leaves at most SPLIT_ROWS_AT_SHARE of the keys the whole batch,
# trimmed to its longest row, would visit. One call per row skips the
# shorter rows' padding but pays each call's own cost: a gain for a few
# rows of unequal lengths, a loss for many rows or nearly equal ones
# (README, "Attention implementations").
SPLIT_ROWS_UP_TO = 4
SPLIT_ROWS_AT_SHARE = 0.95


def _attend_unpadded_rows(query, key, value, mask, scale, flash_attention):
    """The kernel on each row's keys up to the last one it may see.

    Exact: the keys cut off get zero probability everywhere (and zero
    gradient). The batch runs as one call trimmed to its longest row, or,
    when it is small, on the CPU, and the rows' lengths differ enough, one
    call per row. A call whose remaining mask is all True runs with no
    mask (torch's kernels then neither widen a boolean mask to floats nor
    read it, and no row is empty). At least one key is kept, so a fully
    masked row still goes through the kernel.
    """
    # Per row and key: whether some, and whether every, (head, query)
    # pair may see it. `(B, S)` each.
    seen_by_some, seen_by_all = (
        ops.convert_to_numpy(reduce(mask, axis=(1, 2)))
        for reduce in (ops.any, ops.all)
    )
    lengths = [
        max(int(seen.nonzero()[0][-1]) + 1 if seen.any() else 0, 1)
        for seen in seen_by_some
    ]
    longest = max(lengths)
    splits = (
        1 < len(lengths) <= SPLIT_ROWS_UP_TO
        # Many small calls would leave a GPU idle. (`device` is a str on
        # NumPy arrays, a `torch.device` on tensors.)
        and str(getattr(query, "device", "cpu")).startswith("cpu")
        and sum(lengths) <= SPLIT_ROWS_AT_SHARE * len(lengths) * longest
    )
    calls = (
        [(slice(row, row + 1), length) for row, length in enumerate(lengths)]
        if splits
        else [(slice(None), longest)]
    )
    outputs = [
        _trimmed_call(
            tuple(tensor[rows] for tensor in (query, key, value, mask)),
            length,
            seen_by_all[rows, :length].all(),
            scale,
            flash_attention,
        )
        for rows, length in calls
    ]
    return outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, 0)


def _trimmed_call(tensors, length, hides_nothing, scale, flash_attention):
    """The kernel on the first `length` keys of `(query, key, value,
    mask)`, with no mask when it hides none of them."""
    query, key, value, mask = tensors
    if length < ops.shape(key)[1]:
        key, value = key[:, :length], value[:, :length]
        mask = mask[..., :length]
    if hides_nothing:
        mask = None
    output = _kernel(
        query, key, value, mask, None, False, scale, flash_attention
    )
    return _zero_empty_rows(output, mask)
