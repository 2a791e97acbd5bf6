"""Argument checks shared by the ops and the layers (Keras-style messages)."""

import numbers

import keras


def check_positive_int(name, value, allow_none=False):
    """Return `value` if it is a positive integer (or None when allowed)."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def check_rate(name, value):
    """Return `value` as a float if it is a rate in [0, 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= value < 1.0
    ):
        raise ValueError(
            f"`{name}` must be a float in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def check_choice(name, value, choices):
    """Return `value` if it is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. "
            f"Received: {name}={value!r}"
        )
    return value


def check_positive_float(name, value, allow_none=False):
    """Return `value` as a float if it is a finite number > 0."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < value < float("inf")
    ):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


def check_float_input(name, tensor):
    """Raise TypeError unless `tensor` has a floating-point dtype."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise TypeError(
            f"`{name}` must be a floating-point tensor. "
            f"Received: {name}.dtype={dtype}"
        )


def check_int_input(name, tensor):
    """Raise TypeError unless `tensor` has an integer dtype (token ids)."""
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if not keras.backend.is_int_dtype(dtype):
        raise TypeError(
            f"`{name}` must be an integer tensor of token ids. "
            f"Received: {name}.dtype={dtype}"
        )


def check_width(name, tensor, width):
    """Raise ValueError unless `tensor` is rank 3 with last dim `width`."""
    shape = tuple(tensor.shape)
    if len(shape) != 3 or shape[-1] != width:
        raise ValueError(
            f"`{name}` must have shape (batch, length, {width}), as when the "
            f"layer was built. Received: {name}.shape={shape}"
        )
