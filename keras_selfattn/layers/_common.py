"""Small helpers shared by the layers (not public API)."""

import keras
from keras import ops

from keras_selfattn._validation import (
    check_choice,
    check_positive_float,
    check_positive_int,
    check_rate,
)
from keras_selfattn.ops import (
    attention_core,
    check_bias,
    check_dtype,
    check_implementation,
    check_float_input,
    check_mask,
    merge_masks,
    padding_to_attention_mask,
)


def set_attention_options(
    layer,
    dropout,
    seed,
    implementation,
    flash_attention=None,
    sliding_window=None,
    logit_soft_cap=None,
):
    """Check and set what every attention layer takes: the dropout rate on
    the probabilities, its seed, the implementation (which must be able to
    apply that dropout and the soft cap), `flash_attention`,
    `sliding_window` and `logit_soft_cap` (see
    `keras_selfattn.ops.scaled_dot_product_attention`); the layer supports
    Keras masks."""
    layer.dropout = check_rate("dropout", dropout)
    layer.seed = seed
    layer.seed_generator = keras.random.SeedGenerator(seed)
    layer.logit_soft_cap = check_positive_float(
        "logit_soft_cap", logit_soft_cap, allow_none=True
    )
    layer.implementation = check_implementation(
        implementation,
        needs_probabilities=layer.dropout > 0.0,
        flash_attention=flash_attention,
        logit_soft_cap=layer.logit_soft_cap,
    )
    layer.flash_attention = flash_attention
    layer.sliding_window = check_positive_int(
        "sliding_window", sliding_window, allow_none=True
    )
    layer.supports_masking = True


POSITION_BIASES = (None, "alibi", "relative")


def check_layer_attention_bias(bias, query, value, num_heads):
    """Raise unless `bias` (or None) is a float `(T, S)`, `(B, T, S)` or
    `(B, heads, T, S)` tensor for 3-D `query`/`value` inputs."""
    if bias is None:
        return
    if len(query.shape) != 3:
        raise ValueError(
            "`attention_bias` needs 3-D inputs (batch, length, width). "
            f"Received: query.shape={tuple(query.shape)}"
        )
    batch, length, key_length = query.shape[0], query.shape[1], value.shape[1]
    expected = {
        2: (length, key_length),
        3: (batch, length, key_length),
        4: (batch, num_heads, length, key_length),
    }.get(len(bias.shape))
    if expected is None:
        raise ValueError(
            "`attention_bias` must have shape (T, S), (B, T, S) or "
            f"(B, heads, T, S). Received: attention_bias.shape="
            f"{tuple(bias.shape)}"
        )
    check_bias("attention_bias", bias, expected)


def check_position_options(
    position_bias=None,
    rotary_max_wavelength=None,
    rotary_scaling_factor=1.0,
    alibi_bias_max=8,
    relative_num_buckets=32,
    relative_max_distance=128,
):
    """The checked position options of an attention layer, as a dict of
    its constructor arguments (see `MultiHeadAttention`)."""
    return {
        "position_bias": check_choice(
            "position_bias", position_bias, POSITION_BIASES
        ),
        "rotary_max_wavelength": check_positive_float(
            "rotary_max_wavelength", rotary_max_wavelength, allow_none=True
        ),
        "rotary_scaling_factor": check_positive_float(
            "rotary_scaling_factor", rotary_scaling_factor
        ),
        "alibi_bias_max": check_positive_int("alibi_bias_max", alibi_bias_max),
        "relative_num_buckets": check_positive_int(
            "relative_num_buckets", relative_num_buckets
        ),
        "relative_max_distance": check_positive_int(
            "relative_max_distance", relative_max_distance
        ),
    }


def attend(
    layer,
    query,
    key,
    value,
    mask,
    causal,
    scale,
    training,
    scores,
    attention_bias=None,
    position_bias=None,
):
    """`attention_core` on checked `(B, L, heads, dim)` tensors with the
    layer's own options (`set_attention_options`): its dropout (in training
    only), seed generator, implementation, flash attention, sliding window
    and soft cap; `attention_bias` and `position_bias` as in the op.
    `scores=True` also returns the probabilities."""
    return attention_core(
        query,
        key,
        value,
        mask=mask,
        is_causal=causal,
        scale=scale,
        dropout_rate=layer.dropout if training else 0.0,
        seed=layer.seed_generator,
        return_attention_scores=scores,
        implementation=layer.implementation,
        sliding_window=layer.sliding_window,
        flash_attention=layer.flash_attention,
        attention_bias=attention_bias,
        position_bias=position_bias,
        logit_soft_cap=layer.logit_soft_cap,
    )


def zero_masked_rows(tensor, query_mask, query_axis):
    """Zero the query rows (along `query_axis`) where `query_mask` is False.

    `query_mask` is `(B, T)` or None; `tensor` has batch on axis 0 and the
    queries on `query_axis`.
    """
    if query_mask is None:
        return tensor
    mask = ops.cast(query_mask, "bool")
    for axis in range(1, len(tensor.shape)):
        if axis != query_axis:
            mask = ops.expand_dims(mask, axis)
    return ops.where(mask, tensor, ops.zeros_like(tensor))


def check_self_attention_call(
    inputs, width, padding_mask, attention_mask, implicit_mask
):
    """Check a self-attention call's inputs; return its merged mask.

    `inputs` must be float `(B, L, width)`. `padding_mask` and
    `implicit_mask` (Keras' mask of `inputs`, trusted) are `(B, L)` key
    masks; `attention_mask` is `(B, L, L)`. Returns a boolean mask
    broadcastable to `(B, L, L)`, or None.
    """
    check_float_input("inputs", inputs)
    check_width("inputs", inputs, width)
    batch, length = inputs.shape[0], inputs.shape[1]
    if padding_mask is not None:
        check_mask("padding_mask", padding_mask, (batch, length))
    if attention_mask is not None:
        check_mask("attention_mask", attention_mask, (batch, length, length))
    return combine_masks(attention_mask, padding_mask, implicit_mask)


def combine_masks(attention_mask, *key_masks):
    """AND of a `(B, T, S)` attention mask and `(B, S)` key masks.

    Returns a boolean mask broadcastable to `(B, T, S)` (`(B, 1, S)` with
    key masks only), or None when every mask is None.
    """
    key_mask = merge_masks(*key_masks)
    if key_mask is not None:
        key_mask = padding_to_attention_mask(key_mask)
    return merge_masks(attention_mask, key_mask)


def check_int_input(name, tensor):
    """Raise TypeError unless `tensor` has an integer dtype (token ids)."""
    check_dtype(
        name,
        tensor,
        keras.backend.is_int_dtype,
        "an integer tensor of token ids",
    )


def check_width(name, tensor, width):
    """Raise ValueError unless `tensor` is rank 3 with last dim `width`."""
    shape = tuple(tensor.shape)
    if len(shape) != 3 or shape[-1] != width:
        raise ValueError(
            f"`{name}` must have shape (batch, length, {width}), as when the "
            f"layer was built. Received: {name}.shape={shape}"
        )
