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
