"""Positions in attention: rotary embeddings and position biases.

Rotary embeddings (Su et al., "RoFormer", 2021) rotate queries and keys by
angles that grow with the position, as `keras_hub.layers.RotaryEmbedding`.

A position bias is added to the logits and computed from the query and
key positions alone, so the blockwise path builds it tile by tile and never
holds an `(T, S)` tensor:

- ALiBi (Press et al., 2021) as `keras_hub.layers.AlibiBias`: head `h` adds
  `slope_h * (j - (S - 1))` to the logit of key `j`;
- T5's learned relative bias (Raffel et al., 2020): a `(num_buckets,
  heads)` table indexed by the bucket of the distance `j - i`.

`PositionBias` is what `scaled_dot_product_attention(position_bias=...)`
takes; `alibi_bias` and `relative_position_bias` build one.
"""

import math

from keras import ops

from keras_selfattn.ops.masks import index_range

POSITION_DTYPE = "float32"


def rotary_inverse_frequencies(rotary_dim, max_wavelength=10000):
    """`(rotary_dim // 2,)` float32 `1 / max_wavelength ** (2k / dim)`."""
    exponents = ops.arange(0, rotary_dim, 2, dtype=POSITION_DTYPE)
    exponents = exponents / ops.cast(rotary_dim, POSITION_DTYPE)
    return 1.0 / ops.power(float(max_wavelength), exponents)


def rotary_cos_sin(positions, rotary_dim, max_wavelength=10000, scaling=1.0):
    """cos and sin `(..., L, rotary_dim)` of the rotation angles at
    `positions` (`(L,)` or `(B, L)`).

    Each angle appears twice, in the two halves of the feature axis, as
    keras-hub's layer lays them out.
    """
    positions = ops.cast(positions, POSITION_DTYPE) / float(scaling)
    inverse = rotary_inverse_frequencies(rotary_dim, max_wavelength)
    angles = positions[..., None] * inverse
    angles = ops.concatenate([angles, angles], axis=-1)
    return ops.cos(angles), ops.sin(angles)


def apply_rotary(tensor, cos, sin):
    """Rotate the feature (last) axis of `tensor` by the angles `cos, sin`.

    The two halves `(x1, x2)` of each feature vector become
    `(x1 cos - x2 sin, x2 cos + x1 sin)`; `cos`/`sin` broadcast to
    `tensor` and are cast to its dtype.
    """
    first, second = ops.split(tensor, 2, axis=-1)
    rotated = ops.concatenate([-second, first], axis=-1)
    cos, sin = ops.cast(cos, tensor.dtype), ops.cast(sin, tensor.dtype)
    return tensor * cos + rotated * sin


def alibi_slopes(num_heads, alibi_bias_max=8):
    """The ALiBi slope of each head, a list of `num_heads` floats.

    A geometric sequence from `2 ** (-alibi_bias_max / n)` with the same
    ratio, `n` the power of two at or above `num_heads`; other head counts
    interleave two such sequences, as the paper's code and keras-hub do.

    Example:

    >>> alibi_slopes(4)
    [0.25, 0.0625, 0.015625, 0.00390625]
    """

    def power_of_two_slopes(count):
        start = 2.0 ** (
            -(2.0 ** -(math.log2(count) - math.log2(alibi_bias_max)))
        )
        return [start * start**i for i in range(count)]

    if math.log2(num_heads).is_integer():
        return power_of_two_slopes(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = alibi_slopes(2 * closest, alibi_bias_max)[0::2]
    return power_of_two_slopes(closest) + extra[: num_heads - closest]


def relative_position_buckets(
    relative_position, num_buckets=32, max_distance=128, bidirectional=True
):
    """T5's bucket (int32) of each distance `key - query`.

    Distances below `num_buckets // 2` (halved again when `bidirectional`,
    which keeps separate buckets for keys after the query) get a bucket
    each; longer ones share logarithmically wider buckets up to
    `max_distance`, and all beyond share the last.

    Example:

    >>> from keras import ops
    >>> buckets = relative_position_buckets(ops.arange(-3, 4), 8, 16)
    >>> ops.convert_to_numpy(buckets).tolist()
    [2, 2, 1, 0, 5, 6, 6]
    """
    relative_position = ops.cast(relative_position, "int32")
    buckets = ops.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = ops.where(relative_position > 0, num_buckets, 0)
        distance = ops.abs(relative_position)
    else:
        distance = ops.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    log_ratio = ops.log(
        ops.maximum(ops.cast(distance, POSITION_DTYPE), 1.0) / max_exact
    ) / math.log(max_distance / max_exact)
    large = max_exact + ops.cast(log_ratio * (num_buckets - max_exact), "int32")
    large = ops.minimum(large, num_buckets - 1)
    return buckets + ops.where(distance < max_exact, distance, large)


class PositionBias:
    """A bias on the logits from query and key positions, tile by tile.

    `tile(rows, cols, key_length)` gives the float32 bias of the logits at
    query positions `rows` and key positions `cols` (int32 tensors that
    broadcast against each other, e.g. `(t, 1)` and `(1, s)`),
    broadcastable to `(heads, *their broadcast shape)`. `parameters` are
    the tensors it learns (possibly none); `gradients(rows, cols,
    key_length, grad_tile)` gives theirs from the gradient of a
    `(B, heads, ...)` tile of logits, for the blockwise path's custom
    gradient.

    Build one with `alibi_bias` or `relative_position_bias`.
    """

    def __init__(self, tile, parameters=(), gradients=None):
        self._tile = tile
        self.parameters = tuple(parameters)
        self._gradients = gradients

    def tile(self, rows, cols, key_length, parameters=None):
        """The bias at `rows` x `cols`; `parameters` replaces the stored
        ones (the custom gradient passes its own inputs)."""
        if parameters is None:
            parameters = self.parameters
        return self._tile(rows, cols, key_length, *parameters)

    def full(self, query_length, key_length):
        """The whole bias, broadcastable to `(heads, T, S)` (for the paths
        without tiles)."""
        rows = index_range(query_length)[:, None]
        cols = index_range(key_length)[None, :]
        return self.tile(rows, cols, key_length)

    def gradients(self, rows, cols, key_length, grad_tile, parameters):
        """The gradients of `parameters` from one tile's logit gradient."""
        if not parameters:
            return ()
        return self._gradients(rows, cols, key_length, grad_tile, *parameters)


def alibi_bias(num_heads, alibi_bias_max=8):
    """ALiBi as `keras_hub.layers.AlibiBias`: a `PositionBias` adding
    `slope_h * (j - (S - 1))` to the logits of head `h` and key `j`.

    With a causal mask this equals the paper's `-slope_h * (i - j)` up to a
    constant per row, which softmax ignores.

    Example:

    >>> from keras import ops
    >>> bias = alibi_bias(2).full(1, 3)
    >>> ops.convert_to_numpy(bias).tolist()
    [[[-0.125, -0.0625, 0.0]], [[-0.0078125, -0.00390625, 0.0]]]
    """
    slopes = alibi_slopes(num_heads, alibi_bias_max)

    def tile(rows, cols, key_length):
        # Depends on the key only: broadcast over the rows, not built.
        distance = ops.cast(cols - (key_length - 1), POSITION_DTYPE)
        slope = ops.convert_to_tensor(slopes, POSITION_DTYPE)
        return ops.reshape(slope, (-1,) + (1,) * len(distance.shape)) * distance

    return PositionBias(tile)


def relative_position_bias(
    table, num_buckets=None, max_distance=128, bidirectional=True
):
    """T5's relative bias: a `PositionBias` adding `table[bucket(j - i), h]`.

    Args:
        table: float `(num_buckets, heads)` learned biases.
        num_buckets: defaults to `table`'s first dimension.
        max_distance: distances from this on share the last bucket.
        bidirectional: separate buckets for keys after the query.

    Example:

    >>> import numpy as np
    >>> table = np.arange(16, dtype="float32").reshape(8, 2)
    >>> bias = relative_position_bias(table, max_distance=16).full(2, 2)
    >>> tuple(bias.shape)
    (2, 2, 2)
    """
    if num_buckets is None:
        num_buckets = table.shape[0]

    def buckets_of(rows, cols):
        return relative_position_buckets(
            cols - rows, num_buckets, max_distance, bidirectional
        )

    def tile(rows, cols, key_length, table):
        bias = ops.take(
            ops.cast(table, POSITION_DTYPE), buckets_of(rows, cols), axis=0
        )
        return ops.moveaxis(bias, -1, 0)

    def gradients(rows, cols, key_length, grad_tile, table):
        buckets = ops.reshape(buckets_of(rows, cols), (-1,))
        grad = ops.sum(grad_tile, axis=0)  # over the batch
        grad = ops.reshape(ops.moveaxis(grad, 0, -1), (-1, grad.shape[0]))
        return (ops.segment_sum(grad, buckets, num_segments=num_buckets),)

    return PositionBias(tile, (table,), gradients)
