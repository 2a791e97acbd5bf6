"""Data and model (tensor) parallel training through `keras.distribution`.

Keras shards a model when a distribution is set before the model is built:
`DataParallel` copies every weight to each device and splits the batches;
`ModelParallel` also splits the weights a `LayoutMap` names along a
`"model"` mesh axis. `layout_map` names ours: attention heads split across
devices, the encoder's feed-forward split column-then-row, embedding tables
split along their width, layer norms and output biases replicated.
`keras.distribution` runs on the JAX backend.

Example (JAX with 4 devices; on CPU, run with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`):

>>> import keras
>>> import keras_selfattn as ksa
>>> keras.distribution.set_distribution(
...     make_distribution("model", mesh_shape=(2, 2))
... )
>>> ids = keras.Input((None,), dtype="int32")
>>> x = ksa.TokenAndPositionEmbedding(100, 16, 8, name="embedding")(ids)
>>> x = ksa.TransformerEncoder(16, 2, name="encoder")(x)
>>> model = keras.Model(ids, x)
>>> query = model.get_layer("encoder").self_attention.query_dense.kernel
>>> query.path, query.shape, shard_shape(query)
('encoder/self_attention/query/kernel', (8, 2, 4), (8, 1, 4))
>>> keras.distribution.set_distribution(None)
"""

import math
import numbers

import keras

from keras_selfattn._validation import check_choice, check_positive_int

KINDS = ("data", "model")
BATCH_AXIS = "batch"
MODEL_AXIS = "model"

# Weight-path regexes (matched in full against `variable.path`) and their
# layouts; "model" stands for the model axis. The names are the ones our
# layers give their sublayers and weights, so the keys match wherever the
# layers sit in a model; every weight of our layers has one. A layout
# shorter than the weight's rank leaves the remaining axes whole.
LAYOUTS = (
    # Attention heads split across devices: query/key/value kernels are
    # (width, heads, head_dim), their biases (heads, head_dim); the gate
    # (query heads, value_dim) scales each head's output where it is. A
    # SelfAttention's projections (Dense, (width, units)) split their units.
    (r"(.*/)?(query|key|value|gate)/kernel", (None, MODEL_AXIS)),
    (r"(.*/)?(query|key|value|gate)/bias", (MODEL_AXIS,)),
    # The output projection takes the heads back: (heads, head_dim, width),
    # split by rows; its partial sums meet in one all-reduce.
    (r"(.*/)?attention_output/kernel", (MODEL_AXIS, None, None)),
    (r"(.*/)?attention_output/bias", (None,)),
    # A T5 relative position bias (buckets, heads) is small: replicated.
    (r"(.*/)?relative_position_bias/embeddings", (None, None)),
    # Feed-forward: first layer (and its gate) split by columns, second
    # by rows.
    (
        r"(.*/)?feedforward_(intermediate|gate)_dense/kernel",
        (None, MODEL_AXIS),
    ),
    (r"(.*/)?feedforward_(intermediate|gate)_dense/bias", (MODEL_AXIS,)),
    (r"(.*/)?feedforward_output_dense/kernel", (MODEL_AXIS, None)),
    (r"(.*/)?feedforward_output_dense/bias", (None,)),
    (
        r"(.*/)?(self_attention|cross_attention|feedforward)_layer_norm/"
        r"(gamma|beta|scale)",
        (None,),
    ),
    # Embedding tables (vocabulary or positions, width) split along the
    # width, which a model chooses divisible; vocabulary sizes rarely are.
    (r"(.*/)?token_embedding/embeddings", (None, MODEL_AXIS)),
    (r"(.*/)?position_embeddings", (None, MODEL_AXIS)),
)


def layout_map(device_mesh, model_axis=MODEL_AXIS):
    """A `keras.distribution.LayoutMap` for tensor parallelism of our layers.

    Splits, along `model_axis` of `device_mesh`: attention heads (query,
    key, value and gate projections by heads, the output projection by
    rows), the encoder's feed-forward network (first layer by columns,
    second by rows), and token and learned position embeddings along their
    width. Layer norms, the biases added after a row split and relative
    position biases are replicated by an explicit key; weights no key
    matches are replicated too (see `unmatched_weights`). The mesh's
    model-axis size must divide the number of query and key/value heads,
    `intermediate_dim`, the model width and a SelfAttention's `units`.

    Example:

    >>> mesh = keras.distribution.DeviceMesh(
    ...     (1, 2), ["batch", "model"], devices=["cpu:0", "cpu:1"]
    ... )
    >>> layouts = layout_map(mesh)
    >>> layouts["encoder_0/self_attention/query/kernel"].axes
    (None, 'model')
    >>> layouts["encoder_0/feedforward_output_dense/kernel"].axes
    ('model', None)
    >>> layouts["classifier/kernel"] is None  # replicated
    True
    """
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            "`model_axis` must be one of the mesh's axis names "
            f"{list(device_mesh.axis_names)}. Received: "
            f"model_axis={model_axis!r}"
        )
    layouts = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in LAYOUTS:
        layouts[pattern] = tuple(
            model_axis if axis == MODEL_AXIS else axis for axis in axes
        )
    return layouts


def _check_backend():
    """Raise RuntimeError unless the backend runs `keras.distribution`."""
    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            "keras.distribution (data and model parallel training) runs on "
            f"the JAX backend only. Received: backend={backend!r}; set "
            "KERAS_BACKEND=jax."
        )


def _mesh_shape(kind, mesh_shape):
    """`(batch, model)` sizes from the `mesh_shape` argument."""
    shape = (
        (mesh_shape,)
        if isinstance(mesh_shape, numbers.Integral)
        else tuple(mesh_shape)
    )
    if not 1 <= len(shape) <= 2:
        raise ValueError(
            "`mesh_shape` must be (batch, model) sizes, or one batch size. "
            f"Received: mesh_shape={mesh_shape!r}"
        )
    for size in shape:
        check_positive_int("mesh_shape", size)
    if kind == "model" and len(shape) != 2:
        raise ValueError(
            "`mesh_shape` must give both (batch, model) sizes for "
            f"kind='model'. Received: mesh_shape={mesh_shape!r}"
        )
    shape = tuple(int(size) for size in shape) + (1,) * (2 - len(shape))
    if kind == "data" and shape[1] != 1:
        raise ValueError(
            "Data parallel training copies every weight to each device, so "
            "`mesh_shape` must be (devices,) or (devices, 1); kind='model' "
            f"splits weights. Received: mesh_shape={mesh_shape!r}"
        )
    return shape


def _device_names(devices, mesh_shape, wanted):
    """All devices, the first `devices` (or `wanted`) ones, or the list."""
    if devices is not None and not isinstance(devices, numbers.Integral):
        names = list(devices)
        if not names:
            raise ValueError(
                f"`devices` must not be empty. Received: devices={devices!r}"
            )
        return names
    if devices is not None:
        check_positive_int("devices", devices)
    available = keras.distribution.list_devices()
    count = devices or wanted or len(available)
    if count > len(available):
        raise ValueError(
            f"The mesh needs {count} devices; this process sees "
            f"{len(available)}: {available}. Received: devices={devices!r}, "
            f"mesh_shape={mesh_shape!r}"
        )
    return available[:count]


def make_distribution(kind, mesh_shape=None, devices=None):
    """A `DataParallel` or `ModelParallel` distribution over a device mesh.

    Set it with `keras.distribution.set_distribution` (or enter its
    `scope()`) before building and compiling the model.

    Args:
        kind: `"data"` (every device holds all weights and a slice of each
            batch) or `"model"` (batches split on the `"batch"` mesh axis,
            our layers' weights split on the `"model"` axis by
            `layout_map`).
        mesh_shape: `(batch, model)` mesh sizes, or one int for a batch-only
            mesh. Defaults to all devices on the batch axis for `"data"`
            and on the model axis for `"model"`.
        devices: how many devices to use (the first ones of
            `keras.distribution.list_devices()`), or a list of device names.
            Defaults to all devices, or as many as `mesh_shape` holds.

    Returns:
        A `keras.distribution.DataParallel` or `ModelParallel`.

    Raises:
        RuntimeError: on a backend other than JAX.

    Example (JAX with 4 devices):

    >>> data = make_distribution("data")
    >>> data.device_mesh.shape, data.device_mesh.axis_names
    ((4,), ['batch'])
    >>> model = make_distribution("model", mesh_shape=(2, 2))
    >>> model.device_mesh.shape, model.device_mesh.axis_names
    ((2, 2), ['batch', 'model'])
    """
    check_choice("kind", kind, KINDS)
    shape = None if mesh_shape is None else _mesh_shape(kind, mesh_shape)
    _check_backend()
    wanted = None if shape is None else math.prod(shape)
    names = _device_names(devices, mesh_shape, wanted)
    if shape is None:
        shape = (len(names), 1) if kind == "data" else (1, len(names))
    elif len(names) != math.prod(shape):
        raise ValueError(
            f"`mesh_shape` holds {math.prod(shape)} devices but {len(names)} "
            f"were given. Received: mesh_shape={mesh_shape!r}, "
            f"devices={devices!r}"
        )
    if kind == "data":
        mesh = keras.distribution.DeviceMesh(
            (shape[0],), [BATCH_AXIS], devices=names
        )
        return keras.distribution.DataParallel(device_mesh=mesh)
    mesh = keras.distribution.DeviceMesh(
        shape, [BATCH_AXIS, MODEL_AXIS], devices=names
    )
    return keras.distribution.ModelParallel(
        layout_map=layout_map(mesh), batch_dim_name=BATCH_AXIS
    )


def _current(distribution):
    """`distribution`, else the one set; ValueError if neither."""
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        raise ValueError(
            "No distribution given and none is set. Received: distribution=None"
        )
    return distribution


def batch_shards(distribution=None):
    """How many pieces each batch is split into (1 with no distribution).

    Batch sizes must be multiples of it.
    """
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]


def _axes(variable, distribution):
    """The variable's layout axes, one per dimension (None = whole)."""
    axes = tuple(distribution.get_variable_layout(variable).axes)
    return axes + (None,) * (len(variable.shape) - len(axes))


def shard_shape(variable, distribution=None):
    """The shape of the piece of `variable` each device holds."""
    distribution = _current(distribution)
    mesh = distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    return tuple(
        size if axis is None else size // sizes[axis]
        for size, axis in zip(variable.shape, _axes(variable, distribution))
    )


def unmatched_weights(model, layout_map):
    """Paths of `model`'s weights that no key of `layout_map` matches.

    Those are replicated on every device. For a model made of our layers
    alone the list is empty: each of their weights has a key, split or
    replicated on purpose, so a renamed sublayer shows up here.
    """
    return [v.path for v in model.weights if layout_map[v.path] is None]


def describe_mesh(distribution=None):
    """A few lines: the distribution, its mesh axes and devices."""
    distribution = _current(distribution)
    mesh = distribution.device_mesh
    sizes = " x ".join(
        f"{name}={size}" for name, size in zip(mesh.axis_names, mesh.shape)
    )
    grid = str(mesh.devices).replace("\n", "\n    ")
    return (
        f"{type(distribution).__name__} on a device mesh {sizes} "
        f"({mesh.devices.size} devices; batches split "
        f"{batch_shards(distribution)}-way on {distribution.batch_dim_name!r})"
        f":\n    {grid}"
    )


def describe_sharding(model, distribution=None):
    """A table of `model`'s weights: shape, split axes, per-device shape.

    `-` is an axis kept whole; a weight no layout key matches is marked
    `replicated (no key)`. The last line counts parameters per device.
    """
    distribution = _current(distribution)
    by_key = isinstance(distribution, keras.distribution.ModelParallel)
    rows = []
    split_count = total = per_device = 0
    for variable in model.weights:
        axes = _axes(variable, distribution)
        shape = tuple(variable.shape)
        piece = shard_shape(variable, distribution)
        if any(axes):
            split = "(" + ", ".join(a or "-" for a in axes) + ")"
            split_count += 1
        elif by_key and distribution.get_tensor_layout(variable.path) is None:
            split = "replicated (no key)"
        else:
            split = "replicated"
        rows.append((variable.path, str(shape), split, str(piece)))
        total += math.prod(shape)
        per_device += math.prod(piece)
    header = ("weight", "shape", "split", "per device")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
        + "  "
        + row[3]
        for row in [header] + rows
    ]
    lines.append(
        f"{split_count} of {len(rows)} weights split; parameters per "
        f"device {per_device:,} of {total:,}"
    )
    return "\n".join(lines)
