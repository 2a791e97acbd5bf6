"""LoRA adapters (Hu et al. 2021) for models built from our layers.

`enable_lora` freezes a model but for keras' LoRA adapters on the
projections of its attention layers; the helpers below it act on one
keras `Dense`, `EinsumDense` or `Embedding` and are what our composite
layers use to record and restore their sublayers' adapters (see
`keras_selfattn.layers.composite`).
"""

import keras

from keras_selfattn._validation import check_positive_float, check_positive_int

# The sublayers `enable_lora` adapts by default: every attention layer's
# query and value projections (as keras-hub and Hu et al. do).
LORA_TARGETS = ("query", "value")


def enable_lora(model, rank, target_layer_names=None, alpha=None):
    """Freeze `model` and give LoRA adapters (Hu et al. 2021) to the
    projections of its attention layers: then only the adapters train.

    As keras-hub's `Backbone.enable_lora` (same argument names): every
    layer of `model` is frozen, then each sublayer of our layers
    (`MultiHeadAttention`, `TransformerEncoder`, ...) named in
    `target_layer_names` gets keras' adapter (`layer.enable_lora`): its
    kernel `W` acts as `W + alpha / rank * a @ b`, with `b` zero at
    first, and `a` and `b` are all that trains (biases stay frozen).
    keras factors the kernel's last axis: a projection kernel `(width,
    heads, head_size)` gets `a` of shape `(width, heads, rank)` and `b`
    of shape `(rank, head_size)`. Any built model of our layers works,
    such as `keras_selfattn.pretrained.bert_encoder`'s; a head added
    around it afterwards trains in full.

    The model saves as `.keras` and `keras.saving.load_model` gives it
    back adapted (our layers record their adapters in their configs).
    Saving merges each adapter into its kernel (keras' behaviour), so
    the loaded model starts fresh adapters on the merged kernels: it
    predicts the same and trains on.

    Args:
        model: a built `keras.Model` holding our layers.
        rank: the adapters' rank, a positive integer.
        target_layer_names: names of the sublayers to adapt, each naming
            at least one; default `LORA_TARGETS` (query and value).
        alpha: the update is scaled by `alpha / rank`; default `rank`.

    Example (per block 2 adapted projections of `a` (8, 2, 2) and `b`
    (2, 4): 40 weights each):

    >>> import numpy as np
    >>> import keras_selfattn as ksa
    >>> x = keras.Input((None, 8))
    >>> y = ksa.TransformerEncoder(intermediate_dim=16, num_heads=2)(x)
    >>> y = ksa.TransformerEncoder(intermediate_dim=16, num_heads=2)(y)
    >>> model = keras.Model(x, y)
    >>> enable_lora(model, rank=2)
    >>> sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    160
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model. Received: model={model!r}"
        )
    rank = check_positive_int("rank", rank)
    alpha = check_positive_float("alpha", alpha, allow_none=True)
    targets = _lora_targets(model, target_layer_names)
    model.trainable = True
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):  # adapted before
            for factor in adapter_factors(layer):
                factor.trainable = True
    for layer in targets:
        enable_adapter(layer, rank, alpha)


def _lora_targets(model, target_layer_names):
    """The sublayers of our layers in `model` named in `target_layer_names`
    (default `LORA_TARGETS`), each name matching one at least."""
    if target_layer_names is None:
        target_layer_names = LORA_TARGETS
    if not isinstance(target_layer_names, (list, tuple)) or not all(
        isinstance(name, str) for name in target_layer_names
    ):
        raise TypeError(
            "`target_layer_names` must be a list of layer names. Received: "
            f"target_layer_names={target_layer_names!r}"
        )
    # Only our composite layers write their sublayers' adapters into their
    # configs (`records_adapters`), so only theirs are adapted.
    adaptable = {
        id(sublayer): sublayer
        for layer in model._flatten_layers()
        if getattr(layer, "records_adapters", False)
        for sublayer in adaptable_sublayers(layer)
    }.values()
    available = sorted({sublayer.name for sublayer in adaptable})
    unknown = [name for name in target_layer_names if name not in available]
    if unknown or not target_layer_names:
        raise ValueError(
            "`target_layer_names` must name sublayers of the model's attention "
            f"and encoder layers that take a LoRA adapter: {available}. "
            f"Received: target_layer_names={list(target_layer_names)}"
        )
    targets = [s for s in adaptable if s.name in target_layer_names]
    adapted = [s.path for s in targets if s.lora_enabled]
    if adapted:
        raise ValueError(
            f"LoRA is already enabled on {adapted}. Received: "
            f"target_layer_names={list(target_layer_names)}"
        )
    return targets


def enable_adapter(layer, rank, alpha=None):
    """keras' LoRA adapter on a built Dense, EinsumDense or Embedding
    `layer` (`layer.enable_lora`): its kernel then adds `alpha / rank *
    a @ b`; the two factors train even if `layer` is frozen.

    Saving merges the adapter into the kernel, and loading zeroes both
    factors (keras 3.15), where neither gets a gradient: the factor `a`
    is drawn again after loading, as `enable_lora` draws it, so the
    loaded layer predicts the same (`b` stays zero) and trains on.
    """
    layer.enable_lora(rank, lora_alpha=alpha)
    a, b = adapter_factors(layer)
    a.trainable = b.trainable = True
    load = layer.load_own_variables

    def load_own_variables(store):
        load(store)
        a.assign(keras.initializers.HeUniform()(a.shape, dtype=a.dtype))

    layer.load_own_variables = load_own_variables


def adaptable_sublayers(layer):
    """The built sublayers of `layer` that take a LoRA adapter (keras'
    Dense, EinsumDense and Embedding)."""
    return [
        sublayer
        for sublayer in layer._flatten_layers(include_self=False)
        if hasattr(sublayer, "enable_lora") and sublayer.built
    ]


def adapter_factors(layer):
    """`(a, b)`, the factors of `layer`'s LoRA adapter."""
    if isinstance(layer, keras.layers.Embedding):
        return layer.lora_embeddings_a, layer.lora_embeddings_b
    return layer.lora_kernel_a, layer.lora_kernel_b


def path_below(layer, sublayer):
    """`sublayer.path` relative to `layer.path`."""
    return sublayer.path[len(layer.path) + 1 :]
