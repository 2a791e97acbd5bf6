"""AdamW with its own learning rate for some weights: layers trained from
scratch beside a pretrained encoder want a larger step than the encoder
(README, NER).

    >>> import keras
    >>> head = keras.layers.Dense(1, kernel_initializer="zeros", name="head")
    >>> head.build((None, 1))
    >>> optimizer = ScaledAdamW(0.01, learning_rate_scales={"head/bias": 5})
    >>> grads = [keras.ops.ones((1, 1)), keras.ops.ones((1,))]
    >>> optimizer.apply(grads, head.trainable_variables)
    >>> weights = [keras.ops.convert_to_numpy(w) for w in head.weights]
    >>> [round(float(w.sum()), 4) for w in weights]
    [-0.01, -0.05]
"""

import keras

# The AdamW class keras builds on this backend. A subclass of
# `keras.optimizers.AdamW` itself would lose torch's multi-tensor update
# (keras swaps in its torch class only for AdamW exactly): an epoch of the
# NER model took 1.4x as long (README, NER).
_BackendAdamW = type(keras.optimizers.AdamW())


@keras.saving.register_keras_serializable(package="recipes")
class ScaledAdamW(_BackendAdamW):
    """`keras.optimizers.AdamW` whose step for the weights named in
    `learning_rate_scales` is that many times the learning rate (the
    schedule's, at each step); weight decay stays at the plain rate.

    Args:
        learning_rate_scales: `{variable path: factor}`, each factor > 0.
            Every path must name a weight the optimizer updates.
        *args, **kwargs: as `keras.optimizers.AdamW` takes them.
    """

    def __init__(self, *args, learning_rate_scales=None, **kwargs):
        super().__init__(*args, **kwargs)
        scales = dict(learning_rate_scales or {})
        for path, factor in scales.items():
            if not isinstance(factor, (int, float)) or factor <= 0:
                raise ValueError(
                    "`learning_rate_scales` must map variable paths to "
                    f"positive factors. Received: {path!r}: {factor!r}"
                )
        self.learning_rate_scales = {p: float(f) for p, f in scales.items()}

    def build(self, variables):
        missing = set(self.learning_rate_scales) - {v.path for v in variables}
        if missing:
            raise ValueError(
                "`learning_rate_scales` names weights the optimizer does not "
                f"update: {sorted(missing)}"
            )
        super().build(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras' hook for one step over all weights (after clipping and
        # weight decay): each factor's weights take the backend's step as
        # one group (on torch, one multi-tensor update).
        groups = {}
        for grad, variable in zip(grads, trainable_variables):
            factor = self.learning_rate_scales.get(variable.path, 1.0)
            groups.setdefault(factor, ([], []))
            groups[factor][0].append(grad)
            groups[factor][1].append(variable)
        for factor, (group_grads, group_variables) in groups.items():
            rate = learning_rate if factor == 1.0 else learning_rate * factor
            super()._backend_update_step(group_grads, group_variables, rate)

    def get_config(self):
        return {
            **super().get_config(),
            "learning_rate_scales": self.learning_rate_scales,
        }
