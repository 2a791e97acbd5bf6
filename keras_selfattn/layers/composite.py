"""The base of our layers that build sublayers, and what it records.

`CompositeLayer` writes into its config what was done to its sublayers
after building (`model.quantize()`, LoRA adapters) so that a loaded layer
does it again; `clone_initializer` and `initializers_config` are the
initializer plumbing every such layer shares.
"""

import keras

from keras_selfattn.lora import adaptable_sublayers, enable_adapter, path_below


def clone_initializer(initializer):
    """A fresh copy, so sublayers never share one stateless initializer."""
    return initializer.__class__.from_config(initializer.get_config())


class CompositeLayer(keras.layers.Layer):
    """Base of our layers whose `build()` creates sublayers.

    What is done to the sublayers after building, `model.quantize()` and
    LoRA adapters (`keras_selfattn.lora.enable_lora`), is written
    into the config (`_record_sublayers`), so that a loaded layer's
    `build()` does it again: quantized policies as each sublayer is
    created (`sublayer_dtype`), adapters once all are
    (`restore_sublayers`). A plain layer's config holds none of it.
    """

    # `keras_selfattn.lora.enable_lora` adapts only the sublayers of layers
    # that record their adapters.
    records_adapters = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._lora_records = {}

    def get_config(self):
        return self._record_sublayers(super().get_config())

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        records = config.pop("lora", {})
        layer = super().from_config(config)
        layer._lora_records = records
        return layer

    def _record_sublayers(self, config):
        """Record in `config` (returned) what was done to `self`'s sublayers
        after building, if anything:

        - `config["dtype"]`: a `DTypePolicyMap` of the policies of the
          sublayers `model.quantize()` quantized, by path (keras' pattern for
          composite layers); `sublayer_dtype` hands each its own.
        - `config["lora"]`: `{path below: {"lora_rank", "lora_alpha"}}`
          of the sublayers with a LoRA adapter; `restore_sublayers` enables
          them again.

        Records the layer already had (loaded, not yet built) are kept.
        """
        policy = self.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            policy_map = {path: policy[path] for path in policy}
            default = policy.default_policy
        else:
            policy_map, default = {}, policy
        adapters = {
            name: dict(lora) for name, lora in self._lora_records.items()
        }
        for sublayer in self._flatten_layers(include_self=False):
            if getattr(sublayer, "lora_enabled", False):
                adapters[path_below(self, sublayer)] = {
                    "lora_rank": sublayer.lora_rank,
                    "lora_alpha": sublayer.lora_alpha,
                }
            if (
                sublayer.quantization_mode is None
                or sublayer.path in policy_map
            ):
                continue
            own = sublayer.dtype_policy
            if isinstance(own, keras.dtype_policies.DTypePolicyMap):
                own = own[sublayer.path]
            policy_map[sublayer.path] = own
        if policy_map:
            config["dtype"] = keras.dtype_policies.serialize(
                keras.dtype_policies.DTypePolicyMap(default, policy_map)
            )
        if adapters:
            config["lora"] = adapters
        return config

    def sublayer_dtype(self, name):
        """The `dtype` for the sublayer `name` that `build()` creates: the
        quantized policy a `DTypePolicyMap` of the layer holds for its path
        (see `_record_sublayers`), else `self.dtype_policy`.

        A quantized sublayer gets its own policy, not the map: keras 3.15's
        Dense cannot save its int8/int4 variables under a map.
        """
        policy = self.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            own = policy[f"{self.path}/{name}"]
            if own.quantization_mode is not None:
                return own
        return policy

    def restore_sublayers(self):
        """Called last in `build()`: freeze the new sublayers of a frozen
        layer (keras creates them trainable, so a loaded frozen layer would
        train them) and enable the adapters its config records (see
        `_record_sublayers`)."""
        if not self.trainable:
            # Each one: TensorFlow's attribute tracking skips setting a value
            # an attribute already has, so `self.trainable = False` would not
            # reach the sublayers.
            for sublayer in self._flatten_layers(include_self=False):
                sublayer.trainable = False
        if not self._lora_records:
            return
        sublayers = {
            path_below(self, sublayer): sublayer
            for sublayer in adaptable_sublayers(self)
        }
        for name, lora in self._lora_records.items():
            enable_adapter(
                sublayers[name], lora["lora_rank"], lora["lora_alpha"]
            )

    def initializers_config(self):
        """The `kernel_initializer`/`bias_initializer` entries of a config."""
        return {
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
        }
