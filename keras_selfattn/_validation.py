"""Argument checks shared across the package (Keras-style messages).

Pure Python: `keras_selfattn.text` uses them without Keras.
"""

import numbers


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
            f"`{name}` must be one of {sorted(choices, key=str)}. "
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


def static_shape(tensor):
    """`tensor.shape` with every size not known as an int replaced by None.

    A size is unknown while tracing with a dynamic length (None), and under
    shape-polymorphic export (JAX's symbolic sizes, which Python cannot
    compare with numbers); code that needs such a size at run time takes
    it from `keras.ops.shape`.

    >>> import numpy as np
    >>> static_shape(np.zeros((2, 3)))
    (2, 3)
    """
    return tuple(
        int(size) if isinstance(size, numbers.Integral) else None
        for size in tensor.shape
    )
