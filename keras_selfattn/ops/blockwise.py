"""The blockwise path: an online softmax over tiles of queries and keys.

The forward pass walks over the keys one block at a time, keeping per query
row the running maximum logit, the running softmax denominator and the
running weighted sum of values (Milakov & Gimelshein 2018; Dao et al.,
"FlashAttention", 2022). Only one tile of logits exists at a time, so
memory grows with the tile, not with `T * S`.

Without a causal mask or a sliding window a tile holds every query row
(of a long sequence, a block of `UNBANDED_QUERY_BLOCK`) and one block of
keys. With either, the queries are cut into blocks too, and each query
block visits only the key blocks inside its band: a window `w` costs
`L * w`, not `L^2`, and a causal mask about half. (Where the query length
is known only at run time, as in an exported graph, the band is masked
tile by tile over one block of all the rows: exact, at the cost of
`L^2`.)

Biases (the user's `attention_bias`, a `PositionBias` such as ALiBi or
T5's) and the logit soft cap are applied tile by tile; a position bias is
computed from the tile's positions, never held as a `(T, S)` tensor.

The backward pass is a custom gradient: it keeps the output and the
log-sum-exp of every row from the forward pass and recomputes each tile of
probabilities from them, so it too needs memory linear in the length,
instead of the O(T * S) that automatic differentiation through the loop
would store. It also gives the gradients of the bias and of the position
bias' parameters.

`blockwise_path` takes the `AttentionProblem` of the other paths;
the kernel below it is float32 and heads-first: query `(B, H, T, D)`, key
`(B, H, S, D)`, value `(B, H, S, Dv)`, with `T` and `S` multiples of their
block sizes.
"""

import functools
from typing import NamedTuple

import keras
from keras import ops

from keras_selfattn._validation import static_shape
from keras_selfattn.ops.einsum import SOFTMAX_DTYPE, cap_logits, einsum_path
from keras_selfattn.ops.masks import MASKED_LOGIT, index_range, merge_masks

# Finite float32 maximum: an empty row's log-sum-exp never makes inf - inf.
_EMPTY_ROW_LSE = float(3.4028234663852886e38)
# Keys per block (twice that from LARGE_BLOCKS_FROM_KEYS keys); the sizes
# below were chosen by `benchmarks/attention.py` (README, "Benchmarks").
BLOCK_SIZE = 128
# Query rows per block when a causal mask or a window bounds the keys: a
# query block and its band of key blocks make one tile loop (a window w
# costs about (QUERY_BLOCK_SIZE + 2w) keys per query row).
QUERY_BLOCK_SIZE = 256
# Long sequences (static lengths): from this many keys the key blocks are
# twice BLOCK_SIZE (fatter products, half the loop steps), and without a
# band, from UNBANDED_QUERY_BLOCKS_FROM query rows the queries are cut
# into blocks of UNBANDED_QUERY_BLOCK rows, so that a tile stays small
# enough for the caches.
LARGE_BLOCKS_FROM_KEYS = 2048
UNBANDED_QUERY_BLOCK = 1024
UNBANDED_QUERY_BLOCKS_FROM = 4096


def blockwise_path(problem):
    """The blockwise path on an `AttentionProblem`: `(output, None)`, the
    output in the value's dtype.

    The window keeps the keys `j` with `|i - j| < window`, tile by tile;
    the biases are added to the logits before the soft cap. Keys are
    padded up to whole blocks of `BLOCK_SIZE` (twice that from
    LARGE_BLOCKS_FROM_KEYS keys, fewer when there are fewer keys), and
    tiled queries up to whole query blocks, the padding masked; a length
    known only at run time is padded in-graph.
    """
    query, key, value = problem.query, problem.key, problem.value
    if ops.shape(key)[1] is None:  # symbolic inputs: only the output spec
        return einsum_path(problem)[0], None
    key_length, block_size, dynamic_keys = _key_blocks(key)
    banded = problem.is_causal or problem.sliding_window is not None
    query_length, query_block, query_padding, num_query_blocks = _query_blocks(
        query, banded
    )
    key_padding = _padding(key_length, block_size)
    groups = query.shape[2] // key.shape[2]
    scale = ops.cast(problem.scale, SOFTMAX_DTYPE)
    query = ops.cast(query, SOFTMAX_DTYPE) * scale
    query = _heads_first(query, 1, query_padding)
    key = _heads_first(key, groups, key_padding)
    value_dtype = value.dtype
    value = _heads_first(value, groups, key_padding)
    mask, bias = problem.mask, problem.attention_bias
    if mask is not None:
        mask = _pad_tiles_source(mask, query_padding, key_padding, False)
    if bias is not None:
        bias = _pad_tiles_source(
            ops.cast(bias, SOFTMAX_DTYPE), query_padding, key_padding, 0.0
        )
    tiling = _Tiling(
        mask=mask,
        query_length=query_length,
        key_length=key_length,
        pads_keys=dynamic_keys or key_padding > 0,
        is_causal=problem.is_causal,
        sliding_window=problem.sliding_window,
        query_block=query_block,
        block_size=block_size,
        num_query_blocks=num_query_blocks,
        num_blocks=_num_blocks(key, block_size),
        position_bias=problem.position_bias,
        logit_soft_cap=problem.logit_soft_cap,
    )
    output = _online_softmax_attention(query, key, value, bias, tiling)
    if not _is_zero(query_padding):
        output = output[:, :, :query_length]
    return ops.cast(ops.swapaxes(output, 1, 2), value_dtype), None


def _key_blocks(key):
    """`(key_length, block_size, dynamic)`: the number of keys (a tensor
    when known only at run time, `dynamic`) and the keys per block."""
    key_length = static_shape(key)[1]
    if key_length is None:
        return ops.shape(key)[1], BLOCK_SIZE, True
    block_size = BLOCK_SIZE
    if key_length >= LARGE_BLOCKS_FROM_KEYS:
        block_size *= 2
    return key_length, min(block_size, key_length), False


def _query_blocks(query, banded):
    """`(query_length, query_block, query_padding, num_query_blocks)`."""
    query_length = static_shape(query)[1]
    query_block = _query_block_size(query_length, banded)
    if query_block is None:
        # One block of all the query rows. A band over a length known only
        # at run time (an exported graph) is masked tile by tile instead:
        # the loop over query blocks would need writes or stacked outputs
        # that LiteRT's built-in ops lack.
        query_length = ops.shape(query)[1]
        return query_length, query_length, 0, 1
    query_padding = _padding(query_length, query_block)
    num_query_blocks = (query_length + query_padding) // query_block
    return query_length, query_block, query_padding, num_query_blocks


def _query_block_size(query_length, banded):
    """Query rows per block, or None for one block of all the rows."""
    if query_length is None:
        return None
    if banded:
        return min(QUERY_BLOCK_SIZE, query_length)
    if query_length >= UNBANDED_QUERY_BLOCKS_FROM:
        return UNBANDED_QUERY_BLOCK
    return None


def _padding(length, multiple):
    """What `length` (an int or a scalar tensor) lacks to a multiple of
    `multiple`. Written so that exported graphs keep it right: no
    remainder of a negative number (ONNX divides integers towards zero),
    and a padded length that JAX's symbolic shapes can prove holds a
    whole block."""
    return (length + multiple - 1) // multiple * multiple - length


def _is_zero(value):
    """Whether `value` is the Python int 0 (a padding or start that is a
    tensor may be known only at run time, and counts as not zero)."""
    return isinstance(value, int) and value == 0


def _pad_tiles_source(tensor, query_padding, key_padding, value):
    """Pad the query and key axes of a rank-4 mask or bias that are not 1."""
    widths = [(0, 0)] * 4
    for axis, padding in ((2, query_padding), (3, key_padding)):
        if tensor.shape[axis] != 1:
            widths[axis] = (0, padding)
    if all(_is_zero(right) for _, right in widths):
        return tensor
    return ops.pad(tensor, widths, constant_values=value)


class _Tiling:
    """Where the tiles are and what each must mask, bias and cap.

    A tile is `query_block` rows from `query_start` by `block_size` keys
    from `key_start`, laid out `(B, H, rows, keys)`, or with `keys_major`
    `(B, H, keys, rows)` (the backward's layout: the user's mask and bias
    are transposed once for it, not tile by tile).

    The key blocks a query block may see are the range where the band
    (causal, window) meets the blocks that the mask and the padding leave
    visible to some query (found once for both passes); the backward
    visits, per key block, the query blocks of the same band.
    """

    def __init__(
        self,
        mask,
        query_length,
        key_length,
        pads_keys,
        is_causal,
        sliding_window,
        query_block,
        block_size,
        num_query_blocks,
        num_blocks,
        position_bias,
        logit_soft_cap,
    ):
        self.mask = mask  # keys last
        self.mask_keys_major = None  # see prepare_backward
        self.query_length = query_length
        self.key_length = key_length
        self.pads_keys = pads_keys
        self.is_causal = is_causal
        self.sliding_window = sliding_window
        self.query_block = query_block
        self.block_size = block_size
        self.num_query_blocks = num_query_blocks
        self.num_blocks = num_blocks
        self.position_bias = position_bias
        self.logit_soft_cap = logit_soft_cap
        self.masks_anything = (
            mask is not None or is_causal or sliding_window is not None
        ) or pads_keys
        self.visible = self._visible_blocks() if self.masks_anything else None

    def prepare_backward(self):
        """Transpose the mask once for the backward's keys-major tiles.

        Called by the backward before its loops, and only when a backward
        runs: built lazily inside a loop body, a graph (TensorFlow) would
        transpose the whole mask again on every iteration.
        """
        if self.mask is not None and self.mask_keys_major is None:
            self.mask_keys_major = ops.swapaxes(self.mask, -1, -2)

    @property
    def one_query_block(self):
        return isinstance(self.num_query_blocks, int) and (
            self.num_query_blocks == 1
        )

    # Positions and masks of a tile.

    def positions(self, query_start, key_start, keys_major):
        """int32 rows and columns of a tile, broadcastable to its shape."""
        rows = query_start + index_range(self.query_block)
        cols = key_start + index_range(self.block_size)
        if keys_major:
            return rows[None, :], cols[:, None]
        return rows[:, None], cols[None, :]

    def tile_mask(self, query_start, key_start, keys_major):
        """The boolean mask of a tile, broadcastable to it, or None."""
        if not self.masks_anything:
            return None
        parts = []
        if self.mask is not None:
            source = self.mask_keys_major if keys_major else self.mask
            parts.append(
                _tile_of(source, query_start, key_start, self, keys_major)
            )
        rows, cols = self.positions(query_start, key_start, keys_major)
        if self.is_causal:
            parts.append(rows >= cols)
        if self.sliding_window is not None:
            parts.append(ops.abs(rows - cols) < self.sliding_window)
        if self.pads_keys:
            parts.append(cols < self.key_length)
        return merge_masks(*parts)

    def scores(
        self, logits, bias, parameters, query_start, key_start, keys_major
    ):
        """`(capped scores, the same masked)` of a tile of logits;
        `bias` is laid out as the tile (keys-major when `keys_major`)."""
        if bias is not None:  # already laid out as the tile
            logits = logits + _tile_of(
                bias, query_start, key_start, self, keys_major
            )
        if self.position_bias is not None:
            rows, cols = self.positions(query_start, key_start, keys_major)
            logits = logits + self.position_bias.tile(
                rows, cols, self.key_length, parameters
            )
        capped = cap_logits(logits, self.logit_soft_cap)
        mask = self.tile_mask(query_start, key_start, keys_major)
        if mask is None:
            return capped, capped
        return capped, ops.where(mask, capped, MASKED_LOGIT)

    def uncap_gradient(self, grad_scores, capped):
        """The gradient of the pre-cap scores from that of the capped ones:
        d(c tanh(x / c)) / dx = 1 - (capped / c)^2."""
        if self.logit_soft_cap is None:
            return grad_scores
        ratio = capped / self.logit_soft_cap
        return grad_scores * (1.0 - ratio * ratio)

    def query_rows(self, tensor, query_start, axis=2):
        """The rows of a query block (all of them when there is one)."""
        if self.one_query_block:
            return tensor
        return _slice_axis(tensor, query_start, self.query_block, axis)

    def add_query_rows(self, tensor, query_start, block, axis=2):
        """`tensor` with `block` added to the rows of a query block."""
        if self.one_query_block:
            return tensor + block
        at = [0] * len(tensor.shape)
        at[axis] = query_start
        current = self.query_rows(tensor, query_start, axis)
        return _write_block(tensor, at, current + block)

    # The blocks to visit.

    def _visible_blocks(self):
        """int32 scalars `(first, stop)`: key blocks outside `first .. stop
        - 1` are masked for every query (`first == stop` when all are).
        Each rule is checked on its own, so a block that only their
        combination hides stays inside (masked, still exact)."""
        num_blocks = self.num_blocks
        index = index_range(num_blocks)
        first_key = index * self.block_size
        last_row = self.query_length - 1
        seen = []
        if self.mask is not None:
            seen.append(self._mask_seen())
        if self.is_causal:  # key j visible to query i when j <= i
            seen.append(first_key <= last_row)
        if self.sliding_window is not None:  # |i - j| < window
            seen.append(first_key - last_row < self.sliding_window)
        if self.pads_keys:
            seen.append(first_key < self.key_length)
        seen = ops.broadcast_to(merge_masks(*seen), (num_blocks,))
        # Counted, not found with min/max: those need a proof that there
        # is a block, which shape-polymorphic export cannot give.
        seen_so_far = ops.cumsum(ops.cast(seen, "int32"))
        first = ops.sum(ops.cast(seen_so_far == 0, "int32"))
        after_last = ops.logical_and(
            seen_so_far == ops.sum(ops.cast(seen, "int32")),
            ops.logical_not(seen),
        )
        stop = num_blocks - ops.sum(ops.cast(after_last, "int32"))
        return first, ops.maximum(first, stop)

    def _mask_seen(self):
        if self.mask.shape[-1] == 1:  # the same for every key
            return ops.any(self.mask)
        keys_seen = ops.any(self.mask, axis=(0, 1, 2))  # `(S,)`
        blocks = ops.reshape(keys_seen, (self.num_blocks, self.block_size))
        return ops.any(blocks, axis=1)

    def key_blocks(self, query_index=None):
        """`(first, stop)` key blocks to visit (for one query block)."""
        if not self.masks_anything:
            return 0, self.num_blocks
        first, stop = self.visible
        if query_index is None or self.one_query_block:
            return first, stop
        top = query_index * self.query_block
        bottom = ops.minimum(top + self.query_block, self.query_length) - 1
        if self.is_causal:  # keys up to the block's last row
            stop = ops.minimum(stop, bottom // self.block_size + 1)
        if self.sliding_window is not None:
            first, stop = _narrow_to_window(
                first, stop, top, bottom, self.sliding_window, self.block_size
            )
        return first, ops.maximum(first, stop)

    def query_blocks(self, key_index):
        """`(first, stop)` query blocks that may see one key block."""
        if self.one_query_block:
            return 0, 1
        left = key_index * self.block_size
        right = left + self.block_size - 1
        first, stop = 0, self.num_query_blocks
        if self.is_causal:  # rows from the block's first key
            first = left // self.query_block
        if self.sliding_window is not None:
            first, stop = _narrow_to_window(
                first, stop, left, right, self.sliding_window, self.query_block
            )
        return first, ops.maximum(first, stop)


def _narrow_to_window(first, stop, low, high, window, block_size):
    """`(first, stop)`, blocks of `block_size` positions on one axis,
    narrowed to those within `window` (`|i - j| < window`) of some
    position `low .. high` on the other axis."""
    first = ops.maximum(first, ops.maximum(low - window + 1, 0) // block_size)
    stop = ops.minimum(stop, (high + window - 1) // block_size + 1)
    return first, stop


def _tile_of(source, query_start, key_start, tiling, keys_major):
    """The tile of a rank-4 mask or bias (keys last, or keys-major) at
    `query_start, key_start`; axes of size 1 stay 1."""
    query_axis, key_axis = (3, 2) if keys_major else (2, 3)
    shape, at = list(ops.shape(source)), [0, 0, 0, 0]
    for axis, start, size in (
        (query_axis, query_start, tiling.query_block),
        (key_axis, key_start, tiling.block_size),
    ):
        if source.shape[axis] != 1:
            shape[axis], at[axis] = size, start
    if all(_is_zero(start) for start in at) and (
        tuple(shape) == tuple(ops.shape(source))
    ):
        return source
    return ops.slice(source, at, shape)


def _heads_first(tensor, groups, padding):
    """`(B, L, Hkv, D)` -> float32 `(B, Hkv * groups, L + padding, D)`."""
    tensor = ops.cast(tensor, SOFTMAX_DTYPE)
    if groups > 1:
        tensor = ops.repeat(tensor, groups, axis=2)
    tensor = ops.transpose(tensor, (0, 2, 1, 3))
    if _is_zero(padding):
        return tensor
    return ops.pad(tensor, ((0, 0), (0, 0), (0, padding), (0, 0)))


def _num_blocks(tensor, block_size):
    length = static_shape(tensor)[2]
    if length is None:  # dynamic length: loop in-graph
        return ops.shape(tensor)[2] // block_size
    return length // block_size


def _online_softmax_attention(query, key, value, bias, tiling):
    """softmax(query key^T + biases) value, one tile at a time.

    Args:
        query: `(B, H, T, D)` float32, already multiplied by the scale.
        key: `(B, H, S, D)` float32.
        value: `(B, H, S, Dv)` float32.
        bias: float32 rank 4 broadcastable to `(B, H, T, S)`, or None.
        tiling: the `_Tiling` of the call.

    Returns:
        `(B, H, T, Dv)` float32; rows with no allowed key are zeros.
        Differentiable in query, key, value, bias and the position bias'
        parameters, in memory linear in the length (plus the bias' size).
    """
    position_bias = tiling.position_bias
    parameters = () if position_bias is None else position_bias.parameters
    inputs = (query, key, value) + (() if bias is None else (bias,))

    @ops.custom_gradient
    def attend(*tensors):
        query, key, value = tensors[:3]
        bias = tensors[3] if len(inputs) == 4 else None
        parameters = tensors[len(inputs) :]
        output, log_sum_exp = _forward(
            query, key, value, bias, parameters, tiling
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            saved = (query, key, value, bias, parameters, output, log_sum_exp)
            grads = _backward(saved, upstream, tiling)
            return grads if len(tensors) > 1 else grads[0]

        return output, grad

    return attend(*inputs, *parameters)


# Backend fast path (torch): `ops.slice_update` copies the whole tensor
# on torch, which made the loops' writes cost O(L) each, O(L^2 / block)
# in all. The tensors written here are loop carries this module created
# and alone holds, inside the custom gradient, so torch may write them in
# place. The portable twin is `ops.slice_update`;
# tests/test_attention_paths.py checks the two agree.
WRITE_IN_PLACE = True


def _writes_in_place(static_indices):
    """Whether `_write_block` writes in place: on torch, at Python-int
    (`static_indices`) starts."""
    return (
        WRITE_IN_PLACE and static_indices and keras.backend.backend() == "torch"
    )


def _write_block(tensor, start, block):
    """`ops.slice_update(tensor, start, block)`; in place on torch when
    `start` holds Python ints (eager loops), returning `tensor`."""
    if _writes_in_place(all(isinstance(index, int) for index in start)):
        tensor[tuple(slice(i, i + n) for i, n in zip(start, block.shape))] = (
            block
        )
        return tensor
    return ops.slice_update(tensor, start, block)


def _slice_axis(tensor, start, size, axis):
    """`size` entries of `tensor` from `start` along `axis`."""
    shape, at = list(ops.shape(tensor)), [0] * len(tensor.shape)
    shape[axis], at[axis] = size, start
    return ops.slice(tensor, at, shape)


# The forward pass.


def _forward(query, key, value, bias, parameters, tiling):
    """Output `(B, H, T, Dv)` and row log-sum-exp `(B, H, T, 1)`, one
    block of query rows at a time.

    A masked logit is MASKED_LOGIT, so its probability underflows to 0
    once its row has seen an allowed key. Until then the row's maximum is
    MASKED_LOGIT itself and its masked entries count as 1; the first
    allowed key rescales that sum and output by exp(MASKED_LOGIT - max) = 0,
    and a row that never sees one is found by its maximum and set to 0.
    """

    def attend_rows(query_start, key_range):
        query_rows = tiling.query_rows(query, query_start)

        def scores_of(logits, key_start):
            return tiling.scores(
                logits, bias, parameters, query_start, key_start, False
            )[1]

        return _attend_rows(
            query_rows, key, value, scores_of, tiling.block_size, key_range
        )

    if tiling.one_query_block:
        return attend_rows(0, tiling.key_blocks())

    def block_of_rows(query_index):
        query_start = query_index * tiling.query_block
        return attend_rows(query_start, tiling.key_blocks(query_index))

    if _writes_in_place(isinstance(tiling.num_query_blocks, int)):
        return _write_query_blocks(block_of_rows, query, value, tiling)
    # Each query block's rows, stacked: no writes into a carried buffer,
    # so the graph also exports (ONNX has no in-place update).
    return tuple(
        _unstack_query_blocks(stacked)
        for stacked in ops.map(
            block_of_rows, index_range(tiling.num_query_blocks)
        )
    )


def _attend_rows(query_rows, key, value, scores_of, block_size, key_range):
    """Output and log-sum-exp of a block of query rows over the key blocks
    `key_range`, `(first, stop)`; `scores_of(logits, key_start)` biases,
    caps and masks a tile of logits."""
    rows = ops.shape(query_rows)[:3] + (1,)
    output = ops.zeros(rows[:3] + (ops.shape(value)[3],))
    row_sum = ops.zeros(rows)
    row_max = row_sum + MASKED_LOGIT  # not `full`: jax2onnx needs ints

    def key_block_step(index, carry):
        start = index * block_size
        key_block = _slice_axis(key, start, block_size, 2)
        logits = ops.matmul(query_rows, ops.swapaxes(key_block, -1, -2))
        scores = scores_of(logits, start)
        value_block = _slice_axis(value, start, block_size, 2)
        return _online_softmax_step(carry, scores, value_block)

    first, stop = key_range
    carry = ops.fori_loop(
        first, stop, key_block_step, (output, row_max, row_sum)
    )
    return _normalize_rows(*carry)


def _online_softmax_step(carry, scores, value_block):
    """The running `(output, row_max, row_sum)` after one tile of scores:
    what was summed so far is rescaled to the new maximum."""
    output, row_max, row_sum = carry
    new_max = ops.maximum(row_max, ops.max(scores, -1, keepdims=True))
    probs = ops.exp(scores - new_max)
    rescale = ops.exp(row_max - new_max)
    row_sum = row_sum * rescale + ops.sum(probs, -1, keepdims=True)
    output = output * rescale + ops.matmul(probs, value_block)
    return output, new_max, row_sum


def _normalize_rows(output, row_max, row_sum):
    """`(output / row_sum, log-sum-exp)`; a row that saw no allowed key
    gives zeros and `_EMPTY_ROW_LSE`."""
    has_keys = row_max > MASKED_LOGIT
    safe_sum = ops.where(has_keys, row_sum, 1.0)
    output = ops.where(has_keys, output / safe_sum, 0.0)
    log_sum_exp = ops.where(
        has_keys, row_max + ops.log(safe_sum), _EMPTY_ROW_LSE
    )
    return output, log_sum_exp


def _write_query_blocks(block_of_rows, query, value, tiling):
    """`block_of_rows(index)`, `(output, log-sum-exp)` of a query block,
    written into whole-length tensors (in place, eager torch)."""
    output = ops.zeros(ops.shape(query)[:3] + (ops.shape(value)[3],))
    log_sum_exp = ops.zeros(ops.shape(query)[:3] + (1,))
    for query_index in range(tiling.num_query_blocks):
        at = (0, 0, query_index * tiling.query_block, 0)
        block_output, block_lse = block_of_rows(query_index)
        output = _write_block(output, at, block_output)
        log_sum_exp = _write_block(log_sum_exp, at, block_lse)
    return output, log_sum_exp


def _unstack_query_blocks(blocks):
    """`(blocks, B, H, rows, D)` -> `(B, H, blocks * rows, D)`."""
    shape = ops.shape(blocks)
    rows = ops.moveaxis(blocks, 0, 2)
    return ops.reshape(rows, (shape[1], shape[2], -1, shape[4]))


# The backward pass.


def _backward(saved, upstream, tiling):
    """Gradients of query, key, value (and bias and the position bias'
    parameters), recomputing each tile.

    The outer loop walks over key blocks, the inner one over the query
    blocks that may see them. Tiles are kept keys-major, `(B, H, block,
    rows)`: every product then reads its large operands in row-major
    order (reading a `(T, block)` tile down its columns is slower on the
    CPU), and only the whole-length query and upstream gradient are
    transposed, once per call, not once per block. `saved` is
    `(query, key, value, bias, parameters, output, log_sum_exp)`.
    """
    query, key, value, bias, parameters, output, log_sum_exp = saved
    tiling.prepare_backward()
    rows = _row_terms(query, upstream, output, log_sum_exp)
    bias_t = None if bias is None else ops.swapaxes(bias, -1, -2)
    tile_step = _tile_gradients(rows, bias_t, parameters, tiling)
    key_block_step = _key_block_gradients(key, value, tile_step, tiling)
    first, stop = tiling.key_blocks()
    carry = ops.fori_loop(
        first,
        stop,
        key_block_step,
        _zero_gradients(rows.query_t, key, value, bias_t, parameters),
    )
    return _final_gradients(carry, bias is not None, parameters)


class _RowTerms(NamedTuple):
    """The backward's per-query-row operands, of every row or of one
    query block: row-major `(B, H, T, ...)` and keys-major `_t`
    `(B, H, ..., T)`."""

    query: object
    query_t: object
    upstream: object
    upstream_t: object
    row_dot_t: object  # rowsum(dO * O), `(B, H, 1, T)`
    log_sum_exp_t: object  # `(B, H, 1, T)`

    def of_block(self, tiling, query_start):
        """The terms of the query block from `query_start`."""
        return _RowTerms(
            *(
                tiling.query_rows(term, query_start, axis=axis)
                for term, axis in zip(self, (2, 3, 2, 3, 3, 3))
            )
        )


def _row_terms(query, upstream, output, log_sum_exp):
    """The `_RowTerms` of every row."""
    upstream = ops.cast(upstream, "float32")
    # d softmax: dS = P * (dP - rowsum(dO * O)); per-row terms as
    # `(B, H, 1, T)`, to broadcast over keys-major tiles.
    row_dot_t = ops.swapaxes(
        ops.sum(upstream * output, -1, keepdims=True), -1, -2
    )
    log_sum_exp_t = ops.swapaxes(log_sum_exp, -1, -2)
    query_t, upstream_t = (
        ops.swapaxes(tensor, -1, -2) for tensor in (query, upstream)
    )
    return _RowTerms(
        query, query_t, upstream, upstream_t, row_dot_t, log_sum_exp_t
    )


def _zero_gradients(query_t, key, value, bias_t, parameters):
    """The outer loop's first carry: zero gradients of query (keys-major),
    key, value, then the bias' (keys-major, when there is one) and the
    position bias parameters'."""
    extras = [] if bias_t is None else [ops.zeros_like(bias_t)]
    extras += [
        ops.zeros_like(parameter, SOFTMAX_DTYPE) for parameter in parameters
    ]
    return (
        ops.zeros_like(query_t),
        ops.zeros_like(key),
        ops.zeros_like(value),
        *extras,
    )


def _key_block_gradients(key, value, tile_step, tiling):
    """The outer loop's step: one key block's gradients, summed over the
    query blocks that may see it and written into the key's and value's."""
    block_size = tiling.block_size

    def key_block_step(index, carry):
        grad_query_t, grad_key, grad_value, *extras = carry
        start = index * block_size
        key_block = _slice_axis(key, start, block_size, 2)
        value_block = _slice_axis(value, start, block_size, 2)
        inner = (
            ops.zeros_like(key_block),
            ops.zeros_like(value_block),
            grad_query_t,
            *extras,
        )
        visit = functools.partial(tile_step, start, key_block, value_block)
        inner = _visit_query_blocks(visit, index, inner, tiling)
        grad_key_block, grad_value_block, grad_query_t, *extras = inner
        at = (0, 0, start, 0)
        grad_key = _write_block(grad_key, at, grad_key_block)
        grad_value = _write_block(grad_value, at, grad_value_block)
        return (grad_query_t, grad_key, grad_value, *extras)

    return key_block_step


def _visit_query_blocks(visit, key_index, carry, tiling):
    """`visit(query_start, carry)` over the query blocks that may see key
    block `key_index`, threading `carry`."""
    if tiling.one_query_block:
        return visit(0, carry)
    first, stop = tiling.query_blocks(key_index)

    def query_block_step(query_index, carry):
        return visit(query_index * tiling.query_block, carry)

    return ops.fori_loop(first, stop, query_block_step, carry)


def _tile_gradients(rows, bias_t, parameters, tiling):
    """The inner loop's step, `tile_step(key_start, key_block,
    value_block, query_start, carry)`: one tile's share of the gradients,
    carry `(grad_key_block, grad_value_block, grad_query_t, *extras)`."""

    def tile_step(key_start, key_block, value_block, query_start, carry):
        grad_key_block, grad_value_block, grad_query_t, *extras = carry
        block = rows.of_block(tiling, query_start)
        logits_t = ops.matmul(key_block, block.query_t)
        capped_t, scores_t = tiling.scores(
            logits_t, bias_t, parameters, query_start, key_start, True
        )
        # A masked logit gives exactly 0: MASKED_LOGIT minus a finite
        # log-sum-exp, or minus an empty row's _EMPTY_ROW_LSE, underflows.
        probs_t = ops.exp(scores_t - block.log_sum_exp_t)
        grad_value_block = grad_value_block + ops.matmul(
            probs_t, block.upstream
        )
        grad_logits_t = _logit_gradient(
            probs_t, capped_t, value_block, block, tiling
        )
        grad_query_t = tiling.add_query_rows(
            grad_query_t,
            query_start,
            ops.einsum("bhsd,bhst->bhdt", key_block, grad_logits_t),
            axis=3,
        )
        grad_key_block = grad_key_block + ops.matmul(grad_logits_t, block.query)
        extras = _add_extra_gradients(
            extras,
            grad_logits_t,
            bias_t,
            parameters,
            tiling,
            query_start,
            key_start,
        )
        return (grad_key_block, grad_value_block, grad_query_t, *extras)

    return tile_step


def _logit_gradient(probs_t, capped_t, value_block, block, tiling):
    """The gradient of a keys-major tile of logits (before the cap):
    dS = P * (dP - rowsum(dO * O)), dP = V dO^T."""
    grad_probs_t = ops.matmul(value_block, block.upstream_t)
    grad_capped_t = probs_t * (grad_probs_t - block.row_dot_t)
    return tiling.uncap_gradient(grad_capped_t, capped_t)


def _add_extra_gradients(
    extras, grad_logits_t, bias_t, parameters, tiling, query_start, key_start
):
    """The carried gradients of the bias (when there is one) and of the
    position bias parameters, plus one tile's share."""
    has_bias = bias_t is not None
    if has_bias:
        extras[0] = _add_bias_tile(
            extras[0], grad_logits_t, query_start, key_start
        )
    if parameters:
        rows, cols = tiling.positions(query_start, key_start, True)
        tile_grads = tiling.position_bias.gradients(
            rows, cols, tiling.key_length, grad_logits_t, parameters
        )
        totals = extras[has_bias:]
        extras[has_bias:] = [
            total + grad for total, grad in zip(totals, tile_grads)
        ]
    return extras


def _add_bias_tile(grad_bias_t, grad_logits_t, query_start, key_start):
    """Add a keys-major tile's logit gradient into the bias' (keys-major)
    gradient, summed over the axes the bias broadcasts along."""
    broadcast = tuple(
        axis
        for axis in range(4)
        if grad_bias_t.shape[axis] == 1 and grad_logits_t.shape[axis] != 1
    )
    if broadcast:
        grad_logits_t = ops.sum(grad_logits_t, axis=broadcast, keepdims=True)
    at = [0, 0, 0, 0]
    if grad_bias_t.shape[2] != 1:
        at[2] = key_start
    if grad_bias_t.shape[3] != 1:
        at[3] = query_start
    if tuple(grad_logits_t.shape) == tuple(grad_bias_t.shape):
        return grad_bias_t + grad_logits_t
    current = ops.slice(grad_bias_t, at, ops.shape(grad_logits_t))
    return _write_block(grad_bias_t, at, current + grad_logits_t)


def _final_gradients(carry, has_bias, parameters):
    """The outer loop's last carry as the inputs' gradients: query and
    bias back to keys last, the parameters' in their dtypes."""
    grad_query_t, grad_key, grad_value, *extras = carry
    grads = [ops.swapaxes(grad_query_t, -1, -2), grad_key, grad_value]
    if has_bias:
        grads.append(ops.swapaxes(extras[0], -1, -2))
    grads.extend(
        ops.cast(grad, parameter.dtype)
        for grad, parameter in zip(extras[has_bias:], parameters)
    )
    return tuple(grads)
