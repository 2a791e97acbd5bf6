"""Compiling with the backend's own compiler, and telling eager values
from traced ones: the package's imports of a backend, besides the torch
fast path of `fused.py`.

Each compiled function's portable twin is the function itself, called as
it is (on torch, when not eager, or with `jit_compile=False`).
"""

import keras


def is_eager(tensor):
    """Whether `tensor` is a concrete JAX value or an eager TensorFlow one
    (False on torch, whose eager calls are not compiled here)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    return False


def concrete_key(value):
    """A hashable key that stands for the tensor `value` while it cannot
    change, or None where it cannot serve as one (a traced or symbolic
    value, a variable, not a tensor).

    A concrete JAX array or eager TensorFlow tensor (both immutable) is
    known by its identity; a torch tensor with data (not on the "meta"
    device of Keras' shape inference), outside `torch.compile`, by its
    identity and its version counter (which in-place writes advance).
    The key holds `value`, so its identity is not reused while the key
    lives.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if (
            not isinstance(value, torch.Tensor)
            or value.device.type == "meta"
            or torch.compiler.is_compiling()
        ):
            return None
        return (_Identity(value), value._version)
    if backend == "tensorflow":
        import tensorflow as tf

        if not (tf.executing_eagerly() and isinstance(value, tf.Tensor)):
            return None
        return (_Identity(value),)
    import jax

    if not isinstance(value, jax.Array) or isinstance(value, jax.core.Tracer):
        return None
    return (_Identity(value),)


# The last result of each `reuse_last` name: `name -> (key, result)`.
_last_results = {}


def reuse_last(name, parts, compute):
    """`compute()`, or the result it gave the last call of `name` with
    the same `parts`: Python values (ints, floats, strings, bools, None)
    and at least one concrete tensor (`concrete_key`). The blocks of one
    decoding step all compute the same positions, rotations and masks
    from the same index tensor; eager calls then compute them once per
    step. With a traced part or result, or no tensor among the parts
    (which cannot tell an eager call from a traced one), nothing is
    reused or kept.

    Example:

    >>> calls = []
    >>> def compute():
    ...     calls.append(1)
    ...     return 2 * index
    >>> index = keras.ops.convert_to_tensor(21)
    >>> int(reuse_last("example", (index, "a"), compute)), len(calls)
    (42, 1)
    >>> int(reuse_last("example", (index, "a"), compute)), len(calls)
    (42, 1)
    """
    key, tensors = [], 0
    for part in parts:
        if part is None or isinstance(part, (bool, int, float, str)):
            key.append(part)
            continue
        part_key = concrete_key(part)
        if part_key is None:
            return compute()
        key.append(part_key)
        tensors += 1
    if not tensors:
        return compute()
    key = tuple(key)
    last = _last_results.get(name)
    if last is not None and last[0] == key:
        return last[1]
    result = compute()
    if all(concrete_key(value) for value in keras.tree.flatten(result)):
        _last_results[name] = (key, result)
    return result


class _Identity:
    """Compares (and hashes) as the identity of the object it holds."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.value is self.value

    def __hash__(self):
        return id(self.value)


def compile_function(
    function,
    static_argnames=(),
    static_argnums=(),
    variables=None,
    xla=True,
):
    """`function` compiled by the backend: `jax.jit` (with
    `static_argnames`/`static_argnums`, the arguments the trace depends
    on as Python values) or `tf.function(jit_compile=xla)`; on torch,
    `function` run under `torch.no_grad()`.

    `variables`: a callable giving the Keras variables `function` reads;
    on JAX their values are then arguments of the compiled function (not
    constants of its trace), so it follows the weights as they change.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.no_grad()(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=xla)
    import jax

    if variables is None:
        # Without `static_argnums`, jax also treats the arguments named in
        # `static_argnames` as static when they are passed by position.
        return jax.jit(
            function,
            static_argnames=static_argnames,
            static_argnums=static_argnums or None,
        )

    def stateless(values, *args, **kwargs):
        with keras.StatelessScope(state_mapping=list(zip(variables(), values))):
            return function(*args, **kwargs)

    compiled = jax.jit(
        stateless,
        static_argnames=static_argnames,
        static_argnums=tuple(number + 1 for number in static_argnums),
    )

    def run(*args, **kwargs):
        values = [variable.value for variable in variables()]
        return compiled(values, *args, **kwargs)

    return run
