"""Keras layers: attention, Transformer encoder, embeddings."""

from keras_selfattn.layers.grouped_query_attention import (
    GroupedQueryAttention,
)
from keras_selfattn.layers.multi_head_attention import MultiHeadAttention
from keras_selfattn.layers.self_attention import SelfAttention
from keras_selfattn.layers.sinusoidal_position_encoding import (
    SinusoidalPositionEncoding,
)
from keras_selfattn.layers.token_and_position_embedding import (
    TokenAndPositionEmbedding,
)
from keras_selfattn.layers.transformer_encoder import TransformerEncoder

__all__ = [
    "GroupedQueryAttention",
    "MultiHeadAttention",
    "SelfAttention",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerEncoder",
]
