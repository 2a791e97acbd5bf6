"""TokenAndPositionEmbedding: token embeddings plus position information."""

import keras
from keras import ops

from keras_selfattn._validation import (
    check_choice,
    check_positive_float,
    check_positive_int,
    static_shape,
)
from keras_selfattn.layers.call_inputs import (
    check_int_input,
)
from keras_selfattn.layers.composite import CompositeLayer, clone_initializer
from keras_selfattn.ops.masks import index_range
from keras_selfattn.layers.sinusoidal_position_encoding import (
    sinusoidal_positions,
)

POSITION_ENCODINGS = ("learned", "sinusoidal")


@keras.saving.register_keras_serializable(package="keras_selfattn")
class TokenAndPositionEmbedding(CompositeLayer):
    """Token embedding plus a learned or sinusoidal position embedding.

    With `mask_zero=True`, id 0 is padding: the output carries the Keras mask
    `ids != 0`, which our layers (and Keras') honour downstream.

    Args:
        vocabulary_size: number of token ids.
        sequence_length: the longest sequence (size of the learned position
            table; a guard on the input length for both kinds).
        embedding_dim: output width.
        position_encoding: `"learned"` or `"sinusoidal"`.
        mask_zero: treat id 0 as padding and emit a mask.
        embeddings_initializer: for the token (and learned position) tables.
        max_wavelength: for `position_encoding="sinusoidal"`.

    Call arguments:
        inputs: `(B, L)` integer token ids, `L <= sequence_length`.
        start_index: the position of the first token (int or int
            tensor), as keras-hub's layer: a cached decoding step's.

    Returns:
        `(B, L, embedding_dim)` in the compute dtype.

    Example:

    >>> import numpy as np
    >>> embed = TokenAndPositionEmbedding(100, 16, 8, mask_zero=True)
    >>> ids = np.array([[5, 9, 0, 0]])
    >>> tuple(embed(ids).shape)
    (1, 4, 8)
    >>> keras.ops.convert_to_numpy(embed.compute_mask(ids)).tolist()
    [[True, True, False, False]]
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        embedding_dim,
        position_encoding="learned",
        mask_zero=False,
        embeddings_initializer="uniform",
        max_wavelength=10000.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = check_positive_int(
            "vocabulary_size", vocabulary_size
        )
        self.sequence_length = check_positive_int(
            "sequence_length", sequence_length
        )
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.position_encoding = check_choice(
            "position_encoding", position_encoding, POSITION_ENCODINGS
        )
        self.mask_zero = bool(mask_zero)
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )
        self.max_wavelength = check_positive_float(
            "max_wavelength", max_wavelength
        )

    def build(self, inputs_shape):
        if len(inputs_shape) != 2:
            raise ValueError(
                "`inputs` must have shape (batch, length) of token ids. "
                f"Received: inputs.shape={tuple(inputs_shape)}"
            )
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.embedding_dim,
            embeddings_initializer=clone_initializer(
                self.embeddings_initializer
            ),
            dtype=self.sublayer_dtype("token_embedding"),
            name="token_embedding",
        )
        self.token_embedding.build(inputs_shape)
        if self.position_encoding == "learned":
            self.position_embeddings = self.add_weight(
                shape=(self.sequence_length, self.embedding_dim),
                initializer=clone_initializer(self.embeddings_initializer),
                name="position_embeddings",
            )
        self.restore_sublayers()

    def call(self, inputs, start_index=0):
        check_int_input("inputs", inputs)
        length = static_shape(inputs)[1]
        first = start_index if isinstance(start_index, int) else 0
        if length is not None and first + length > self.sequence_length:
            raise ValueError(
                f"`inputs` of length {length} from position {first} ends "
                f"past `sequence_length`={self.sequence_length}. Received: "
                f"inputs.shape={tuple(inputs.shape)}, start_index={first}"
            )
        tokens = self.token_embedding(inputs)
        length = ops.shape(inputs)[1]
        if self.position_encoding == "learned":
            # A gather, not a slice: a slice of a size known only at run
            # time fails shape-polymorphic export (JAX cannot prove it
            # fits the table), and XLA compiles a slice again for every
            # new start.
            positions = ops.take(
                self.position_embeddings,
                index_range(length) + ops.cast(start_index, "int32"),
                axis=0,
            )
            positions = ops.cast(positions, self.compute_dtype)
        else:
            positions = sinusoidal_positions(
                length,
                self.embedding_dim,
                self.max_wavelength,
                self.compute_dtype,
                start_index=start_index,
            )
        return tokens + ops.expand_dims(positions, 0)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "position_encoding": self.position_encoding,
                "mask_zero": self.mask_zero,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "max_wavelength": self.max_wavelength,
            }
        )
        return config
