"""Attention over chosen axes of inputs of any rank (keras' `attention_axes`).

`MultiHeadAttention` takes inputs `(B, d1, ..., dn, width)` and attends
over some of the `d` axes (the attention axes); the others act as batch
axes. Its projections give `(B, d1, ..., dn, heads, dim)`; `AttentionAxes`
turns those into the `(B', L, heads, dim)` sequences the attention ops
take (`B'` = batch times the non-attention axes, `L` = the attention axes
flattened in order) and turns outputs, scores and masks back and forth.
For `(B, L, width)` inputs (the default) every step is the identity.
"""

import string

from keras import ops


def projection_equation(free_dims, bound_dims, output_dims):
    """The einsum equation and bias axes of a projection, as keras' layer
    builds them (so weight shapes match): `free_dims` axes pass through,
    `bound_dims` are contracted, `output_dims` are produced.

    Example:

    >>> projection_equation(2, 1, 2)
    ('abc,cde->abde', 'de')
    """
    letters = string.ascii_lowercase
    free = letters[:free_dims]
    bound = letters[free_dims : free_dims + bound_dims]
    out = letters[free_dims + bound_dims : free_dims + bound_dims + output_dims]
    return f"{free}{bound},{bound}{out}->{free}{out}", out


class AttentionAxes:
    """The attention axes of `(B, d1, ..., dn, width)` inputs.

    Args:
        input_rank: rank of the query (and key/value) inputs, >= 3.
        attention_axes: None (every `d` axis), or ints indexing the input
            axes (negative ones count from the end), as keras' layer.

    Example:

    >>> axes = AttentionAxes(4, (2,))
    >>> axes.attention, axes.others
    ((2,), (1,))
    """

    def __init__(self, input_rank, attention_axes=None):
        self.input_rank = input_rank
        inner = tuple(range(1, input_rank - 1))
        if attention_axes is None:
            attention = inner
        else:
            attention = tuple(
                axis if axis >= 0 else axis + input_rank
                for axis in attention_axes
            )
        if not attention or any(axis not in inner for axis in attention):
            raise ValueError(
                "`attention_axes` must index axes between the batch and the "
                f"feature axis of inputs of rank {input_rank}, i.e. in "
                f"{list(inner)} (or negative). Received: "
                f"attention_axes={attention_axes}"
            )
        if len(set(attention)) != len(attention):
            raise ValueError(
                "`attention_axes` must not repeat an axis. Received: "
                f"attention_axes={attention_axes}"
            )
        self.attention = attention
        self.others = tuple(a for a in inner if a not in attention)
        self.is_identity = input_rank == 3  # (B, L, width): one axis
        # Projected tensors `(B, d..., heads, dim)`: others, then attention.
        self._order = (0,) + self.others + self.attention
        self._heads_dims = (input_rank - 1, input_rank)

    def scores_shape(self, query_shape, key_shape, num_heads):
        """keras' score shape `(B, others..., heads, query attention axes...,
        key attention axes...)` for input shapes."""
        return (
            (query_shape[0],)
            + tuple(query_shape[a] for a in self.others)
            + (num_heads,)
            + tuple(query_shape[a] for a in self.attention)
            + tuple(key_shape[a] for a in self.attention)
        )

    def to_sequences(self, tensor):
        """Projected `(B, d..., heads, dim)` -> `(B', L, heads, dim)`."""
        if self.is_identity:
            return tensor
        tensor = ops.transpose(tensor, self._order + self._heads_dims)
        shape = ops.shape(tensor)
        length = _product(shape[1 + len(self.others) : -2])
        return ops.reshape(tensor, (-1, length) + tuple(shape[-2:]))

    def from_sequences(self, tensor, like):
        """`(B', T, heads, dim)` back to `like`'s `(B, d..., heads, *)`."""
        if self.is_identity:
            return tensor
        shape = ops.shape(like)
        ordered = [shape[a] for a in self._order] + [
            shape[-2],
            ops.shape(tensor)[-1],
        ]
        tensor = ops.reshape(tensor, ordered)
        return ops.transpose(tensor, _inverse(self._order + self._heads_dims))

    def scores_from_sequences(self, scores, query, key):
        """`(B', heads, T, S)` -> keras' score shape (`scores_shape`)."""
        if self.is_identity:
            return scores
        query_shape, key_shape = ops.shape(query), ops.shape(key)
        shape = (
            [query_shape[0]]
            + [query_shape[a] for a in self.others]
            + [ops.shape(scores)[1]]
            + [query_shape[a] for a in self.attention]
            + [key_shape[a] for a in self.attention]
        )
        return ops.reshape(scores, shape)

    def positions_mask(self, mask):
        """A `(B, d...)` query or key mask -> `(B', L)`."""
        if mask is None or self.is_identity:
            return mask
        mask = ops.transpose(mask, self._order)
        shape = ops.shape(mask)
        return ops.reshape(mask, (-1, _product(shape[1 + len(self.others) :])))

    def mask_rank_range(self):
        """The ranks an `attention_mask` may have: from the attention axes of
        queries and keys alone up to keras' full score rank."""
        full = 2 + len(self.others) + 2 * len(self.attention)
        return 2 * len(self.attention), full

    def expected_mask_shape(self, scores_shape, rank):
        """The shape an `attention_mask` of `rank` must broadcast to: keras
        inserts the missing axes just before the query attention axes."""
        heads_axis = 1 + len(self.others)
        missing = len(scores_shape) - rank
        return tuple(scores_shape[: heads_axis + 1 - missing]) + tuple(
            scores_shape[heads_axis + 1 :]
        )

    def attention_mask(self, mask, query, key, num_heads):
        """A checked keras-style `attention_mask` of `query` and `key` ->
        broadcastable `(B', heads, T, S)`. A group of axes (batch and
        others; heads; query axes; key axes) stays size 1 where the mask is
        1 on all of it."""
        full_rank = self.mask_rank_range()[1]
        heads_axis = 1 + len(self.others)
        while len(mask.shape) < full_rank:  # before the attention axes
            mask = ops.expand_dims(mask, -2 * len(self.attention) - 1)
        if self.is_identity:
            return mask
        scores_shape = self.scores_shape(
            ops.shape(query), ops.shape(key), num_heads
        )
        count = len(self.attention)
        groups = (
            range(heads_axis),
            range(heads_axis, heads_axis + 1),
            range(heads_axis + 1, heads_axis + 1 + count),
            range(heads_axis + 1 + count, full_rank),
        )
        target, merged = [], []
        for group in groups:
            if all(mask.shape[a] == 1 for a in group):
                target.extend(1 for _ in group)
                merged.append(1)
            else:
                target.extend(scores_shape[a] for a in group)
                merged.append(_product([scores_shape[a] for a in group]))
        merged[0] = -1 if merged[0] != 1 else 1
        return ops.reshape(ops.broadcast_to(mask, target), merged)


def _product(dims):
    """The product of sizes that may be ints or run-time scalars."""
    result = 1
    for dim in dims:
        result = result * dim
    return result


def _inverse(order):
    return tuple(order.index(i) for i in range(len(order)))
