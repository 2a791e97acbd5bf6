"""Training on several devices (`--distribute`, `--mesh`) through
`keras.distribution` (JAX): the options and their checks, setting the
distribution before any model is built, and running on one device again.
"""

import argparse
import contextlib

import keras

from keras_selfattn import distribution

# The options whose sizes `--distribute model` splits across devices.
SPLIT_SIZES = ("num_heads", "intermediate_dim", "embedding_dim")


def add_arguments(parser):
    """The options `--distribute` and `--mesh`."""
    parser.add_argument(
        "--distribute",
        choices=("data", "model"),
        help="train on several devices (JAX): data = every device holds the "
        "model and a slice of each batch; model = the attention heads, "
        "feed-forward and embeddings are split across devices too",
    )
    parser.add_argument(
        "--mesh",
        type=mesh_shape,
        metavar="BATCH[,MODEL]",
        help="device mesh for --distribute: batch x model sizes, e.g. 2,2 "
        "(default: all devices on the batch axis for data; for model, the "
        "largest model axis that the split sizes --num-heads, "
        "--intermediate-dim and --embedding-dim allow, the rest on batch)",
    )


def mesh_shape(text):
    """`"2,2"` -> `(2, 2)` (batch, model); `"4"` -> `(4,)`.

    >>> mesh_shape("2,2"), mesh_shape("4")
    ((2, 2), (4,))
    """
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            "expected BATCH,MODEL sizes such as 2,2 or one batch size such "
            f"as 4. Received: {text!r}"
        )
    return shape


def check_args(parser, args):
    """Exit with a usage error if `--distribute`/`--mesh` cannot apply."""
    if args.mesh and not args.distribute:
        parser.error("--mesh needs --distribute data or --distribute model")
    backend = keras.backend.backend()
    if args.distribute and backend != "jax":
        parser.error(
            "--distribute uses keras.distribution, which runs on the JAX "
            f"backend only. Received: KERAS_BACKEND={backend}; run with "
            "KERAS_BACKEND=jax"
        )


def model_mesh(devices, sizes):
    """`(batch, model)` for `devices` devices: the largest model axis that
    divides every size in `sizes`, the rest on the batch axis.

    >>> model_mesh(4, [2, 128, 64]), model_mesh(8, [4, 256, 128])
    ((2, 2), (2, 4))
    """
    model = max(
        d
        for d in range(1, devices + 1)
        if devices % d == 0 and all(size % d == 0 for size in sizes)
    )
    return devices // model, model


def start(args):
    """Set the distribution `--distribute`/`--mesh` ask for, before any
    model is built, and print its device mesh. Returns it (None without
    `--distribute`). Exits with a clear message if the sizes do not fit.

    With `--distribute model` and no `--mesh`, the model axis is the
    largest that divides every split size (`SPLIT_SIZES`)."""
    if not args.distribute:
        return None
    sizes = {
        name: getattr(args, name)
        for name in SPLIT_SIZES
        if getattr(args, name, None) is not None
    }
    shape = args.mesh
    if args.distribute == "model" and shape is None:
        count = len(keras.distribution.list_devices())
        shape = model_mesh(count, sizes.values())
        given = ", ".join(
            f"--{name.replace('_', '-')} {size}" for name, size in sizes.items()
        )
        print(
            f"--mesh {shape[0]},{shape[1]}: {count} devices, the "
            f"largest model axis that divides {given}"
        )
    try:
        strategy = distribution.make_distribution(args.distribute, shape)
    except (ValueError, RuntimeError) as error:
        raise SystemExit(f"--distribute {args.distribute}: {error}")
    shards = distribution.batch_shards(strategy)
    if args.batch_size % shards:
        raise SystemExit(
            f"--batch-size must be a multiple of the mesh's batch size "
            f"{shards}. Received: --batch-size={args.batch_size}"
        )
    mesh = strategy.device_mesh
    model = dict(zip(mesh.axis_names, mesh.shape)).get("model", 1)
    for name, size in sizes.items():
        if size % model:
            option = "--" + name.replace("_", "-")
            raise SystemExit(
                f"{option} must be a multiple of the mesh's model size "
                f"{model} (it is split across that many devices). "
                f"Received: {option}={size}"
            )
    keras.distribution.set_distribution(strategy)
    print(distribution.describe_mesh(strategy))
    return strategy


def print_sharding(model):
    """Print how the current distribution places each weight of `model`."""
    if active():
        print(distribution.describe_sharding(model))


def active():
    """True while a `keras.distribution` distribution is set."""
    return keras.distribution.distribution() is not None


@contextlib.contextmanager
def one_device():
    """Run the block with no distribution set (new weights on one device)."""
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)
