"""The fused path: `keras.ops.dot_product_attention`, the backend's kernel.

Torch's fused CPU/GPU kernels, cuDNN flash attention on JAX GPUs. Holds
the one backend fast path of the package: on eager torch the keys that no
query may attend to are trimmed off the tail first.
"""

import keras
from keras import ops

from keras_selfattn.ops.masks import causal_mask, masked_logit, merge_masks


def fused_attention(
    query,
    key,
    value,
    mask,
    is_causal,
    scale,
    flash_attention=None,
    bias=None,
    position_bias=None,
):
    """`keras.ops.dot_product_attention`, with empty rows set to zeros.

    `mask` is boolean, rank 4, broadcastable to `(B, H, T, S)`, or None;
    `flash_attention` as in `keras.ops.dot_product_attention` (None also
    honours `keras.config.disable_flash_attention()`). `bias` (rank 4,
    broadcastable, or None) and `position_bias` (a `PositionBias`, built
    whole here) are added to the logits; with either, the mask is folded
    into that bias (torch's kernel takes a bias or a mask, not both).
    Not every backend's kernel takes grouped key/value heads or a value
    size other than the key size, so key/value heads are repeated and the
    head sizes zero-padded to one size (neither changes the result). The
    kernels give a row whose keys are all masked the mean of the values;
    `ops.where` replaces it with zeros, which also zeroes the gradient
    flowing into that row.
    """
    if position_bias is not None:
        full = position_bias.full(ops.shape(query)[1], ops.shape(key)[1])
        bias = full[None] if bias is None else bias + full[None]
    if (mask is not None or bias is not None) and is_causal:
        causal = causal_mask(ops.shape(query)[1], ops.shape(key)[1])
        mask, is_causal = merge_masks(mask, causal[None, None]), False
    trims = bias is None and mask is not None and mask.shape[-1] != 1
    if trims and _eager_torch():
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
