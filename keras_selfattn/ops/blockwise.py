"""The blockwise path: an online softmax over blocks of keys.

The forward pass walks over the keys one block at a time, keeping per query
row the running maximum logit, the running softmax denominator and the
running weighted sum of values (Milakov & Gimelshein 2018; Dao et al.,
"FlashAttention", 2022). Only one `(B, H, T, block)` tile of logits exists
at a time, so memory grows with `T * block`, not `T * S`.

The backward pass is a custom gradient: it keeps the output and the
log-sum-exp of every row from the forward pass and recomputes each tile of
probabilities from them, so it too needs O(T * block) memory instead of the
O(T * S) that automatic differentiation through the loop would store.

`blockwise_attention` takes the `(B, T, H, D)` layout of the other paths;
the kernel below it is float32 and heads-first: query `(B, H, T, D)`, key
`(B, H, S, D)`, value `(B, H, S, Dv)`, with `S` a multiple of the block
size.
"""

from keras import ops

from keras_selfattn.ops.einsum import SOFTMAX_DTYPE, einsum_attention
from keras_selfattn.ops.masks import MASKED_LOGIT, merge_masks

# Finite float32 maximum: an empty row's log-sum-exp never makes inf - inf.
_EMPTY_ROW_LSE = float(3.4028234663852886e38)


def blockwise_attention(
    query,
    key,
    value,
    mask,
    is_causal,
    scale,
    block_size,
    sliding_window=None,
):
    """The blockwise path on `(B, T, H, D)` inputs, in the value's dtype.

    `mask` is boolean, rank 4, broadcastable to `(B, H, T, S)`, or None;
    `sliding_window` (or None) keeps the keys `j` with `|i - j| < window`.
    Keys are padded up to whole blocks of `block_size` (fewer when there
    are fewer keys), the padding masked; a key length known only at run
    time is padded in-graph.
    """
    query_length, key_length = query.shape[1], key.shape[1]
    if query_length is None:
        query_length = ops.shape(query)[1]
    dynamic = key_length is None
    if dynamic:
        key_length = ops.shape(key)[1]
        if key_length is None:  # symbolic inputs: only the output spec
            output, _ = einsum_attention(
                query, key, value, mask, is_causal, scale
            )
            return output
    else:
        block_size = min(block_size, key_length)
    padding = (-key_length) % block_size
    groups = query.shape[2] // key.shape[2]
    dtype = value.dtype
    query = ops.cast(query, SOFTMAX_DTYPE) * ops.cast(scale, SOFTMAX_DTYPE)
    query = _heads_first(query, 1, 0)
    key = _heads_first(key, groups, padding)
    value = _heads_first(value, groups, padding)
    pads_keys = dynamic or padding > 0
    if pads_keys and mask is not None and mask.shape[-1] != 1:
        mask = ops.pad(mask, ((0, 0), (0, 0), (0, 0), (0, padding)))
    masking = _BlockMasking(
        mask,
        query_length,
        key_length=key_length if pads_keys else None,
        is_causal=is_causal,
        sliding_window=sliding_window,
        block_size=block_size,
        num_blocks=_num_blocks(key, block_size),
    )
    output = _online_softmax_attention(query, key, value, masking)
    return ops.cast(ops.swapaxes(output, 1, 2), dtype)


class _BlockMasking:
    """What the key blocks of the loop must mask: the user's mask and the
    positional rules (causal, sliding window, padded keys).

    `mask(start)` is the boolean tile mask of the block of keys from
    `start`, broadcastable to `(B, H, T, block)`, or with `keys_major` to
    `(B, H, block, T)` (the backward's layout; cut from a user mask
    transposed once, not tile by tile). `visible` is the range of blocks
    some query may see, found once for both passes.
    """

    def __init__(
        self,
        mask,
        query_length,
        key_length,
        is_causal,
        sliding_window,
        block_size,
        num_blocks,
        keys_major=False,
        visible=None,
    ):
        self.user_mask = mask  # keys last
        self.query_length = query_length
        self.key_length = key_length  # None: no padded keys to mask
        self.is_causal = is_causal
        self.sliding_window = sliding_window
        self.block_size = block_size
        self.keys_major = keys_major
        self._key_axis = -2 if keys_major else -1
        self._tiles_of = mask
        if keys_major and mask is not None:
            self._tiles_of = ops.swapaxes(mask, -1, -2)
        self.visible = visible
        if visible is None and self.masks_anything:
            self.visible = self._visible_blocks(num_blocks)

    def transposed(self):
        """The same masking with keys-major tiles."""
        return _BlockMasking(
            self.user_mask,
            self.query_length,
            self.key_length,
            self.is_causal,
            self.sliding_window,
            self.block_size,
            num_blocks=None,
            keys_major=not self.keys_major,
            visible=self.visible,
        )

    @property
    def masks_anything(self):
        return (
            self.user_mask is not None
            or self.is_causal
            or self.sliding_window is not None
            or self.key_length is not None
        )

    def mask(self, start):
        source, axis = self._tiles_of, self._key_axis
        parts = [source]
        if source is not None and source.shape[axis] != 1:
            shape, at = list(ops.shape(source)), [0, 0, 0, 0]
            shape[axis], at[axis] = self.block_size, start
            parts = [ops.slice(source, at, shape)]
        columns = start + ops.arange(self.block_size, dtype="int32")
        rows = ops.arange(self.query_length, dtype="int32")
        if self.keys_major:
            columns, rows = columns[:, None], rows[None, :]
        else:
            columns, rows = columns[None, :], rows[:, None]
        if self.is_causal:
            parts.append(rows >= columns)
        if self.sliding_window is not None:
            parts.append(ops.abs(rows - columns) < self.sliding_window)
        if self.key_length is not None:
            parts.append(columns < self.key_length)
        return merge_masks(*parts)

    def _visible_blocks(self, num_blocks):
        """int32 scalars `(first, stop)`: the blocks outside
        `first .. stop - 1` are masked for every query (`first == stop`
        when all are). Each rule is checked on its own, so a block that
        only their combination hides stays inside (masked, still exact).
        """
        first_key = ops.arange(num_blocks, dtype="int32") * self.block_size
        last_row = self.query_length - 1
        seen = []
        if self.user_mask is not None:
            seen.append(self._user_mask_seen(num_blocks))
        if self.is_causal:  # key j visible to query i when j <= i
            seen.append(first_key <= last_row)
        if self.sliding_window is not None:  # |i - j| < window
            seen.append(first_key - last_row < self.sliding_window)
        if self.key_length is not None:
            seen.append(first_key < self.key_length)
        seen = ops.broadcast_to(merge_masks(*seen), (num_blocks,))
        index = ops.arange(num_blocks, dtype="int32")
        first = ops.min(ops.where(seen, index, num_blocks))
        stop = ops.max(ops.where(seen, index + 1, 0))
        return first, ops.maximum(first, stop)

    def _user_mask_seen(self, num_blocks):
        mask = self.user_mask
        if mask.shape[-1] == 1:  # the same for every key
            return ops.any(mask)
        keys_seen = ops.any(mask, axis=(0, 1, 2))  # `(S,)`
        blocks = ops.reshape(keys_seen, (num_blocks, self.block_size))
        return ops.any(blocks, axis=1)


def _heads_first(tensor, groups, padding):
    """`(B, L, Hkv, D)` -> float32 `(B, Hkv * groups, L + padding, D)`."""
    tensor = ops.cast(tensor, SOFTMAX_DTYPE)
    if groups > 1:
        tensor = ops.repeat(tensor, groups, axis=2)
    tensor = ops.transpose(tensor, (0, 2, 1, 3))
    if isinstance(padding, int) and padding == 0:
        return tensor
    return ops.pad(tensor, ((0, 0), (0, 0), (0, padding), (0, 0)))


def _online_softmax_attention(query, key, value, masking):
    """softmax(query key^T) value, one key block at a time.

    Args:
        query: `(B, H, T, D)` float32, already multiplied by the scale.
        key: `(B, H, S, D)` float32, `S` a multiple of the block size.
        value: `(B, H, S, Dv)` float32.
        masking: the `_BlockMasking` of the keys.

    Returns:
        `(B, H, T, Dv)` float32; rows with no allowed key are zeros.
        Differentiable in query, key and value with O(T * block_size)
        memory.
    """

    @ops.custom_gradient
    def attend(query, key, value):
        output, log_sum_exp = _forward(query, key, value, masking)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            saved = (query, key, value, output, log_sum_exp)
            return _backward(saved, upstream, masking)

        return output, grad

    return attend(query, key, value)


def _num_blocks(key, block_size):
    length = key.shape[2]
    if length is None:  # dynamic length (TensorFlow graphs): loop in-graph
        return ops.shape(key)[2] // block_size
    return length // block_size


def _key_block(tensor, start, block_size):
    """Keys `start .. start + block_size - 1` of a `(B, H, S, D)` tensor."""
    batch, heads, _, depth = ops.shape(tensor)
    return ops.slice(
        tensor, (0, 0, start, 0), (batch, heads, block_size, depth)
    )


def _masked_logits(logits, mask):
    """A tile of logits with MASKED_LOGIT where `mask` is False."""
    if mask is None:
        return logits
    return ops.where(mask, logits, MASKED_LOGIT)


def _forward(query, key, value, masking):
    """Output `(B, H, T, Dv)` and row log-sum-exp `(B, H, T, 1)`.

    A masked logit is MASKED_LOGIT, so its probability underflows to 0
    once its row has seen an allowed key. Until then the row's maximum is
    MASKED_LOGIT itself and its masked entries count as 1; the first
    allowed key rescales that sum and output by exp(MASKED_LOGIT - max) = 0,
    and a row that never sees one is found by its maximum and set to 0.
    """
    block_size = masking.block_size
    rows = ops.shape(query)[:3] + (1,)
    output = ops.zeros(ops.shape(query)[:3] + (ops.shape(value)[3],))
    row_max = ops.full(rows, MASKED_LOGIT)
    row_sum = ops.zeros(rows)

    def attend_block(start, mask, carry):
        output, row_max, row_sum = carry
        key_block = _key_block(key, start, block_size)
        logits = _masked_logits(
            ops.matmul(query, ops.swapaxes(key_block, -1, -2)), mask
        )
        new_max = ops.maximum(row_max, ops.max(logits, -1, keepdims=True))
        probs = ops.exp(logits - new_max)
        rescale = ops.exp(row_max - new_max)
        row_sum = row_sum * rescale + ops.sum(probs, -1, keepdims=True)
        output = output * rescale + ops.matmul(
            probs, _key_block(value, start, block_size)
        )
        return output, new_max, row_sum

    output, row_max, row_sum = _visit_blocks(
        attend_block,
        masking,
        _num_blocks(key, block_size),
        (output, row_max, row_sum),
    )
    has_keys = row_max > MASKED_LOGIT
    safe_sum = ops.where(has_keys, row_sum, 1.0)
    output = ops.where(has_keys, output / safe_sum, 0.0)
    log_sum_exp = ops.where(
        has_keys, row_max + ops.log(safe_sum), _EMPTY_ROW_LSE
    )
    return output, log_sum_exp


def _backward(saved, upstream, masking):
    """Gradients of query, key and value, recomputing each tile.

    Tiles are kept keys-major, `(B, H, block, T)`: every product then reads
    its large operands in row-major order, and only the whole-length
    query and upstream gradient are transposed, once per call, not once
    per block. (Reading a `(T, block)` tile down its columns made the CPU
    kernels ~1.6x slower.) `saved` is the forward's
    `(query, key, value, output, log_sum_exp)`.
    """
    query, key, value, output, log_sum_exp = saved
    block_size = masking.block_size
    upstream = ops.cast(upstream, "float32")
    # d softmax: dS = P * (dP - rowsum(dO * O)); per-row terms as
    # `(B, H, 1, T)`, to broadcast over keys-major tiles.
    row_dot = ops.swapaxes(
        ops.sum(upstream * output, -1, keepdims=True), -1, -2
    )
    log_sum_exp = ops.swapaxes(log_sum_exp, -1, -2)
    query_t, upstream_t = (
        ops.swapaxes(tensor, -1, -2) for tensor in (query, upstream)
    )
    grad_query_t = ops.zeros_like(query_t)
    grad_key = ops.zeros_like(key)
    grad_value = ops.zeros_like(value)

    def backward_block(start, mask, carry):
        grad_query_t, grad_key, grad_value = carry
        key_block = _key_block(key, start, block_size)
        logits_t = _masked_logits(ops.matmul(key_block, query_t), mask)
        # A masked logit gives exactly 0: MASKED_LOGIT minus a finite
        # log-sum-exp, or minus an empty row's _EMPTY_ROW_LSE, underflows.
        probs_t = ops.exp(logits_t - log_sum_exp)
        grad_value_block = ops.matmul(probs_t, upstream)
        grad_probs_t = ops.matmul(
            _key_block(value, start, block_size), upstream_t
        )
        grad_logits_t = probs_t * (grad_probs_t - row_dot)
        grad_query_t = grad_query_t + ops.einsum(
            "bhsd,bhst->bhdt", key_block, grad_logits_t
        )
        grad_key_block = ops.matmul(grad_logits_t, query)
        at = (0, 0, start, 0)
        grad_key = ops.slice_update(grad_key, at, grad_key_block)
        grad_value = ops.slice_update(grad_value, at, grad_value_block)
        return grad_query_t, grad_key, grad_value

    grad_query_t, grad_key, grad_value = _visit_blocks(
        backward_block,
        masking.transposed(),
        _num_blocks(key, block_size),
        (grad_query_t, grad_key, grad_value),
    )
    return ops.swapaxes(grad_query_t, -1, -2), grad_key, grad_value


def _visit_blocks(block_step, masking, num_blocks, carry):
    """Run `carry = block_step(start, mask, carry)` over the key blocks from
    the first to the last that some query may see, each with its tile mask
    (None when nothing is masked).

    A block masked for every query row changes neither the running softmax
    nor any gradient (its probabilities are all zero), so leaving it out is
    exact: the padding of a padded batch, the padding up to a whole block
    and the keys past every query's window cost nothing. The loop body has
    no branch: on XLA's CPU backend a branch over the carried `(B, H, T,
    D)` tensors costs more than masking every tile.
    """
    block_size = masking.block_size
    if not masking.masks_anything:
        return ops.fori_loop(
            0,
            num_blocks,
            lambda index, carry: block_step(index * block_size, None, carry),
            carry,
        )
    first, stop = masking.visible

    def step(index, carry):
        start = index * block_size
        return block_step(start, masking.mask(start), carry)

    return ops.fori_loop(first, stop, step, carry)
