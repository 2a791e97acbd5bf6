"""keras-selfattn: attention layers for Keras 3 on TensorFlow, JAX and torch.

Submodules and layers are imported on first use (PEP 562), so
`import keras_selfattn.text` (tokenizers, no Keras) starts without Keras
or a backend. The layers register with Keras' serialization as soon as
Keras is imported, before or after this package, so
`keras.saving.load_model` finds them after a plain `import keras_selfattn`.

Example:

>>> import keras
>>> import keras_selfattn as ksa
>>> ids = keras.Input((None,), dtype="int32")
>>> x = ksa.TokenAndPositionEmbedding(1000, 64, 32, mask_zero=True)(ids)
>>> x = ksa.TransformerEncoder(intermediate_dim=64, num_heads=4)(x)
>>> tuple(x.shape)
(None, None, 32)
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.2.0"

# Public name -> the module that defines it.
_LAYERS = "keras_selfattn.layers"
_EXPORTS = {
    "AlibiBias": _LAYERS,
    "CausalLM": "keras_selfattn.causal_lm",
    "GroupedQueryAttention": _LAYERS,
    "MultiHeadAttention": _LAYERS,
    "RelativePositionBias": _LAYERS,
    "RotaryEmbedding": _LAYERS,
    "SelfAttention": _LAYERS,
    "SinusoidalPositionEncoding": _LAYERS,
    "TokenAndPositionEmbedding": _LAYERS,
    "TransformerDecoder": _LAYERS,
    "TransformerEncoder": _LAYERS,
    "scaled_dot_product_attention": "keras_selfattn.ops",
}
# keras exports its layer as `keras.layers.GroupQueryAttention`.
_ALIASES = {"GroupQueryAttention": "GroupedQueryAttention"}
_SUBMODULES = (
    "distribution",
    "generation",
    "layers",
    "lora",
    "ops",
    "pretrained",
    "text",
)
# The modules whose import registers our classes with Keras' serialization.
_REGISTERING = (_LAYERS, "keras_selfattn.causal_lm")

__all__ = sorted(
    [*_EXPORTS, *_ALIASES, "distribution", "generation", "ops", "__version__"]
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    name = _ALIASES.get(name, name)
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__, *_SUBMODULES})


class _RegisterLayersAfterKeras(importlib.abc.MetaPathFinder):
    """Imports our layers and models (which registers them with Keras)
    right after the first `import keras`, unless one of our own modules is
    importing Keras (they would import it half-initialized); they then
    register when they are first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            if not _initializing_submodules():
                _import_registering()

        spec.loader.exec_module = exec_module
        return spec


def _initializing_submodules():
    return [
        name
        for name, module in list(sys.modules.items())
        if name.startswith(f"{__name__}.")
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
    ]


def _import_registering():
    for module in _REGISTERING:
        importlib.import_module(module)


if "keras" in sys.modules:
    _import_registering()
else:
    sys.meta_path.insert(0, _RegisterLayersAfterKeras())
