"""Forward + backward: our MultiHeadAttention vs keras' MultiHeadAttention.

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/attention.py             # speed
        KERAS_BACKEND=$b python benchmarks/attention.py --memory \\
            --batch 1 --lengths 8192                                  # peak RSS
    done

Speed: both layers (same sizes, self-attention, a padding mask in which
every sequence is partly padded) run one forward + backward step (gradients
of the input and every weight), alternating A B A B in one process; medians
after a warm-up step. Compiled with XLA (`jit_compile`) on TensorFlow and
JAX; eager on torch, as Keras trains there by default. GFLOP/s counts the
four projections and the two attention products over the full length,
forward + backward = 3x forward; the float32 matmul rate of the same backend
is printed for scale.

Memory: `--memory` runs every (layer, length) in a fresh process and reports
its peak resident set (`ru_maxrss`) after a warm-up step and one more step.

Local attention: `--window W` gives both layers `sliding_window=W` and adds
`nowindow`, ours without the window, for scale:

    KERAS_BACKEND=$b python benchmarks/attention.py --window 256 \\
        --batch 1 --lengths 4096 16384 65536 --full-up-to 16384 --repeats 3

`--full-up-to N` leaves out, above N tokens, the two layers whose cost is
L^2: keras' layer (it holds the `(B, H, L, L)` scores) and `nowindow`.
"""

import argparse
import os
import resource
import subprocess
import sys
import time

import keras
import numpy as np

import keras_selfattn


def build_layer(name, width, heads, window=None):
    """`"keras"`, one of our implementations (`"auto"`, `"blockwise"`...),
    or `"nowindow"`: ours ("auto") without the sliding window."""
    if name == "keras":
        return keras.layers.MultiHeadAttention(
            heads, width // heads, sliding_window=window
        )
    if name == "nowindow":
        name, window = "auto", None
    return keras_selfattn.MultiHeadAttention(
        heads, width // heads, implementation=name, sliding_window=window
    )


def padding_mask(batch, length, form="padding"):
    """Sequence `b` keeps its first `L * (7 - b) / 8` tokens.

    `form="padding"`: the `(B, 1, L)` key mask; `"dense"`: the same mask
    broadcast to `(B, L, L)`, as keras-hub's encoders pass it.
    """
    valid = length * (7 - np.arange(batch) % 4) // 8
    mask = (np.arange(length)[None, :] < valid[:, None])[:, None, :]
    if form == "dense":
        mask = np.ascontiguousarray(
            np.broadcast_to(mask, (batch, length, length))
        )
    return mask


def make_step(layer, inputs, mask):
    """A callable running one forward + backward step to completion."""
    backend = keras.backend.backend()
    layer(inputs[:, :8], inputs[:, :8], attention_mask=mask[:, :8, :8])  # build
    if backend == "jax":
        return _jax_step(layer, inputs, mask)
    if backend == "tensorflow":
        return _tensorflow_step(layer, inputs, mask)
    return _torch_step(layer, inputs, mask)


def _jax_step(layer, inputs, mask):
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x, mask):
        out, _ = layer.stateless_call(
            trainable, fixed, x, x, attention_mask=mask
        )
        return jnp.mean(jnp.square(out))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    x, mask = jnp.asarray(inputs), jnp.asarray(mask)
    return lambda: jax.block_until_ready(grad(trainable, x, mask))


def _tensorflow_step(layer, inputs, mask):
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def grad(x, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, x, attention_mask=mask)
            loss = tf.reduce_mean(tf.square(out))
        return tape.gradient(loss, [x] + layer.trainable_variables)

    x, mask = tf.constant(inputs), tf.constant(mask)
    return lambda: [g.numpy() for g in grad(x, mask)]


def _torch_step(layer, inputs, mask):
    import torch

    x = torch.tensor(inputs, requires_grad=True)
    mask = torch.tensor(mask)

    def step():
        for variable in layer.trainable_variables:
            variable.value.grad = None
        x.grad = None
        out = layer(x, x, attention_mask=mask)
        torch.mean(torch.square(out)).backward()

    return step


def step_flops(batch, length, width):
    projections = 4 * 2 * batch * length * width * width
    attention = 2 * 2 * batch * length * length * width
    return 3 * (projections + attention)


def matmul_rate(size=2048, repeats=5):
    """GFLOP/s of a float32 `size x size` matmul on this backend."""
    a = keras.random.normal((size, size))
    matmul = keras.ops.matmul
    if keras.backend.backend() == "jax":
        import jax

        matmul = jax.jit(matmul)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        matmul = tf.function(matmul, jit_compile=True)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(matmul(a, a))
        times.append(time.perf_counter() - start)
    return 2 * size**3 / np.median(times[1:]) / 1e9


def time_layers(names, length, options):
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal(
        (options.batch, length, options.width), dtype=np.float32
    )
    mask = padding_mask(options.batch, length, options.mask)
    steps = {}
    for name in names:
        keras.utils.set_random_seed(0)
        layer = build_layer(name, options.width, options.heads, options.window)
        steps[name] = make_step(layer, inputs, mask)
        steps[name]()  # warm-up: compilation excluded
    times = {name: [] for name in names}
    for _ in range(options.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def peak_rss_mb(name, length, options):
    """Peak RSS (MB) of a fresh process running one config."""
    command = [
        sys.executable,
        __file__,
        "--one",
        name,
        "--lengths",
        str(length),
        "--batch",
        str(options.batch),
        "--width",
        str(options.width),
        "--heads",
        str(options.heads),
        "--mask",
        options.mask,
    ] + ([] if options.window is None else ["--window", str(options.window)])
    result = subprocess.run(
        command, capture_output=True, text=True, env=os.environ.copy()
    )
    if result.returncode:
        return f"failed ({result.stderr.strip().splitlines()[-1]})"
    return float(result.stdout.strip().splitlines()[-1])


def run_one(name, length, options):
    """Child of `--memory`: warm-up + one step, print peak RSS in MB."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal(
        (options.batch, length, options.width), dtype=np.float32
    )
    step = make_step(
        build_layer(name, options.width, options.heads, options.window),
        inputs,
        padding_mask(options.batch, length, options.mask),
    )
    step()
    step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192]
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--ours",
        nargs="+",
        default=["auto"],
        choices=keras_selfattn.ops.IMPLEMENTATIONS,
        help="our implementations to time (default: auto)",
    )
    parser.add_argument(
        "--mask",
        choices=["padding", "dense"],
        default="padding",
        help="the padding mask as (B, 1, S) or broadcast to (B, T, S)",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="sliding_window for both layers; adds ours without it",
    )
    parser.add_argument(
        "--full-up-to",
        type=int,
        help="above this length, skip keras' layer (its (B, H, L, L) "
        "scores) and nowindow (L^2 time)",
    )
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        return run_one(options.one, options.lengths[0], options)

    ours = options.ours + ([] if options.window is None else ["nowindow"])
    names = ["keras"] + ours
    backend = keras.backend.backend()
    window = "" if options.window is None else f", window {options.window}"
    print(
        f"backend {backend} ({'eager' if backend == 'torch' else 'XLA'}); "
        f"batch {options.batch}, width {options.width}, {options.heads} "
        f"heads, {options.mask} mask{window}; forward + backward"
    )

    def layers_at(length):
        if options.full_up_to is None or length <= options.full_up_to:
            return names
        return [name for name in names if name not in ("keras", "nowindow")]

    if options.memory:
        print(f"{'length':>6} " + " ".join(f"{n + ' MB':>14}" for n in names))
        for length in options.lengths:
            measured = layers_at(length)
            rss = [
                peak_rss_mb(name, length, options) if name in measured else "-"
                for name in names
            ]
            cells = [m if isinstance(m, str) else f"{m:.0f}" for m in rss]
            print(f"{length:>6} " + " ".join(f"{c:>14}" for c in cells))
        return
    print(f"float32 matmul: {matmul_rate():.0f} GFLOP/s")
    header = f"{'length':>6} {'keras s':>8} {'GF/s':>5}"
    for name in ours:
        header += f" {name + ' s':>12} {'GF/s':>5} {'ratio':>5}"
    print(header + f"   (median of {options.repeats}; ratio = ours/keras)")
    for length in options.lengths:
        times = time_layers(layers_at(length), length, options)
        flops = step_flops(options.batch, length, options.width) / 1e9
        row = f"{length:>6}"
        for name in names:
            seconds = times.get(name)
            cells = ["-", "-"]
            if seconds is not None:
                cells = [f"{seconds:.3f}", f"{flops / seconds:.0f}"]
            if name != "keras":
                base = None if seconds is None else times.get("keras")
                cells.append("-" if base is None else f"{seconds / base:.2f}")
            widths = (8 if name == "keras" else 12, 5, 5)
            row += "".join(f" {cell:>{w}}" for cell, w in zip(cells, widths))
        print(row, flush=True)


if __name__ == "__main__":
    main()
