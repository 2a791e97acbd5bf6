"""One cached decoding step: ours vs keras-hub's CachedMultiHeadAttention.

    for b in jax tensorflow torch; do
        KERAS_BACKEND=$b python benchmarks/decode.py
    done

Each row is one step of self-attention for one new token (batch 1, width
512, 8 query heads, float32) over a cache of `S` positions, written at
position `S - 1`: project the token, write its key and value into the
cache, attend over it, project the output. Both layers hold the same
weights and are called the same way (eagerly, as a Python loop over
`layer(...)` decodes; `--compiled` runs each step as a compiled function:
`jax.jit`, `tf.function(jit_compile=True)`, or torch eager), alternating A
B A B in one process; medians after a warm-up step; torch without autograd
(`torch.no_grad()`, as generation runs). keras-hub is given the
causal mask its `TransformerDecoder` builds; ours `use_causal_mask=True`.

Rows:
- `mha`: 8 key/value heads; keras-hub and ours at the same weights (the
  outputs are compared too).
- `gqa`: ours with 2 key/value heads (its cache is 4x smaller; keras-hub's
  reusable layer has no grouped heads, so its `mha` time is the reference).
- `window`: ours with `sliding_window=256` and a 256-slot ring cache; the
  cache length `S` is then the text's length, not the cache's.
- `mha-kept` (torch only): `mha` given a copy of the cache (`ops.copy`).
  On torch without autograd ours writes into the cache it is given (as
  Hugging Face's static cache); a caller that keeps the cache as it was
  copies it first, and this is that step's time. On JAX and TensorFlow
  the given cache is never changed, so the column is `n/a`.

`cache MB` is the size of the cache the step reads and writes.

A second table times the `window` layer alone at each text length,
alternating the lengths A B A B (in the first table the other layers'
large caches run between its steps and evict it from the CPU's caches),
with each time as a ratio to the first length's.
"""

import argparse
import contextlib
import statistics
import time

import keras
import numpy as np
from keras import ops

import keras_selfattn

WIDTH, HEADS = 512, 8


def build_layers(window):
    """keras-hub's layer and ours (`mha`, `gqa`, `window`), built, with the
    weights of keras-hub's copied into `mha`."""
    import keras_hub

    head_dim = WIDTH // HEADS
    shape = (1, 1, WIDTH)
    hub = keras_hub.layers.CachedMultiHeadAttention(HEADS, head_dim)
    hub.build(shape, shape)
    layers = {
        "mha": keras_selfattn.MultiHeadAttention(HEADS, head_dim),
        "gqa": keras_selfattn.MultiHeadAttention(
            HEADS, head_dim, num_key_value_heads=2
        ),
        "window": keras_selfattn.MultiHeadAttention(
            HEADS, head_dim, sliding_window=window
        ),
    }
    for layer in layers.values():
        layer.build(shape)
    layers["mha"].set_weights(hub.get_weights())
    return hub, layers


def step_functions(hub, layers, length, window, compiled, only=None):
    """`{name: (step, cache)}`: `step(x, cache)` runs one step at position
    `length - 1` (`only`: that one alone)."""
    index = length - 1
    causal = np.arange(length)[None, None, :] <= index  # (1, 1, S)

    def hub_step(x, cache):
        return hub(
            x,
            x,
            attention_mask=causal,
            cache=cache,
            cache_update_index=index,
        )

    def ours(layer):
        def step(x, cache):
            return layer(
                x, use_causal_mask=True, cache=cache, cache_update_index=index
            )

        return step

    rng = np.random.default_rng(0)

    def cache(slots, kv_heads):
        return ops.convert_to_tensor(
            rng.normal(size=(1, 2, slots, kv_heads, WIDTH // HEADS)).astype(
                "float32"
            )
        )

    shared = cache(length, HEADS)  # the same values for the compared two
    steps = {
        "keras-hub": (hub_step, shared),
        "mha": (ours(layers["mha"]), shared),
        "gqa": (ours(layers["gqa"]), cache(length, 2)),
        "window": (ours(layers["window"]), cache(min(window, length), HEADS)),
    }
    if keras.backend.backend() == "torch":
        mha_step = steps["mha"][0]

        def kept(x, cache):  # a copy first: the given cache stays as it was
            return mha_step(x, ops.copy(cache))

        steps["mha-kept"] = (kept, shared)
    if only is not None:
        steps = {only: steps[only]}
    if compiled:
        steps = {
            name: (compile_step(step), state)
            for name, (step, state) in steps.items()
        }
    return steps


def compile_step(step):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(step)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(step, jit_compile=True)
    return step


def block(result):
    """Wait for the step's result (JAX dispatches asynchronously)."""
    for tensor in result:
        ops.convert_to_numpy(tensor[..., :1])


def time_steps(steps, x, repeats):
    """Median seconds per step of each, alternating A B A B."""
    for step, state in steps.values():  # warm-up (and compile)
        block(step(x, state))
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, (step, state) in steps.items():
            start = time.perf_counter()
            block(step(x, state))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def inference_mode():
    """torch: no autograd bookkeeping, as in generation; elsewhere none."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[1024, 4096, 16384]
    )
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_args(argv)
    with inference_mode():
        run(args)


def run(args):
    hub, layers = build_layers(args.window)
    x = ops.convert_to_tensor(
        np.random.default_rng(1).normal(size=(1, 1, WIDTH)).astype("float32")
    )
    mode = "compiled" if args.compiled else "eager"
    print(f"backend={keras.backend.backend()} {mode} batch=1 width={WIDTH} ")
    print(f"heads={HEADS} window={args.window}; ms per step (median)")
    print(
        "| S | keras-hub | mha | gqa | window | mha/hub | gqa/hub "
        "| window/hub | mha-kept/hub | cache MB hub/mha/gqa/window "
        "| max diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        steps = step_functions(hub, layers, length, args.window, args.compiled)
        hub_out = steps["keras-hub"][0](x, steps["keras-hub"][1])[0]
        mha_out = steps["mha"][0](x, steps["mha"][1])[0]
        diff = float(
            np.max(
                np.abs(
                    ops.convert_to_numpy(hub_out)
                    - ops.convert_to_numpy(mha_out)
                )
            )
        )
        medians = time_steps(steps, x, args.repeats)
        megabytes = "/".join(
            f"{np.prod(steps[name][1].shape) * 4 / 2**20:.1f}"
            for name in ("keras-hub", "mha", "gqa", "window")
        )
        kept = "n/a"
        if "mha-kept" in medians:
            kept = f"{medians['mha-kept'] / medians['keras-hub']:.2f}"
        hub_ms = medians["keras-hub"] * 1e3
        ours = [medians[name] * 1e3 for name in ("mha", "gqa", "window")]
        ratios = " | ".join(f"{t / hub_ms:.2f}" for t in ours)
        times = " | ".join(f"{t:.2f}" for t in ours)
        print(
            f"| {length} | {hub_ms:.2f} | {times} | {ratios} | {kept} "
            f"| {megabytes} | {diff:.1e} |"
        )
    window_table(
        layers, x, args.lengths, args.window, args.repeats, args.compiled
    )


def window_table(layers, x, lengths, window, repeats, compiled):
    """The ring-cache step alone at each length, alternating."""
    steps = {}
    for length in lengths:
        step, cache = step_functions(
            None, layers, length, window, compiled, only="window"
        )["window"]
        steps[length] = (step, cache)
    medians = time_steps(steps, x, repeats)
    first = medians[lengths[0]]
    print()
    print(
        f"window={window} alone, ms per step (median) and ratio to "
        f"S={lengths[0]}"
    )
    print("| S | window | ratio |")
    print("|---|---|---|")
    for length in lengths:
        ms = medians[length] * 1e3
        print(f"| {length} | {ms:.2f} | {medians[length] / first:.2f} |")


if __name__ == "__main__":
    main()
