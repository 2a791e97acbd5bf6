"""Read `.safetensors` files into NumPy arrays (no torch, no extra package).

The format: an 8-byte little-endian header length N, N bytes of JSON that
map each tensor name to its `dtype`, `shape` and `data_offsets`
`[begin, end)` (relative to the end of the header), then the raw
little-endian bytes. bfloat16 is widened to float32 (NumPy has no bf16).

Example (a file of one tensor, written by hand):

>>> import json, struct, tempfile
>>> from pathlib import Path
>>> header = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
>>> blob = json.dumps(header).encode()
>>> data = np.array([1.5, -2.0], dtype="<f4").tobytes()
>>> path = Path(tempfile.mkdtemp()) / "tiny.safetensors"
>>> _ = path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
>>> read_safetensors(path)["x"]
array([ 1.5, -2. ], dtype=float32)
"""

import json
import struct
from pathlib import Path

import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 after reading
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 << 20


def _bfloat16_to_float32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _read_header(path, file_size):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(_HEADER_LENGTH_BYTES))
        if not 0 < length <= min(_MAX_HEADER_BYTES, file_size - 8):
            raise ValueError(
                f"{path} is not a safetensors file: header length {length} "
                f"for a file of {file_size} bytes."
            )
        try:
            header = json.loads(f.read(length))
        except ValueError as err:
            raise ValueError(
                f"{path} is not a safetensors file: bad JSON header ({err})."
            ) from None
    return header, _HEADER_LENGTH_BYTES + length


def _check_entry(path, name, entry, data_size):
    dtype = DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise ValueError(
            f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}; "
            f"supported: {sorted(DTYPES)}."
        )
    shape = tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end <= data_size or end - begin != expected:
        raise ValueError(
            f"{path}: tensor {name!r} of shape {shape} and dtype "
            f"{entry['dtype']} needs {expected} bytes; its offsets are "
            f"[{begin}, {end}) in a data section of {data_size} bytes."
        )
    return dtype, shape, begin


def read_safetensors(path):
    """`{name: np.ndarray}` of every tensor in a `.safetensors` file.

    Arrays are copies (the file is closed afterwards); bfloat16 tensors come
    back as float32. The `__metadata__` entry is skipped.

    Raises:
        ValueError: not a safetensors file, an unsupported dtype, or a
            tensor whose offsets do not match its shape.
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < _HEADER_LENGTH_BYTES:
        raise ValueError(f"{path} is not a safetensors file: too short.")
    header, data_start = _read_header(path, file_size)
    if file_size > data_start:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
    else:  # no tensor bytes at all (mmap cannot map an empty range)
        data = np.empty(0, dtype=np.uint8)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin = _check_entry(path, name, entry, data.size)
        count = int(np.prod(shape, dtype=np.int64))
        array = np.frombuffer(data, dtype=dtype, count=count, offset=begin)
        array = array.reshape(shape)
        if entry["dtype"] == "BF16":
            array = _bfloat16_to_float32(array)
        tensors[name] = np.array(array, dtype=array.dtype.newbyteorder("="))
    del data
    return tensors
