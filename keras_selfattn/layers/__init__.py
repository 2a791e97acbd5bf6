"""Keras layers: attention, Transformer encoder and decoder, embeddings."""

from keras_selfattn.layers.alibi_bias import AlibiBias
from keras_selfattn.layers.grouped_query_attention import (
    GroupedQueryAttention,
)
from keras_selfattn.layers.multi_head_attention import MultiHeadAttention
from keras_selfattn.layers.relative_position_bias import (
    RelativePositionBias,
)
from keras_selfattn.layers.rotary_embedding import RotaryEmbedding
from keras_selfattn.layers.self_attention import SelfAttention
from keras_selfattn.layers.sinusoidal_position_encoding import (
    SinusoidalPositionEncoding,
)
from keras_selfattn.layers.token_and_position_embedding import (
    TokenAndPositionEmbedding,
)
from keras_selfattn.layers.transformer_decoder import TransformerDecoder
from keras_selfattn.layers.transformer_encoder import TransformerEncoder

__all__ = [
    "AlibiBias",
    "GroupedQueryAttention",
    "MultiHeadAttention",
    "RelativePositionBias",
    "RotaryEmbedding",
    "SelfAttention",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerDecoder",
    "TransformerEncoder",
]
