"""AttentionConfig: an attention layer's options, checked once."""

import dataclasses

from keras_selfattn._validation import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_rate,
)
from keras_selfattn.ops.attention import check_implementation

POSITION_BIASES = (None, "alibi", "relative")


def _optional(check):
    return lambda name, value: check(name, value, allow_none=True)


# The one check of each option (the field's name is the argument's);
# `implementation` and `flash_attention` are checked together with what
# they must support (`check_implementation`), the seed by keras.
_CHECKS = {
    "num_heads": check_positive_int,
    "num_key_value_heads": _optional(check_positive_int),
    "dropout": check_rate,
    "sliding_window": _optional(check_positive_int),
    "logit_soft_cap": _optional(check_positive_float),
    "position_bias": lambda name, value: check_choice(
        name, value, POSITION_BIASES
    ),
    "rotary_max_wavelength": _optional(check_positive_float),
    "rotary_scaling_factor": check_positive_float,
    "alibi_bias_max": check_positive_int,
    "relative_num_buckets": check_positive_int,
    "relative_max_distance": check_positive_int,
}


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """What an attention layer does besides its projections: heads,
    attention dropout, path, window, soft cap, positions and biases.

    Built and checked once, in the layer's constructor, from its flat
    keras-style arguments (which keep their names in `get_config`); a
    layer that builds an attention sublayer (`TransformerEncoder`) hands
    its configuration down as it is (`MultiHeadAttention(...,
    attention_config=config)`). Each field means what the argument of
    the same name of `MultiHeadAttention` means; `dropout` is the rate on
    the attention probabilities.

    Example:

    >>> config = AttentionConfig(num_heads=4, num_key_value_heads=2,
    ...                          position_bias="alibi")
    >>> config.kv_heads, config.implementation
    (2, 'auto')
    >>> AttentionConfig(num_heads=0)
    Traceback (most recent call last):
    ...
    ValueError: `num_heads` must be a positive integer. Received: num_heads=0
    """

    num_heads: int = 1
    num_key_value_heads: int = None
    dropout: float = 0.0
    seed: int = None
    implementation: str = "auto"
    flash_attention: bool = None
    sliding_window: int = None
    logit_soft_cap: float = None
    position_bias: str = None
    rotary_max_wavelength: float = None
    rotary_scaling_factor: float = 1.0
    alibi_bias_max: int = 8
    relative_num_buckets: int = 32
    relative_max_distance: int = 128

    def __post_init__(self):
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.num_heads % self.kv_heads:
            raise ValueError(
                "`num_key_value_heads` must divide `num_heads`. Received: "
                f"num_heads={self.num_heads}, "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        check_implementation(
            self.implementation,
            needs_probabilities=self.dropout > 0.0,
            flash_attention=self.flash_attention,
            logit_soft_cap=self.logit_soft_cap,
        )

    @classmethod
    def from_arguments(cls, attention_config=None, **arguments):
        """The configuration of a layer's constructor: `attention_config`
        if given (then each argument must be its default or agree with
        it), else one built from `arguments`."""
        if attention_config is None:
            return cls(**arguments)
        if not isinstance(attention_config, cls):
            raise TypeError(
                "`attention_config` must be an AttentionConfig or None. "
                f"Received: attention_config={attention_config!r}"
            )
        defaults = cls()
        clashes = {
            name: value
            for name, value in arguments.items()
            if value != getattr(defaults, name)
            and value != getattr(attention_config, name)
        }
        if clashes:
            raise ValueError(
                "Pass attention options either in `attention_config` or as "
                f"arguments, not both. Received: {clashes} and "
                f"attention_config={attention_config!r}"
            )
        return attention_config

    @property
    def kv_heads(self):
        """The number of key/value heads."""
        return self.num_key_value_heads or self.num_heads

    def check_head_size(self, key_dim):
        """Raise unless each query/key head of `key_dim` fits the options
        (rotary embeddings rotate pairs of features)."""
        if self.rotary_max_wavelength is not None and key_dim % 2:
            raise ValueError(
                "Rotary embeddings (`rotary_max_wavelength`) need an even "
                f"`key_dim`. Received: key_dim={key_dim}"
            )

    def check_call(self, return_attention_scores):
        """Raise unless this configuration can give what a call asks."""
        if return_attention_scores:
            check_implementation(
                self.implementation, True, self.flash_attention
            )

    def options(self, *names):
        """`{name: value}` of the fields `names` (default: all), for a
        layer's `get_config`."""
        return {name: getattr(self, name) for name in names or OPTION_NAMES}

    def problem_options(self, training):
        """The `AttentionProblem` fields this configuration sets for a
        call (attention dropout in training only); the path is
        `implementation`."""
        return {
            "dropout_rate": self.dropout if training else 0.0,
            "sliding_window": self.sliding_window,
            "flash_attention": self.flash_attention,
            "logit_soft_cap": self.logit_soft_cap,
        }


# The configuration's fields: the attention arguments of a layer.
OPTION_NAMES = tuple(
    field.name for field in dataclasses.fields(AttentionConfig)
)


def forward_options(*names):
    """Class decorator: read-only attributes `names` of a layer that read
    its `attention_config` (so `layer.implementation` etc. keep working)."""

    def decorate(cls):
        for name in names:
            setattr(
                cls,
                name,
                property(
                    lambda self, name=name: getattr(
                        self.attention_config, name
                    ),
                    doc=f"`attention_config.{name}`.",
                ),
            )
        return cls

    return decorate
