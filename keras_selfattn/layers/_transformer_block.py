"""What the encoder and decoder blocks share: their arguments' checks, the
attention configuration, and the sublayers around the attention."""

import inspect

import keras

from keras_selfattn._validation import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_rate,
)
from keras_selfattn.layers.attention_config import (
    OPTION_NAMES,
    AttentionConfig,
)
from keras_selfattn.layers.composite import CompositeLayer, clone_initializer

# The attention arguments a block takes, as `MultiHeadAttention` does (its
# own `dropout` is the residual branches' rate; `attention_dropout` the
# attention's).
ATTENTION_OPTIONS = tuple(
    name for name in OPTION_NAMES if name not in ("dropout", "flash_attention")
)

NORMALIZATIONS = ("layer_norm", "rms_norm")


def block_arguments(arguments):
    """The arguments of a block's constructor (its `locals()`) that
    `TransformerBlock` takes: its own and the attention options."""
    names = (*_BLOCK_ARGUMENTS, *ATTENTION_OPTIONS)
    return {name: value for name, value in arguments.items() if name in names}


class TransformerBlock(CompositeLayer):
    """Base of `TransformerEncoder` and `TransformerDecoder`.

    Holds the arguments both take (`intermediate_dim`, `dropout`,
    `attention_dropout`, `activation`, `layer_norm_epsilon`, initializers,
    `normalize_first`, the attention options) and builds their norms,
    dropouts and feed-forward network: `output(activation(intermediate(x)))`,
    or with `gated_feedforward` `output(activation(gate(x)) *
    intermediate(x))` (SwiGLU with `activation="silu"`, as LLaMA).
    """

    def __init__(
        self,
        intermediate_dim,
        dropout,
        attention_dropout,
        activation,
        layer_norm_epsilon,
        kernel_initializer,
        bias_initializer,
        normalize_first=False,
        normalization="layer_norm",
        gated_feedforward=False,
        use_bias=True,
        **kwargs,
    ):
        attention_options = {
            name: kwargs.pop(name)
            for name in ATTENTION_OPTIONS
            if name in kwargs
        }
        super().__init__(**kwargs)
        self.intermediate_dim = check_positive_int(
            "intermediate_dim", intermediate_dim
        )
        self.dropout = check_rate("dropout", dropout)
        # keras-hub's `attention_dropout` defaults to `dropout`; kept as
        # given for the config.
        self.attention_dropout = (
            None
            if attention_dropout is None
            else check_rate("attention_dropout", attention_dropout)
        )
        self.attention_config = AttentionConfig(
            dropout=(
                self.dropout
                if attention_dropout is None
                else self.attention_dropout
            ),
            **attention_options,
        )
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = check_positive_float(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.normalize_first = bool(normalize_first)
        self.normalization = check_choice(
            "normalization", normalization, NORMALIZATIONS
        )
        self.gated_feedforward = bool(gated_feedforward)
        self.use_bias = bool(use_bias)
        self.supports_masking = True

    def _dense(self, units, name, activation=None):
        return keras.layers.Dense(
            units,
            activation=activation,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.sublayer_dtype(name),
            name=name,
        )

    def _norm(self, name, shape):
        """A built LayerNorm (or RMS norm, per `normalization`)."""
        if self.normalization == "rms_norm":
            norm = keras.layers.RMSNormalization(
                epsilon=self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=name,
            )
        else:
            norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=name,
            )
        norm.build(shape)
        return norm

    def _dropout(self, name):
        return keras.layers.Dropout(
            self.dropout, seed=self.seed, dtype=self.dtype_policy, name=name
        )

    def _drop(self, dropout, x, training):
        """`dropout(x)`; at rate 0, where it is the identity, `x` as it is
        (saving a layer call per residual branch when decoding)."""
        if dropout.rate == 0:
            return x
        return dropout(x, training=training)

    def _build_feedforward(self, shape):
        """The feed-forward sublayers, in keras-hub's order and names
        (LLaMA's `feedforward_gate_dense` after the intermediate one)."""
        gated = self.gated_feedforward
        self.feedforward_intermediate_dense = self._dense(
            self.intermediate_dim,
            "feedforward_intermediate_dense",
            activation=None if gated else self.activation,
        )
        self.feedforward_intermediate_dense.build(shape)
        if gated:
            self.feedforward_gate_dense = self._dense(
                self.intermediate_dim,
                "feedforward_gate_dense",
                activation=self.activation,
            )
            self.feedforward_gate_dense.build(shape)
        self.feedforward_output_dense = self._dense(
            shape[-1], "feedforward_output_dense"
        )
        self.feedforward_output_dense.build(
            tuple(shape[:-1]) + (self.intermediate_dim,)
        )

    def _feedforward(self, x):
        hidden = self.feedforward_intermediate_dense(x)
        if self.gated_feedforward:
            hidden = self.feedforward_gate_dense(x) * hidden
        return self.feedforward_output_dense(hidden)

    def _block_config(self):
        """The config entries every block writes."""
        return {
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "activation": keras.activations.serialize(self.activation),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            **self.initializers_config(),
            "attention_dropout": self.attention_dropout,
            "normalize_first": self.normalize_first,
            "normalization": self.normalization,
            "gated_feedforward": self.gated_feedforward,
            "use_bias": self.use_bias,
            **self.attention_config.options(*ATTENTION_OPTIONS),
        }


_BLOCK_ARGUMENTS = tuple(
    inspect.signature(TransformerBlock.__init__).parameters
)[1:-1]
