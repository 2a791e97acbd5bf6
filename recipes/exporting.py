"""Exporting a trained recipe model: the `export` command's arguments,
and the artifact it writes beside tokenizer.json (`recipes/deploy.py`
serves it), with dynamic batch and length axes wherever the backend's
exporter allows.
"""

import dataclasses
import functools
from pathlib import Path

import numpy as np

from recipes import deploy

# torch.export and torch's ONNX export need bounds on the dynamic sizes.
MAX_BATCH, MAX_LENGTH = 1024, 8192


def add_arguments(parser, run_dir):
    """The arguments of the `export` command (`--model-dir`, `--format`)."""
    parser.add_argument("--model-dir", default=run_dir)
    parser.add_argument(
        "--format",
        default="onnx",
        choices=sorted(deploy.ARTIFACTS),
        help="onnx (default; every backend), tf_saved_model (TensorFlow, "
        "JAX), litert (TensorFlow) or torch (torch)",
    )


def export_artifact(model, model_dir, format, sample):
    """Export `model` to `<model_dir>/<deploy.ARTIFACTS[format]>` (written
    atomically: a failed export leaves an earlier artifact as it was).

    The batch and length axes stay dynamic, except in torch's ONNX
    export, where keras' own layers cannot keep them
    (`keras.layers.LayerNormalization` fails to trace): there the
    artifact takes the shape of `sample`, on which a model never called
    (a loaded one) is called first. Returns the artifact's path.
    """
    import keras

    from keras_selfattn.downloads import atomic_write

    backend = keras.backend.backend()
    formats = deploy.FORMATS_BY_BACKEND[backend]
    if format not in formats:
        raise ValueError(
            f"`format` must be one of {formats} on the {backend} backend. "
            f"Received: format={format!r}"
        )
    if not model._called:  # a loaded model: keras exports called ones
        model(sample)
    options = export_options(model, format, sample)
    if backend == "tensorflow" and format == "onnx":
        _teach_tf2onnx_erfc()
    path = Path(model_dir) / deploy.ARTIFACTS[format]

    def write(tmp):
        model.export(tmp, format=format, verbose=False, **options)
        if format == "onnx":
            _inline_external_data(tmp)

    atomic_write(path, write, directory=format == "tf_saved_model")
    return path


@functools.cache
def _teach_tf2onnx_erfc():
    """Let tf2onnx convert TensorFlow's `Erfc` as `1 - Erf`: TensorFlow's
    exact GELU (`activation="gelu"`) computes it, and tf2onnx 1.17 has
    no handler for it ("No Op registered for Erfc" in onnxruntime)."""
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
            one = ctx.make_const(utils.make_name("one"), np.array(1, dtype))
            ctx.insert_new_node_on_output(
                "Sub", node.output[0], inputs=[one.output[0], node.output[0]]
            )


def _inline_external_data(path):
    """Move the weights that jax2onnx writes beside an ONNX file (to
    `<path>.data`, named after the temporary path) into the file: the
    artifact is then one file (up to protobuf's 2 GiB)."""
    import onnx

    data = Path(f"{path}.data")
    if data.exists():
        onnx.save_model(onnx.load(str(path)), str(path))
        data.unlink()


def export_options(model, format, sample):
    """The `model.export` options that keep the batch and length dynamic
    where the backend's exporter can (see `export_artifact`); every input
    of `sample` shares its batch and length axes."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return {}
    if backend == "jax" and format == "tf_saved_model":
        # jax2tf cannot trace the gradient of a loop with a custom
        # gradient under symbolic shapes; a serving artifact needs none.
        shapes = deploy.map_inputs(
            lambda array, _: f"({', '.join(map(str, _axes(array)))})", sample
        )
        return {
            "jax2tf_kwargs": {
                "with_gradient": False,
                "polymorphic_shapes": [shapes],
            }
        }
    if backend == "jax":  # onnx
        specs = deploy.map_inputs(
            lambda array, name: _NamedAxesSpec(
                _axes(array), str(array.dtype), name
            ),
            sample,
        )
        return {"input_signature": [specs]}
    if format == "onnx":
        specs = deploy.map_inputs(
            lambda array, name: keras.InputSpec(
                shape=array.shape, dtype=str(array.dtype), name=name
            ),
            sample,
        )
        return {"input_signature": [specs]}
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    length = Dim("length", min=2, max=MAX_LENGTH)
    axes = deploy.map_inputs(lambda array, _: {0: batch, 1: length}, sample)
    # keras' torch export passes the input as one positional argument.
    return {"dynamic_shapes": [(axes,)]}


def _axes(array):
    """`("batch", "length", ...)`: an input's shape with its first two
    axes named (the others keep their sizes)."""
    return ("batch", "length", *array.shape[2:])


@dataclasses.dataclass(frozen=True)
class _NamedAxesSpec:
    """An input as keras' JAX ONNX export reads one (`shape`, `dtype`,
    `name`), its dynamic axes named in `shape`: jax2onnx gives the axes
    of one name one size. keras names the `None` axes of each
    `keras.InputSpec` apart, and the NER tagger, which concatenates
    features of its two inputs, then fails to export ("all
    non-concatenated dimensions must match")."""

    shape: tuple
    dtype: str
    name: str | None = None
