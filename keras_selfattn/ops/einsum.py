"""The einsum path: materialises the `(B, H, T, S)` probabilities.

The only path that applies attention dropout or returns the
probabilities. Logits and softmax are float32 whatever the input dtype.
"""

import keras
from keras import ops

from keras_selfattn.ops.masks import MASKED_LOGIT, causal_mask, merge_masks

SOFTMAX_DTYPE = "float32"


def einsum_path(problem):
    """Output `(B, T, H, Dv)` and probabilities `(B, H, T, S)` of an
    `AttentionProblem`, both in the value's dtype: the biases are added
    to the logits before the soft cap, the window and causal masks merged
    into the mask, and dropout applied to the probabilities used (not to
    the ones returned)."""
    return einsum_in_parts(problem, (problem.key,), (problem.value,))


def einsum_in_parts(problem, keys, values):
    """`einsum_path` over keys and values given in parts along the key
    axis (a cache and the positions a call adds to it), never
    concatenated: the parts' logits side by side, the output the sum of
    each part's. `problem`'s masks and biases span all the keys."""
    query = problem.query
    lengths = [ops.shape(key)[1] for key in keys]
    key_length = lengths[0] if len(keys) == 1 else sum(lengths)
    mask = problem.banded_mask(key_length)
    if problem.is_causal:
        mask = merge_masks(mask, causal_mask(ops.shape(query)[1], key_length))
    query = ops.multiply(query, ops.cast(problem.scale, query.dtype))
    logits = [_attention_logits(query, key) for key in keys]
    logits = logits[0] if len(keys) == 1 else ops.concatenate(logits, -1)
    if problem.attention_bias is not None:
        logits = logits + ops.cast(problem.attention_bias, SOFTMAX_DTYPE)
    if problem.position_bias is not None:
        logits = logits + problem.position_bias.full(
            ops.shape(query)[1], key_length
        )
    logits = cap_logits(logits, problem.logit_soft_cap)
    probs = _masked_softmax(logits, mask)
    weights = probs
    if problem.dropout_rate > 0.0:
        weights = keras.random.dropout(
            weights, problem.dropout_rate, seed=problem.seed
        )
    weights = ops.cast(weights, values[0].dtype)
    if len(keys) == 1:
        return _attend(weights, values[0]), ops.cast(probs, values[0].dtype)
    output, start = None, 0
    for length, value in zip(lengths, values):
        attended = _attend(weights[..., start : start + length], value)
        output = attended if output is None else output + attended
        start = start + length
    return output, ops.cast(probs, values[0].dtype)


def cap_logits(logits, logit_soft_cap):
    """`cap * tanh(logits / cap)` (Gemma 2's soft cap), or `logits` when
    the cap is None."""
    if logit_soft_cap is None:
        return logits
    return logit_soft_cap * ops.tanh(logits / logit_soft_cap)


def _attention_logits(query, key):
    """Float32 logits `(B, H, T, S)`; grouped query heads share a key head.

    Query and key are widened to float32 first, so half-precision inputs
    get float32 products and sums (as fused kernels accumulate) and the
    logits are never rounded to 16 bits. Batched matmuls, not einsums:
    the same program under XLA, and several times faster in onnxruntime,
    whose Einsum kernel transposes its operands on every call.
    """
    query = ops.cast(query, SOFTMAX_DTYPE)
    key = ops.cast(key, SOFTMAX_DTYPE)
    if _reads_keys_as_stored(query):
        return _logits_by_key_rows(query, key)
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    depth = query.shape[3]
    keys_last = ops.transpose(key, (0, 2, 3, 1))  # `(B, Hkv, D, S)`
    if num_heads == num_kv_heads:
        return ops.matmul(ops.transpose(query, (0, 2, 1, 3)), keys_last)
    groups = num_heads // num_kv_heads
    query = _split_heads(query, num_kv_heads, groups)
    query = ops.transpose(query, (0, 2, 3, 1, 4))  # `(B, Hkv, G, T, D)`
    length, key_length = query.shape[3], key.shape[1]
    if not _known(length, key_length):  # a broadcast over the group
        logits = ops.matmul(query, ops.expand_dims(keys_last, 2))
        return _merge_group_axes(logits, num_heads)
    # A group's heads and positions as the rows of one product with their
    # key head: a broadcast would copy the keys once per query head.
    query = ops.reshape(query, (-1, num_kv_heads, groups * length, depth))
    logits = ops.matmul(query, keys_last)  # `(B, Hkv, G * T, S)`
    return ops.reshape(logits, (-1, num_heads, length, key_length))


def _masked_softmax(logits, mask):
    """Softmax over keys; masked entries and all-masked rows are zero.

    The mask is applied at its own (broadcast) shape: masked logits are
    capped at `MASKED_LOGIT` by a minimum, and rows with no key zeroed by
    a product; a `where` over the whole `(B, H, T, S)` costs several
    times more in onnxruntime. Once a row has a key, its masked entries'
    probabilities underflow to exactly 0.
    """
    if logits.shape[-1] == 1:
        probs = ops.ones_like(logits)  # one key: softmax is constant 1
    else:
        if mask is not None:
            ceiling = ops.where(mask, -MASKED_LOGIT, MASKED_LOGIT)
            logits = ops.minimum(logits, ceiling)
        probs = ops.softmax(logits, axis=-1)
    if mask is None:
        return probs
    has_keys = ops.any(mask, axis=-1, keepdims=True)  # one key: the mask
    return probs * ops.cast(has_keys, probs.dtype)


def _attend(weights, value):
    """Weights `(B, H, T, S)` x value `(B, S, Hkv, Dv)` -> `(B, T, H, Dv)`."""
    if _reads_keys_as_stored(weights, query_axis=2, head_axis=1):
        return _attend_by_value_rows(weights, value)
    num_heads, num_kv_heads = weights.shape[1], value.shape[2]
    value = ops.transpose(value, (0, 2, 1, 3))  # `(B, Hkv, S, Dv)`
    if num_heads == num_kv_heads:
        output = ops.matmul(weights, value)
    elif not _known(*weights.shape[2:]):  # a broadcast over the group
        groups = num_heads // num_kv_heads
        shape = ops.shape(weights)
        weights = ops.reshape(
            weights, (-1, num_kv_heads, groups, shape[2], shape[3])
        )
        output = ops.matmul(weights, ops.expand_dims(value, 2))
        shape = ops.shape(output)
        output = ops.reshape(output, (-1, num_heads, shape[3], shape[4]))
    else:  # a group's heads and positions as the rows of one product
        length, key_length = weights.shape[2:]
        rows = (num_heads // num_kv_heads) * length
        weights = ops.reshape(weights, (-1, num_kv_heads, rows, key_length))
        output = ops.matmul(weights, value)  # `(B, Hkv, G * T, Dv)`
        output = ops.reshape(output, (-1, num_heads, length, value.shape[-1]))
    return ops.transpose(output, (0, 2, 1, 3))


# Query rows (positions x heads) up to which XLA multiplies by the keys
# and values as they are stored (`_reads_keys_as_stored`).
FEW_QUERY_ROWS = 64


def _reads_keys_as_stored(tensor, query_axis=1, head_axis=2):
    """Whether to multiply by the keys and values in their stored layout,
    `(B, S, Hkv * D)` rows, with a block-diagonal query: on XLA (JAX,
    TensorFlow), for at most `FEW_QUERY_ROWS` query rows (a decoding
    step). XLA's CPU products otherwise copy the keys into a head-major
    layout first, which costs several times the product itself when the
    keys are a long cache; the block-diagonal query wastes `Hkv` times
    the (few) query rows' multiplications instead."""
    if keras.backend.backend() not in ("jax", "tensorflow"):
        return False
    length, heads = tensor.shape[query_axis], tensor.shape[head_axis]
    return _known(length, heads) and length * heads <= FEW_QUERY_ROWS


def _logits_by_key_rows(query, key):
    """`_attention_logits` as one product of the keys' rows `(B, S, Hkv *
    D)` with a block-diagonal query `(B, Hkv * D, T * H)`: each query
    head's column is zero outside its key head's `D` rows."""
    length, num_heads, depth = query.shape[1:]
    num_kv_heads = key.shape[2]
    groups = num_heads // num_kv_heads
    query = ops.reshape(query, (-1, length, num_kv_heads, groups, depth))
    query = ops.transpose(query, (0, 4, 1, 2, 3))  # `(B, D, T, Hkv, G)`
    own_head = ops.eye(num_kv_heads, dtype=query.dtype)
    blocks = query[:, None] * own_head[:, None, None, :, None]
    blocks = ops.reshape(blocks, (-1, num_kv_heads * depth, length * num_heads))
    keys = ops.reshape(key, (-1, ops.shape(key)[1], num_kv_heads * depth))
    logits = ops.matmul(keys, blocks)  # `(B, S, T * H)`
    logits = ops.reshape(logits, (-1, ops.shape(key)[1], length, num_heads))
    return ops.transpose(logits, (0, 3, 2, 1))


def _attend_by_value_rows(weights, value):
    """`_attend` as one product of the weights `(B, T * H, S)` with the
    values' rows `(B, S, Hkv * Dv)`, keeping each query head's own value
    head of the result."""
    num_heads, length = weights.shape[1:3]
    num_kv_heads, depth = value.shape[2:]
    groups = num_heads // num_kv_heads
    weights = ops.transpose(weights, (0, 2, 1, 3))  # `(B, T, H, S)`
    key_length = ops.shape(weights)[3]
    weights = ops.reshape(weights, (-1, length * num_heads, key_length))
    rows = ops.reshape(value, (-1, ops.shape(value)[1], num_kv_heads * depth))
    output = ops.matmul(weights, rows)  # `(B, T * H, Hkv * Dv)`
    output = ops.reshape(
        output, (-1, length, num_kv_heads, groups, num_kv_heads, depth)
    )
    own_head = ops.eye(num_kv_heads, dtype=output.dtype)
    output = ops.sum(output * own_head[:, None, :, None], axis=4)
    return ops.reshape(output, (-1, length, num_heads, depth))


def _split_heads(query, num_kv_heads, groups):
    shape = ops.shape(query)
    return ops.reshape(query, (-1, shape[1], num_kv_heads, groups, shape[3]))


def _merge_group_axes(logits, num_heads):
    shape = ops.shape(logits)
    return ops.reshape(logits, (-1, num_heads, shape[3], shape[4]))


def _known(*sizes):
    """Whether `sizes` are ints (not unknown, not symbolic: exporters
    cannot map a reshape to a product of symbolic sizes)."""
    return all(isinstance(size, int) for size in sizes)
