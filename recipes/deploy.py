"""Serving a trained recipe model's artifact (written by `export`, see
`recipes/exporting.py`): `predict --artifact` runs it in its own runtime.

    python recipes/sentiment.py export --model-dir runs/sentiment \\
        --format onnx                      # runs/sentiment/model.onnx
    python recipes/sentiment.py predict \\
        --artifact runs/sentiment/model.onnx "A warm, funny film."
    python recipes/ner.py export --model-dir runs/ner   # + decoding.json
    python recipes/ner.py predict \\
        --artifact runs/ner/model.onnx "Angela Merkel visited Paris."

Two parts: the runtimes (`load_artifact` runs any artifact `export`
writes) and serving a run (`serve`: the artifact, the run's tokenizer and
settings, and the recipe's own `label_texts`, from `recipes/reviews.py`
or `recipes/decoding.py`). Importing this module imports no Keras:
`predict --artifact` runs on `tokenizers`, NumPy and the artifact's
runtime alone (onnxruntime for ONNX), and starts in a fraction of the
time a Keras backend takes. A model's input is an array, or a dict of
arrays by input name (the NER tagger's), each shaped `(batch, length,
...)`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from keras_selfattn import text
from recipes import predict_command

# The formats `model.export` writes on each backend, and the artifact's
# name in the model directory.
ARTIFACTS = {
    "onnx": "model.onnx",
    "tf_saved_model": "saved_model",
    "litert": "model.tflite",
    "torch": "model.pt2",
}
FORMATS_BY_BACKEND = {
    "tensorflow": ("onnx", "tf_saved_model", "litert"),
    "jax": ("onnx", "tf_saved_model"),
    "torch": ("onnx", "torch"),
}

# ---------------------------------------------------------------- runtimes


def map_inputs(function, inputs):
    """`function(array, name)` over a model's input: each array of a dict
    (by input name), or the one array (name None)."""
    if isinstance(inputs, dict):
        return {
            name: function(np.asarray(a), name) for name, a in inputs.items()
        }
    return function(np.asarray(inputs), None)


def load_artifact(path):
    """A function mapping the model's input (an array, or a dict of
    arrays by input name) to the NumPy output of the exported model at
    `path`, run in its own runtime: `.onnx` onnxruntime, `.tflite` the
    LiteRT interpreter, `.pt2` `torch.export.load`, a directory
    TensorFlow's SavedModel."""
    path = Path(path)
    if path.suffix == ".onnx":
        return _onnx_runner(path)
    if path.suffix == ".tflite":
        return _litert_runner(path)
    if path.suffix == ".pt2":
        return _torch_runner(path)
    if (path / "saved_model.pb").exists():
        return _saved_model_runner(path)
    raise ValueError(
        "`artifact` must be a .onnx, .tflite or .pt2 file or a SavedModel "
        f"directory. Received: artifact={str(path)!r}"
    )


def _onnx_runner(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    given = session.get_inputs()
    names = [spec.name for spec in given]

    def run(inputs):
        return session.run(None, _by_input_name(inputs, names))[0]

    batch, length = given[0].shape[:2]
    if isinstance(batch, int) and isinstance(length, int):
        return lambda inputs: _run_fixed_shape(run, inputs, batch, length)
    return run


def _by_input_name(inputs, names):
    """`inputs` as a dict by the artifact's input `names`: a dict with
    those keys, or one array for an artifact of one input."""
    if not isinstance(inputs, dict) and len(names) == 1:
        return {names[0]: inputs}
    if not isinstance(inputs, dict) or sorted(inputs) != sorted(names):
        raise ValueError(
            f"The artifact's inputs are {sorted(names)}: `inputs` must be "
            "a dict of arrays by these names (or one array for one input). "
            f"Received: inputs of shapes {_shapes(inputs)}"
        )
    return inputs


def _shapes(inputs):
    return map_inputs(lambda array, _: array.shape, inputs)


def _run_fixed_shape(run, inputs, batch, length):
    """`run` on a `(batch, length)`-shaped artifact (torch's ONNX): rows
    padded with 0 (padding) to `length`, `batch` rows a call; a length
    axis of the outputs is cut back."""
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    rows, width = first.shape[:2]
    if width > length:
        raise ValueError(
            f"The artifact takes at most {length} tokens a row. Received: "
            f"inputs of shapes {_shapes(inputs)}"
        )
    total = -(-rows // batch) * batch

    def pad(array, _):
        padded = np.zeros((total, length, *array.shape[2:]), array.dtype)
        padded[:rows, :width] = array
        return padded

    padded = map_inputs(pad, inputs)
    outputs = np.concatenate(
        [
            run(map_inputs(lambda array, _: array[i : i + batch], padded))
            for i in range(0, total, batch)
        ]
    )[:rows]
    if outputs.ndim > 2 and outputs.shape[1] == length:
        outputs = outputs[:, :width]
    return outputs


def _litert_runner(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def run(inputs):
        if isinstance(inputs, dict):  # by name, through the signature
            (output,) = interpreter.get_signature_runner()(**inputs).values()
            return output
        (given,) = interpreter.get_input_details()
        interpreter.resize_tensor_input(given["index"], inputs.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(given["index"], inputs)
        interpreter.invoke()
        (result,) = interpreter.get_output_details()
        return interpreter.get_tensor(result["index"])

    return run


def _torch_runner(path):
    import torch

    module = torch.export.load(str(path)).module()

    def run(inputs):
        tensors = map_inputs(lambda array, _: torch.from_numpy(array), inputs)
        with torch.no_grad():
            return module(tensors).cpu().numpy()

    return run


def _saved_model_runner(path):
    import tensorflow as tf

    artifact = tf.saved_model.load(str(path))
    return lambda inputs: artifact.serve(inputs).numpy()


# ---------------------------------------------------------------- serving


def serve_if_requested(run_dir, label_texts, argv=None):
    """A recipe's first step when run: for `predict ... --artifact FILE`,
    the one command served with no Keras import, `serve` it and exit;
    else return. `argv` defaults to the command line's arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"] and any(
        arg == "--artifact" or arg.startswith("--artifact=") for arg in argv
    ):
        serve(argv, run_dir, label_texts)
        raise SystemExit(0)


def serve(argv, run_dir, label_texts):
    """`predict --artifact FILE [texts]`: print `label_texts(run, texts)`'s
    lines, `run` being the loaded artifact with the run's tokenizer and
    settings (see `ServedRun`); texts default to the lines of stdin."""
    parser = argparse.ArgumentParser(prog="predict")
    predict_command.add_arguments(parser, run_dir)
    args, _ = parser.parse_known_args(argv[1:])
    texts = predict_command.input_texts(args.texts)
    for line in label_texts(ServedRun(args.artifact), texts):
        print(line)


class ServedRun:
    """An exported model with the tokenizer and the settings of its run
    (tokenizer.json and metrics.json in the artifact's folder)."""

    def __init__(self, artifact):
        artifact = Path(artifact)
        self.folder = artifact.parent
        self.tokenizer = text.load_tokenizer(self.folder / "tokenizer.json")
        self.metrics = self.read_json("metrics.json")
        self.settings = argparse.Namespace(**self.metrics["settings"])
        self.run = load_artifact(artifact)

    def read_json(self, name):
        """The run's JSON file `name` (in the artifact's folder)."""
        return json.loads((self.folder / name).read_text())

    def predict_rows(self, ids):
        """The model's outputs for `ids` (`(n, length)`, 0 = pad), cut to
        the longest row."""
        width = max(int((ids != 0).sum(1).max(initial=1)), 1)
        return np.asarray(self.run(np.ascontiguousarray(ids[:, :width])))
