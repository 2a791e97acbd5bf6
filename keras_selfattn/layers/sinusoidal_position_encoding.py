"""SinusoidalPositionEncoding: the fixed sin/cos position signal."""

import keras
from keras import ops

from keras_selfattn._validation import check_positive_float
from keras_selfattn.ops.masks import index_range


def sinusoidal_positions(
    length, width, max_wavelength=10000.0, dtype="float32", start_index=0
):
    """`(length, width)` encodings of Vaswani et al. (2017) of positions
    `start_index...`, interleaved:

    `P[p, 2i] = sin(p / max_wavelength^(2i / width))`,
    `P[p, 2i + 1] = cos(p / max_wavelength^(2i / width))`.

    Example:

    >>> from keras import ops
    >>> p = ops.convert_to_numpy(sinusoidal_positions(3, 4))
    >>> p.shape, round(float(p[1, 0]), 4), float(p[0, 1])
    ((3, 4), 0.8415, 1.0)
    """
    positions = index_range(length, "float32")
    positions = positions + ops.cast(start_index, "float32")
    dims = ops.arange(0, width, dtype="float32")
    even_dims = dims - ops.mod(dims, 2.0)
    inverse_wavelengths = ops.power(
        float(max_wavelength), -even_dims / float(width)
    )
    angles = ops.expand_dims(positions, 1) * ops.expand_dims(
        inverse_wavelengths, 0
    )
    is_odd = ops.expand_dims(ops.equal(ops.mod(dims, 2.0), 1.0), 0)
    encodings = ops.where(is_odd, ops.cos(angles), ops.sin(angles))
    return ops.cast(encodings, dtype)


@keras.saving.register_keras_serializable(package="keras_selfattn")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Fixed sinusoidal position encodings shaped like the input.

    Returns the encodings only (add them to your embeddings), so any length
    works and nothing is learned.

    Args:
        max_wavelength: the longest wavelength of the sinusoids.

    Call arguments:
        inputs: `(B, L, width)` float tensor (only its shape is used).

    Returns:
        `(B, L, width)` encodings in the compute dtype.

    Example:

    >>> import numpy as np
    >>> x = np.zeros((2, 5, 8), "float32")
    >>> tuple(SinusoidalPositionEncoding()(x).shape)
    (2, 5, 8)

    References:
        Vaswani et al., "Attention Is All You Need", 2017, section 3.5.
    """

    def __init__(self, max_wavelength=10000.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = check_positive_float(
            "max_wavelength", max_wavelength
        )
        self.supports_masking = True

    def call(self, inputs):
        if len(inputs.shape) != 3:
            raise ValueError(
                "`inputs` must have shape (batch, length, width). "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        shape = ops.shape(inputs)
        encodings = sinusoidal_positions(
            shape[1], inputs.shape[-1], self.max_wavelength, self.compute_dtype
        )
        return ops.broadcast_to(ops.expand_dims(encodings, 0), shape)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
