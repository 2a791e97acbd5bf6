"""Exporting a trained recipe model: the `export` command's arguments,
and the artifact it writes beside tokenizer.json (`recipes/deploy.py`
serves it), with dynamic batch and length axes wherever the backend's
exporter allows; and a causal LM's decode step (`export_decode_step`,
served by `recipes/lm_serving.py`).
"""

import dataclasses
import functools
from pathlib import Path

import numpy as np

from recipes import deploy, lm_serving

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
        _teach_tf2onnx()
    path = Path(model_dir) / deploy.ARTIFACTS[format]

    def write(tmp):
        model.export(tmp, format=format, verbose=False, **options)
        if format == "onnx":
            _finish_onnx(tmp)

    atomic_write(path, write, directory=format == "tf_saved_model")
    return path


def export_decode_step(
    lm, model_dir, max_length, batch_size=None, sequence_length=1
):
    """Export the cached step of `lm`, a `keras_selfattn.CausalLM`
    (`lm.decode_step_model`), as ONNX to `<model_dir>/decode_step.onnx`
    (atomically), for `recipes.lm_serving.greedy_tokens`; the file's
    metadata records `max_length`. Returns the artifact's path.

    `sequence_length` is the tokens a call takes: 1 (the prompt is fed
    token by token) or, on TensorFlow, None, a dynamic count that lets
    one call fill the cache with a prompt (tf2onnx keeps it; jax2onnx
    cannot show that a symbolic count of new tokens fits the cache, and
    torch's ONNX export keeps no axis dynamic). The batch stays dynamic
    on TensorFlow and JAX unless `batch_size` fixes it; on torch it is
    `batch_size` rows, by default 1 (as in `export_artifact`).
    """
    import keras

    from keras_selfattn.downloads import atomic_write

    backend = keras.backend.backend()
    allowed = (1, None) if backend == "tensorflow" else (1,)
    if sequence_length not in allowed or isinstance(sequence_length, bool):
        raise ValueError(
            f"`sequence_length` must be one of {allowed} on the {backend} "
            f"backend. Received: sequence_length={sequence_length!r}"
        )
    if backend == "torch" and batch_size is None:
        batch_size = 1
    step = lm.decode_step_model(
        max_length, batch_size=batch_size, sequence_length=sequence_length
    )
    # keras' exporters give every input a batch axis unless told the
    # shapes: the step's index is a scalar.
    signature = {x.name: _input_spec(x, backend) for x in step.inputs}
    if backend == "tensorflow":
        _teach_tf2onnx()
    path = Path(model_dir) / lm_serving.DECODE_STEP_ARTIFACT

    def write(tmp):
        step.export(
            tmp, format="onnx", verbose=False, input_signature=[signature]
        )
        _finish_onnx(tmp, {lm_serving.MAX_LENGTH_KEY: str(max_length)})

    atomic_write(path, write)
    return path


def _input_spec(tensor, backend):
    """The export spec of a model input: its own shape; on JAX a dynamic
    axis is named `batch` (jax2onnx gives the axes of one name one size)."""
    import keras

    if backend == "jax":
        shape = tuple("batch" if d is None else d for d in tensor.shape)
        return _NamedAxesSpec(shape, tensor.dtype, tensor.name)
    return keras.InputSpec(
        shape=tensor.shape, dtype=tensor.dtype, name=tensor.name
    )


def _teach_tf2onnx():
    """Register the tf2onnx handlers of TensorFlow ops tf2onnx 1.17 lacks
    (once a process)."""
    _teach_tf2onnx_erfc()
    _teach_tf2onnx_dynamic_update_slice()


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


@functools.cache
def _teach_tf2onnx_dynamic_update_slice():
    """Let tf2onnx convert `XlaDynamicUpdateSlice`, TensorFlow's
    `keras.ops.slice_update` at a tensor start (a key/value cache's
    write), which tf2onnx 1.17 leaves as is ("No Op registered for
    XlaDynamicUpdateSlice" in onnxruntime): the update, padded to the
    operand's shape at its start, replaces the operand where a padded
    mask of ones is set. Starts are clamped so the update fits, as XLA
    does."""
    from onnx import TensorProto
    from tf2onnx.handler import tf_op

    @tf_op("XlaDynamicUpdateSlice")
    class XlaDynamicUpdateSlice:
        @classmethod
        def version_11(cls, ctx, node, **kwargs):
            operand, update, indices = node.input

            def make(op_type, *inputs, **attr):
                return ctx.make_node(op_type, list(inputs), attr=attr).output[0]

            def const(name, value):
                return ctx.make_const(
                    f"{node.name}/{name}", np.array(value)
                ).output[0]

            update_shape = make("Shape", update)
            room = make("Sub", make("Shape", operand), update_shape)
            start = make("Cast", indices, to=TensorProto.INT64)
            start = make("Min", make("Max", start, const("zero", 0)), room)
            pads = make("Concat", start, make("Sub", room, start), axis=0)
            ones = make("Expand", const("one", np.uint8(1)), update_shape)
            where = make("Cast", make("Pad", ones, pads), to=TensorProto.BOOL)
            shapes, dtypes = node.output_shapes, node.output_dtypes
            ctx.remove_node(node.name)
            ctx.make_node(
                "Where",
                [where, make("Pad", update, pads), operand],
                name=node.name,
                outputs=node.output,
                shapes=shapes,
                dtypes=dtypes,
            )


def _finish_onnx(path, metadata=None):
    """Make the ONNX file at `path` one valid file: move the weights
    that jax2onnx writes beside it (to `<path>.data`, named after the
    temporary path) into it (up to protobuf's 2 GiB); cast int32 indices
    of `ScatterND`/`GatherND` to the int64 ONNX requires (torch's ONNX
    export writes int32 ones for `keras.ops.slice_update` at a tensor
    start: "Type 'tensor(int32)' of input parameter ... of operator
    (ScatterND) ... is invalid" in onnxruntime); add the `metadata`
    entries (a dict of strings)."""
    import onnx

    data = Path(f"{path}.data")
    model = onnx.load(str(path))
    changed = _cast_indices_to_int64(model)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if data.exists() or changed or metadata:
        onnx.save_model(model, str(path))
        data.unlink(missing_ok=True)


def _cast_indices_to_int64(model):
    """Cast the int32 indices of `model`'s `ScatterND` and `GatherND`
    nodes to int64 (in place); whether any were."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    users = [
        node for node in graph.node if node.op_type in ("ScatterND", "GatherND")
    ]
    if not users:
        return False
    typed = onnx.shape_inference.infer_shapes(model).graph
    int32 = {
        value.name
        for value in [*typed.input, *typed.value_info, *typed.output]
        if value.type.tensor_type.elem_type == TensorProto.INT32
    }
    int32 |= {
        tensor.name
        for tensor in graph.initializer
        if tensor.data_type == TensorProto.INT32
    }
    casts = {}
    for node in users:
        indices = node.input[1]
        if indices in int32:
            if indices not in casts:
                casts[indices] = helper.make_node(
                    "Cast",
                    [indices],
                    [f"{indices}_int64"],
                    to=TensorProto.INT64,
                )
            node.input[1] = casts[indices].output[0]
    if not casts:
        return False
    # Each cast goes just before its first user, after what computes its
    # input: the nodes stay in topological order.
    nodes = list(graph.node)
    for cast in casts.values():
        first_user = min(
            i for i, node in enumerate(nodes) if cast.output[0] in node.input
        )
        nodes.insert(first_user, cast)
    del graph.node[:]
    graph.node.extend(nodes)
    return True


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
