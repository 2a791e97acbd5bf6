"""RotaryEmbedding: rotary position embeddings, as keras-hub's layer."""

import keras
from keras import ops

from keras_selfattn._validation import check_positive_float
from keras_selfattn.ops.compiling import reuse_last
from keras_selfattn.ops.masks import index_range
from keras_selfattn.ops.positions import apply_rotary, rotary_cos_sin


@keras.saving.register_keras_serializable(package="keras_selfattn")
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embeddings (Su et al. 2021) on any tensor.

    The same arguments, call and result as `keras_hub.layers.RotaryEmbedding`
    (its default `rope_type="linear"`): the feature axis is split in two
    halves `(x1, x2)`, rotated by angles `position / scaling_factor *
    max_wavelength ** (-2k / features)`. Attention layers apply it to their
    queries and keys with `rotary_max_wavelength=`.

    Args:
        max_wavelength: the longest wavelength of the angles.
        scaling_factor: positions are divided by it (linear scaling, to
            stretch to longer contexts).
        sequence_axis: the positions axis of the inputs.
        feature_axis: the features axis; its size must be even.
        **kwargs: base layer arguments (`name`, `dtype`...).

    Call arguments:
        inputs: float tensor with a sequence and a feature axis, e.g.
            `(B, L, features)` or `(B, L, heads, features)`.
        start_index: int or int tensor, the position of the first entry
            (for cached decoding).
        positions: optional explicit positions `(L,)` or `(B, L)`,
            instead of `start_index + arange(L)`.

    Returns:
        The rotated inputs, same shape, in the compute dtype.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(2, 5, 3, 8).astype("float32")
    >>> tuple(RotaryEmbedding()(x).shape)
    (2, 5, 3, 8)

    References:
        Su et al., "RoFormer: Enhanced Transformer with Rotary Position
        Embedding", 2021.
    """

    def __init__(
        self,
        max_wavelength=10000,
        scaling_factor=1.0,
        sequence_axis=1,
        feature_axis=-1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_wavelength = check_positive_float(
            "max_wavelength", max_wavelength
        )
        self.scaling_factor = check_positive_float(
            "scaling_factor", scaling_factor
        )
        for name, axis in (
            ("sequence_axis", sequence_axis),
            ("feature_axis", feature_axis),
        ):
            if isinstance(axis, bool) or not isinstance(axis, int):
                raise ValueError(
                    f"`{name}` must be an int. Received: {name}={axis!r}"
                )
        self.sequence_axis = sequence_axis
        self.feature_axis = feature_axis
        self.built = True

    def _axes(self, rank):
        sequence, feature = self.sequence_axis % rank, self.feature_axis % rank
        if not (-rank <= self.sequence_axis < rank) or not (
            -rank <= self.feature_axis < rank
        ):
            raise ValueError(
                "`sequence_axis` and `feature_axis` must be axes of the "
                f"inputs. Received: sequence_axis={self.sequence_axis}, "
                f"feature_axis={self.feature_axis}, inputs of rank {rank}"
            )
        if sequence == feature:
            raise ValueError(
                "`sequence_axis` and `feature_axis` must differ. Received: "
                f"sequence_axis={self.sequence_axis}, "
                f"feature_axis={self.feature_axis}"
            )
        return sequence, feature

    def call(self, inputs, start_index=0, positions=None):
        sequence, feature = self._axes(len(inputs.shape))
        features = inputs.shape[feature]
        if features is not None and features % 2:
            raise ValueError(
                "Rotary embeddings need an even number of features. "
                f"Received: inputs.shape={tuple(inputs.shape)} (feature "
                f"axis {self.feature_axis})"
            )
        inputs = _move_axes(inputs, (sequence, feature), (1, -1))
        length, features = ops.shape(inputs)[1], ops.shape(inputs)[-1]
        rank = len(inputs.shape)
        if positions is None:
            cos, sin = self._angles_from(start_index, length, features, rank)
        else:
            cos, sin = self._angles_at(positions, features, rank)
        output = apply_rotary(ops.cast(inputs, self.compute_dtype), cos, sin)
        return _move_axes(output, (1, -1), (sequence, feature))

    def _angles_from(self, start_index, length, features, rank):
        """cos and sin at positions `start_index...` (`_broadcastable` to
        inputs of `rank`); the queries and keys of every block in a
        decoding step share them (`reuse_last`)."""

        def angles():
            positions = index_range(length, "float32")
            positions = positions + ops.cast(start_index, "float32")
            return self._angles_at(positions, features, rank)

        parts = (start_index, length, features, rank, self.max_wavelength)
        return reuse_last("rotary", parts + (self.scaling_factor,), angles)

    def _angles_at(self, positions, features, rank):
        """cos and sin at `positions`, `_broadcastable` to `rank`."""
        angles = rotary_cos_sin(
            positions, features, self.max_wavelength, self.scaling_factor
        )
        return _broadcastable(angles, rank)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_wavelength": self.max_wavelength,
                "scaling_factor": self.scaling_factor,
                "sequence_axis": self.sequence_axis,
                "feature_axis": self.feature_axis,
            }
        )
        return config


def _broadcastable(angles, rank):
    """cos and sin `(L, features)` or `(B, L, features)` reshaped to
    broadcast against `(B, L, ..., features)` inputs of `rank`."""
    cos, sin = angles
    if len(cos.shape) == 2:  # (L, features) -> (1, L, features)
        cos, sin = cos[None], sin[None]
    middle = (1,) * (rank - 3)
    if not middle:
        return cos, sin
    return tuple(
        ops.reshape(t, ops.shape(t)[:2] + middle + ops.shape(t)[2:])
        for t in (cos, sin)
    )


def _move_axes(tensor, source, destination):
    """`ops.moveaxis`, skipped where the axes are already in place."""
    rank = len(tensor.shape)
    if [a % rank for a in source] == [a % rank for a in destination]:
        return tensor
    return ops.moveaxis(tensor, source, destination)
