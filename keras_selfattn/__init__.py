"""keras-selfattn: attention layers for Keras 3 on TensorFlow, JAX and torch.

Example:

>>> import keras
>>> import keras_selfattn as ksa
>>> ids = keras.Input((None,), dtype="int32")
>>> x = ksa.TokenAndPositionEmbedding(1000, 64, 32, mask_zero=True)(ids)
>>> x = ksa.TransformerEncoder(num_heads=4, intermediate_dim=64)(x)
>>> tuple(x.shape)
(None, None, 32)
"""

from keras_selfattn import distribution, ops
from keras_selfattn.layers import (
    AlibiBias,
    GroupedQueryAttention,
    MultiHeadAttention,
    RelativePositionBias,
    RotaryEmbedding,
    SelfAttention,
    SinusoidalPositionEncoding,
    TokenAndPositionEmbedding,
    TransformerEncoder,
)
from keras_selfattn.ops import scaled_dot_product_attention

# keras exports its layer as `keras.layers.GroupQueryAttention`.
GroupQueryAttention = GroupedQueryAttention

__version__ = "0.1.0"

__all__ = [
    "AlibiBias",
    "GroupQueryAttention",
    "GroupedQueryAttention",
    "MultiHeadAttention",
    "RelativePositionBias",
    "RotaryEmbedding",
    "SelfAttention",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerEncoder",
    "distribution",
    "ops",
    "scaled_dot_product_attention",
    "__version__",
]
