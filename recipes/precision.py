"""`--precision auto|float32|bfloat16`: the dtype policy a training run
computes in, `auto` chosen from what this machine and backend do fast.

bfloat16 pays only where the matrix products run in it natively: CPUs
with AVX512-BF16 or AMX-BF16 (read from /proc/cpuinfo, never assumed)
under torch, whose oneDNN kernels use them. The recipes compile with XLA
on JAX and TensorFlow, and XLA's CPU products in bfloat16 are no faster
than in float32 (README, "Precision"), so `auto` keeps float32 there.
Variables stay float32 under `mixed_bfloat16`; the attention layers keep
their softmax in float32.
"""

from pathlib import Path

import keras

CHOICES = ("auto", "float32", "bfloat16")
# CPU flags of native bfloat16 products.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
# Backends whose compiled training step runs bfloat16 products natively
# on such CPUs (the recipes run torch eagerly, JAX and TensorFlow in XLA).
BFLOAT16_BACKENDS = ("torch",)


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return set()
    for line in lines:
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve(choice, backend=None, flags=None):
    """`(precision, reason)` for `--precision choice`.

    >>> resolve("auto", "jax", {"avx512_bf16"})[0]
    'float32'
    >>> resolve("auto", "torch", {"avx512_bf16", "fma"})[0]
    'bfloat16'
    >>> resolve("auto", "torch", {"fma"})
    ('float32', 'auto: no bfloat16 CPU flag (avx512_bf16, amx_bf16)')
    """
    if choice not in CHOICES:
        raise ValueError(
            f"`precision` must be one of {CHOICES}. Received: {choice!r}"
        )
    if choice != "auto":
        return choice, "asked for"
    backend = backend or keras.backend.backend()
    flags = cpu_flags() if flags is None else flags
    found = [flag for flag in BFLOAT16_FLAGS if flag in flags]
    if not found:
        return (
            "float32",
            f"auto: no bfloat16 CPU flag ({', '.join(BFLOAT16_FLAGS)})",
        )
    if backend not in BFLOAT16_BACKENDS:
        return (
            "float32",
            f"auto: the CPU has {', '.join(found)}, but {backend}'s "
            "compiled (XLA) CPU products are no faster in bfloat16",
        )
    return (
        "bfloat16",
        f"auto: the CPU has {', '.join(found)} and {backend} uses it",
    )


def apply(precision):
    """Set Keras' global dtype policy for `precision`."""
    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    keras.config.set_dtype_policy(policy)


def compute_in_float32(model):
    """Make every layer of `model` that computes in bfloat16 compute in
    float32 (its variables are float32 already): what `export` writes,
    as ONNX Runtime's CPU kernels take no bfloat16 (a Conv or MatMul in
    it fails to load). Returns the number of layers changed."""
    changed = 0
    for layer in model._flatten_layers():
        policy = layer.dtype_policy
        if policy.compute_dtype == "bfloat16" and not policy.quantization_mode:
            layer.dtype_policy = "float32"
            changed += 1
    return changed
