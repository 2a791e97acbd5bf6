"""Greedy generation with SmolLM2-135M-Instruct: ours (`CausalLM.generate`)
vs keras-hub's `LlamaCausalLM` (same config, same weights, same backend,
same process) vs Hugging Face transformers (torch), per precision, with
the perplexity of each on IMDB reviews and (optionally) peak memory.

    for b in jax tensorflow torch; do
        KERAS_BACKEND=$b python benchmarks/generate.py --json gen_$b.json
    done
    KERAS_BACKEND=torch python benchmarks/generate.py --memory  # + RSS

A quick check of the script itself (seconds, not a measurement):

    KERAS_BACKEND=jax python benchmarks/generate.py --new-tokens 8 \\
        --prompt-lengths 8 --repeats 1 --perplexity-reviews 4 \\
        --perplexity-length 32

The model: the GGUF file of SmolLM2-135M-Instruct (Q4_1, dequantized to
float32 by `gguf`; 30 blocks, width 576, 9 query / 3 key-value heads,
tied embedding of 49,152 tokens). The contenders, for the backend the
script runs under (`KERAS_BACKEND`):

- `ours`: `load_llama(name, dtype=...)`, `causal_lm.generate(ids,
  max_length, strategy="greedy", stop_token_ids=None)`.
- `keras-hub`: `keras_hub.models.LlamaCausalLM(LlamaBackbone(...),
  preprocessor=None)` built from our `LlamaConfig`, compiled with the
  greedy sampler, its weights copied from the dequantized GGUF tensors
  through our weight paths (`llama_weights`), mapped name by name (our
  `*_layer_norm` is its `*_layernorm`, our `final_norm` its
  `sequence_output_layernorm`; every other path is the same). Before any
  timing its float32 logits are checked against ours (max |diff| <
  1e-4, asserted). `generate` runs on preprocessed inputs
  `{"token_ids", "padding_mask"}`, `stop_token_ids=None`.
- `transformers` (under `KERAS_BACKEND=torch`, or with
  `--transformers`): `AutoModelForCausalLM.from_pretrained(dir,
  gguf_file=file, dtype=...)`, `generate(do_sample=False,
  min_new_tokens=N, max_new_tokens=N)` under `torch.inference_mode()`.

Precisions (`--precisions`): `float32`; `bfloat16` (ours
`load_llama(dtype="bfloat16")`, keras-hub `dtype="bfloat16"`,
transformers `dtype=torch.bfloat16`); `int8` (ours
`quantize("int8", filters=lambda layer: layer.name != "token_embedding")`:
the tied output projection reads the embedding matrix, so it stays
float32; keras-hub its own `quantize("int8")`, which quantizes its
reversible embedding too; transformers int8 is not measured).

Prompts: batch 1, the first `P` tokens of the IMDB test reviews (the
recipes' split) joined by blank lines, for each `P` of
`--prompt-lengths`; `N = --new-tokens` new tokens, end-of-text ignored
(no stop tokens; transformers: `min_new_tokens=N`).

How each number is measured (all with `time.perf_counter`, results
converted to NumPy or blocked on, so asynchronous dispatch is waited for):

- `prefill s`: one call that fills the cache from the `P` prompt tokens
  and generates nothing. Ours: the compiled `causal_lm.prefill(ids, P)`
  (compiled as `generate` compiles it; ids padded to `P + N` as
  `generate` pads them). keras-hub: `generate` on the `P` tokens alone
  with an all-True padding mask (its sampler loop then runs 0 steps).
  transformers: `generate(max_new_tokens=1)` (prefill plus one argmax).
- `total s`: the whole `generate` call for `P + N` tokens.
- `decode tok/s` (the main figure; the same method for every contender):
  tokens made by one-token steps / (`total s` - a prefill-only call on the
  same inputs). Ours: `N / (total - prefill)`: after the prefill, its loop
  runs `N` one-token steps (the first re-feeds the last prompt token, as
  keras-hub's samplers do) and each makes one token. keras-hub: `N /
  (total - full)`, where `full` is `generate` on the same `P + N` ids with
  an all-True padding mask: keras-hub's `generate` always runs its first
  forward pass over all `P + N` positions (the padding included), then
  its sampler loop makes the `N` tokens in `N` one-token steps, so
  subtracting `full` leaves exactly those steps (its prefill column is
  the `P`-token call above). transformers: `(N - 1) / (total(N) -
  total(1))`: its prefill makes the first token, `N - 1` steps follow.
- `streamed tok/s`: per-token timestamps over the steps after the first,
  `(N - 1) / (t_N - t_1)`. Ours: `generate(..., on_token=callback)` (a
  compiled step per token, streamed to Python; on TensorFlow the step is
  a graph without XLA, see `keras_selfattn.generation`); transformers: a
  `StoppingCriteria` that records the time after each token (taken from
  the same `total` call). keras-hub's loop has no per-token hook: `-`.
- ratios (ours rows only): `ours/hub` and `ours/tf32` are speed ratios
  (> 1: ours faster): decode tok/s ours / theirs, and prefill seconds
  theirs / ours, against keras-hub at the same precision and against
  transformers float32, at the same prompt length.
- Every contender is warmed up once per prompt length (compilation
  excluded); then `--repeats` rounds alternate the contenders A B C A B C
  in one process, and the table gives medians (decode also min-max).
- `perplexity`: exp(mean next-token NLL) over the real tokens of the
  first `--perplexity-reviews` IMDB test reviews, each tokenized (no BOS)
  and cut to `--perplexity-length` tokens, batched with right padding
  and a padding mask; the float32 logits of a full forward pass, the
  NLL in NumPy (float64 log-sum-exp). For every precision of ours, and
  transformers float32 as a check (`--perplexity-of` adds keras-hub).
- `peak RSS MiB` (`--memory`): each contender x precision runs alone in a
  fresh process (`--child`): imports, load, one warm-up and one measured
  round at every prompt length; `resource.getrusage(RUSAGE_SELF)
  .ru_maxrss`, so loading (the dequantized float32 tensors) and
  compiling count. Linux carries `ru_maxrss` over `exec`, so the child is
  started by a shell that forks it, not by this (large) process; the
  kernel's `VmHWM` is recorded beside it as a check. The prompts come
  from a file, so the child never loads IMDB. The JSON also gives each
  child's peak after its imports, after importing its library (keras-hub
  imports TensorFlow under every backend) and after loading the model.

Compilation: by default ours compiles its whole loop (`jax.jit`, XLA on
TensorFlow; torch runs eagerly under `no_grad`) and keras-hub its whole
`generate` (the same on each backend). `--no-jit` runs both eagerly; on
JAX an uncompiled `ops.while_loop` is still `lax.while_loop`, traced and
compiled at every call, so there both loops then mostly time tracing.
A decode rate whose time difference is not positive (noise) is left out.

Also printed: the CPU (lscpu model name, bf16 flags), backend, compile
setting, library versions, torch threads; the logit differences between
contenders, and how many of the greedy tokens of each contender match
ours at float32 (a broken setup shows here before any timing matters).
Anything a contender cannot do (keras-hub int8 on some backend, ...) is
reported as `n/a (reason)`.
"""

if not __package__:  # run as a file: make `recipes` importable
    import runpy
    from pathlib import Path

    launch = Path(__file__).resolve().parents[1] / "recipes" / "_launch.py"
    runpy.run_path(str(launch))["register"]()

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_selfattn.ops.compiling import compile_function
from keras_selfattn.pretrained import checkpoints
from keras_selfattn.pretrained.gguf import gguf_tokenizer, read_gguf
from keras_selfattn.pretrained.llama import (
    LlamaConfig,
    gguf_path,
    llama_weights,
    load_llama,
)

MODEL = "SmolLM2-135M-Instruct"
PRECISIONS = ("float32", "bfloat16", "int8")
CONTENDERS = ("ours", "keras-hub", "transformers")
HUB_TOLERANCE = 1e-4  # max |logit diff|, keras-hub vs ours, float32


def quiet():
    """Silence the per-layer notes of `quantize`, transformers' bars."""
    warnings.filterwarnings(
        "ignore", message=".*does not have a `quantize` method"
    )
    warnings.filterwarnings("ignore", message="The use of `x.T` on tensors")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def backend():
    return keras.backend.backend()


def block(value):
    """Wait for a (JAX) result: dispatch is asynchronous there."""
    if backend() == "jax":
        import jax

        jax.block_until_ready(value)
    return value


def inference_mode():
    if backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


_START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - _START:6.0f} s] {message}", flush=True)


def rss_mib():
    """Peak resident memory of this process so far, MiB (`ru_maxrss`:
    KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mib():
    """The kernel's peak RSS of this process image (`VmHWM`), MiB, or
    None: a cross-check of `ru_maxrss`, which, unlike it, an exec'd
    process inherits from the process that started it."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    return None


# --------------------------------------------------------------------------
# The environment.
# --------------------------------------------------------------------------


def cpu_info():
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    bf16 = {f: f in flags for f in ("avx512_bf16", "amx_bf16", "amx_tile")}
    return {"model": model, "cores": os.cpu_count(), "flags": bf16}


def versions():
    found = {}
    for name in ("keras", "keras-hub", "torch", "jax", "tensorflow"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    try:
        found["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        found["transformers"] = None
    return found


def compile_setting(jit):
    if not jit:
        return "eager (ours jit_compile=False; keras-hub run_eagerly=True)"
    return {
        "jax": "jax.jit (ours: whole loop; keras-hub: whole generate)",
        "tensorflow": "tf.function(jit_compile=True) (XLA)",
        "torch": "eager under torch.no_grad (no torch.compile)",
    }[backend()]


# --------------------------------------------------------------------------
# Data: prompts and perplexity texts from the IMDB test split.
# --------------------------------------------------------------------------


def imdb_test_reviews(count):
    from recipes import data

    texts, labels = data.load_imdb()
    splits, _ = data.split_imdb(texts, labels)
    return list(splits["test"][0][:count])


def build_prompt_ids(tokenizer, reviews, length):
    """The first `length` tokens of `reviews` joined by blank lines."""
    ids = []
    for review in reviews:
        ids.extend(tokenizer.encode(review + "\n\n").ids)
        if len(ids) >= length:
            return np.asarray(ids[:length], "int32")
    raise ValueError(f"The reviews hold fewer than {length} tokens.")


def perplexity_batches(tokenizer, reviews, length, batch_size):
    """`[(token_ids, padding_mask)]`, right-padded int32 / bool batches."""
    rows = [tokenizer.encode(r).ids[:length] for r in reviews]
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = np.zeros((len(chunk), width), "int32")
        mask = np.zeros((len(chunk), width), bool)
        for i, row in enumerate(chunk):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        batches.append((ids, mask))
    return batches


def nll_sum(logits, ids, mask):
    """`(sum of next-token NLL, count)` over the real tokens (float64)."""
    total, count = 0.0, 0
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        if n < 2:
            continue
        x = np.asarray(logits[row, : n - 1], "float64")
        top = x.max(-1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(x - top).sum(-1))
        targets = ids[row, 1:n]
        total += float(np.sum(lse - x[np.arange(n - 1), targets]))
        count += n - 1
    return total, count


def perplexity(contender, batches):
    total, count = 0.0, 0
    for ids, mask in batches:
        logits = contender.logits(ids, mask)
        s, c = nll_sum(logits, ids, mask)
        total, count = total + s, count + c
    return float(np.exp(total / count))


# --------------------------------------------------------------------------
# The contenders: `warm`, `measure`, `logits`.
# --------------------------------------------------------------------------


def rate(steps, seconds):
    """`steps / seconds`, or None where the difference of two timings is
    not positive (noise larger than the steps themselves)."""
    return steps / seconds if steps and seconds > 0 else None


def _padded(prompt, max_length):
    ids = np.zeros((1, max_length), "int32")
    ids[0, : prompt.size] = prompt
    mask = np.zeros((1, max_length), bool)
    mask[0, : prompt.size] = True
    return ids, mask


class Ours:
    name = "ours"

    def __init__(self, precision, jit):
        self.precision, self.jit = precision, jit
        dtype = "bfloat16" if precision == "bfloat16" else None
        self.lm, _ = load_llama(MODEL, dtype=dtype)
        if precision == "int8":
            self.lm.quantize(
                "int8", filters=lambda layer: layer.name != "token_embedding"
            )
        lm = self.lm

        def prefill(token_ids, length):
            return lm.prefill(token_ids, length)[1]

        if jit or backend() == "torch":
            prefill = compile_function(
                prefill,
                static_argnums=(1,),
                variables=lambda: [
                    *lm.trainable_variables,
                    *lm.non_trainable_variables,
                ],
            )
        self._prefill = prefill

    def _generate(self, prompt, new_tokens, on_token=None):
        out = self.lm.generate(
            prompt[None],
            prompt.size + new_tokens,
            strategy="greedy",
            stop_token_ids=None,
            on_token=on_token,
            jit_compile=self.jit,
        )
        return out["token_ids"][0, prompt.size :]

    def warm(self, prompt, new_tokens):
        self.measure(prompt, new_tokens)
        return self._generate(prompt, new_tokens)

    def measure(self, prompt, new_tokens):
        ids, _ = _padded(prompt, prompt.size + new_tokens)
        ids = ops.convert_to_tensor(ids, "int32")
        start = time.perf_counter()
        block(self._prefill(ids, int(prompt.size)))
        prefill = time.perf_counter() - start

        start = time.perf_counter()
        self._generate(prompt, new_tokens)
        total = time.perf_counter() - start

        stamps = []
        self._generate(
            prompt,
            new_tokens,
            on_token=lambda step, tokens: stamps.append(time.perf_counter()),
        )
        return {
            "prefill_s": prefill,
            "total_s": total,
            "decode_tok_s": rate(new_tokens, total - prefill),
            "streamed_tok_s": rate(new_tokens - 1, stamps[-1] - stamps[0]),
        }

    def logits(self, ids, mask):
        with inference_mode():
            out = self.lm({"token_ids": ids, "padding_mask": mask})
        return np.asarray(ops.convert_to_numpy(out), "float32")


def hub_weights(our_weights):
    """keras-hub `LlamaBackbone` paths from ours (`llama_weights`')."""
    mapped = {}
    for path, value in our_weights.items():
        if path == "final_norm/scale":
            path = "sequence_output_layernorm/scale"
        path = path.replace("_layer_norm/", "_layernorm/")
        mapped[path] = value
    return mapped


class KerasHub:
    name = "keras-hub"

    def __init__(self, precision, jit, config, our_weights):
        import keras_hub

        self.precision = precision
        dtype = "bfloat16" if precision == "bfloat16" else None
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=config.vocabulary_size,
            num_layers=config.num_layers,
            num_query_heads=config.num_query_heads,
            hidden_dim=config.hidden_dim,
            intermediate_dim=config.intermediate_dim,
            num_key_value_heads=config.num_key_value_heads,
            rope_max_wavelength=config.rope_max_wavelength,
            layer_norm_epsilon=config.layer_norm_epsilon,
            tie_word_embeddings=config.tie_word_embeddings,
            dtype=dtype,
        )
        # Every variable named exactly once, with its shape (raises).
        checkpoints.assign_weights(backbone, hub_weights(our_weights))
        self.lm = keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)
        if precision == "int8":
            self.lm.quantize("int8")
        if jit:
            self.lm.compile(sampler="greedy")
        else:
            self.lm.compile(sampler="greedy", run_eagerly=True)

    def _generate(self, ids, mask):
        out = self.lm.generate(
            {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
        )
        return np.asarray(out["token_ids"])

    def warm(self, prompt, new_tokens):
        ids, mask = _padded(prompt, prompt.size + new_tokens)
        tokens = self._generate(ids, mask)
        self._generate(tokens, np.ones_like(mask))
        self._generate(ids[:, : prompt.size], mask[:, : prompt.size])
        return tokens[0, prompt.size :]

    def measure(self, prompt, new_tokens):
        ids, mask = _padded(prompt, prompt.size + new_tokens)
        start = time.perf_counter()
        self._generate(ids[:, : prompt.size], mask[:, : prompt.size])
        prefill = time.perf_counter() - start

        start = time.perf_counter()
        tokens = self._generate(ids, mask)
        total = time.perf_counter() - start

        start = time.perf_counter()
        self._generate(tokens, np.ones_like(mask))
        full = time.perf_counter() - start
        return {
            "prefill_s": prefill,
            "total_s": total,
            "full_forward_s": full,
            "decode_tok_s": rate(new_tokens, total - full),
            "streamed_tok_s": None,
        }

    def logits(self, ids, mask):
        with inference_mode():
            out = self.lm({"token_ids": ids, "padding_mask": mask})
        return np.asarray(ops.convert_to_numpy(ops.cast(out, "float32")))


class Transformers:
    name = "transformers"

    def __init__(self, precision):
        import torch
        from transformers import AutoModelForCausalLM

        if precision == "int8":
            raise NotImplementedError("transformers int8 is not measured")
        self.precision = precision
        self.torch = torch
        path = gguf_path(MODEL)
        options = {}
        try:  # newer transformers may keep GGUF blocks packed: unpack
            from transformers import GgufConfig

            options["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older ones always dequantize
            pass
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            dtype=getattr(torch, precision),
            attn_implementation="sdpa",
            **options,
        ).eval()
        linear = self.model.model.layers[0].self_attn.q_proj
        self.describe = (
            f"{type(linear).__name__} {linear.weight.dtype}, attention "
            f"{self.model.config._attn_implementation}"
        )

    def _generate(self, prompt, new_tokens, stamps=None):
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self.torch

        class Stamp(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stamps.append(time.perf_counter())
                return torch.zeros(
                    input_ids.shape[0], dtype=torch.bool, device="cpu"
                )

        ids = torch.as_tensor(prompt[None].astype("int64"))
        criteria = StoppingCriteriaList([Stamp()] if stamps is not None else [])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
                pad_token_id=self.model.config.eos_token_id,
                stopping_criteria=criteria,
            )
        return out[0, prompt.size :].numpy()

    def warm(self, prompt, new_tokens):
        self._generate(prompt, 1)
        return self._generate(prompt, new_tokens, stamps=[])

    def measure(self, prompt, new_tokens):
        start = time.perf_counter()
        self._generate(prompt, 1)
        prefill = time.perf_counter() - start

        stamps = []
        start = time.perf_counter()
        self._generate(prompt, new_tokens, stamps=stamps)
        total = time.perf_counter() - start
        steps = new_tokens - 1
        return {
            "prefill_s": prefill,
            "total_s": total,
            "decode_tok_s": rate(steps, total - prefill),
            "streamed_tok_s": rate(steps, stamps[-1] - stamps[0]),
        }

    def logits(self, ids, mask):
        torch = self.torch
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.as_tensor(ids.astype("int64")),
                attention_mask=torch.as_tensor(mask.astype("int64")),
            ).logits
        return out.float().numpy()


def reason(error):
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= 90 else text[:87] + "..."


class Weights:
    """The GGUF's config and our weights (read once, on demand)."""

    def __init__(self):
        self._loaded = None

    def get(self):
        if self._loaded is None:
            metadata, tensors = read_gguf(gguf_path(MODEL))
            config = LlamaConfig.from_gguf_metadata(metadata, tuple(tensors))
            self._loaded = (
                config,
                llama_weights(tensors, config),
                gguf_tokenizer(metadata),
            )
        return self._loaded


def build(name, precision, jit, weights):
    if name == "ours":
        return Ours(precision, jit)
    if name == "keras-hub":
        config, our_weights, _ = weights.get()
        return KerasHub(precision, jit, config, our_weights)
    return Transformers(precision)


# --------------------------------------------------------------------------
# A child: one configuration, its peak memory.
# --------------------------------------------------------------------------


def run_child(args):
    after_imports = rss_mib()
    name, precision = args.child.split(":")
    prompts = dict(np.load(args.prompts_file))
    if name == "keras-hub":
        import keras_hub  # noqa: F401 (it imports TensorFlow too)
    elif name == "transformers":
        import transformers  # noqa: F401
    after_library = rss_mib()
    with inference_mode():
        contender = build(name, precision, args.jit, Weights())
        after_load = rss_mib()
        for prompt in prompts.values():
            contender.warm(prompt, args.new_tokens)
            contender.measure(prompt, args.new_tokens)
    result = {
        "after_imports_mib": after_imports,
        "after_contender_import_mib": after_library,
        "peak_after_load_mib": after_load,
        "peak_rss_mib": rss_mib(),
        "vm_hwm_mib": hwm_mib(),
    }
    print("CHILD_RESULT " + json.dumps(result), flush=True)


def measure_memory(args, configs, prompts):
    """`{(name, precision): {...} or {"error": ...}}`, one fresh process
    each."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "prompts.npz"
        np.savez(file, **{str(len(p)): p for p in prompts})
        for name, precision in configs:
            # Linux carries `ru_maxrss` over `exec` (and `posix_spawn`):
            # a child started from this big process would report this
            # process's size. A shell that forks the child (not its last
            # command, so it does not `exec` it) gives it a fresh count.
            command = [
                "/bin/sh",
                "-c",
                '"$@"; exit $?',
                "sh",
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                f"{name}:{precision}",
                "--prompts-file",
                str(file),
                "--new-tokens",
                str(args.new_tokens),
            ]
            if not args.jit:
                command.append("--no-jit")
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [
                line
                for line in done.stdout.splitlines()
                if line.startswith("CHILD_RESULT ")
            ]
            if done.returncode or not lines:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                results[name, precision] = {"error": tail[:90]}
            else:
                results[name, precision] = json.loads(
                    lines[-1].removeprefix("CHILD_RESULT ")
                )
            print(f"memory {name} {precision}: {results[name, precision]}")
    return results


# --------------------------------------------------------------------------
# The parent: timing, checks, perplexity, the table.
# --------------------------------------------------------------------------


def median_summary(runs):
    summary = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            summary[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "runs": values,
            }
    return summary


def max_diff(a, b):
    return float(np.max(np.abs(a - b)))


def check_logits(built, tokenizer, reviews):
    """Logit differences vs ours at the same precision (and vs ours
    float32); asserts keras-hub float32 within `HUB_TOLERANCE`."""
    ids = build_prompt_ids(tokenizer, reviews, 64)[None]
    mask = np.ones_like(ids, bool)
    reference = {}
    for (name, precision), contender in built.items():
        if name == "ours":
            reference[precision] = contender.logits(ids, mask)
    checks = {}
    for (name, precision), contender in built.items():
        if name == "ours" and precision == "float32":
            continue
        logits = contender.logits(ids, mask)
        entry = {}
        if name != "ours" and precision in reference:
            entry["vs ours same precision"] = max_diff(
                logits, reference[precision]
            )
        if "float32" in reference:
            entry["vs ours float32"] = max_diff(logits, reference["float32"])
        checks[f"{name} {precision}"] = entry
        if name == "keras-hub" and precision == "float32":
            diff = entry["vs ours same precision"]
            assert diff < HUB_TOLERANCE, (
                f"keras-hub float32 logits differ from ours by {diff:.2e} "
                f"(> {HUB_TOLERANCE}): the weight copy is wrong."
            )
    return checks


def run(args):
    cpu = cpu_info()
    with_transformers = backend() == "torch" or args.transformers
    names = [n for n in args.contenders if n in CONTENDERS]
    if not with_transformers and "transformers" in names:
        names.remove("transformers")
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; bf16 flags: ")
    print("  " + ", ".join(f"{k}={v}" for k, v in cpu["flags"].items()))
    print(f"backend {backend()}; compile: {compile_setting(args.jit)}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    threads = None
    if backend() == "torch" or with_transformers:
        import torch

        threads = torch.get_num_threads()
        print(f"torch threads: {threads}")
    print(
        f"model {MODEL}; batch 1; greedy; {args.new_tokens} new tokens; "
        f"prompts {args.prompt_lengths}; {args.repeats} repeats (medians)"
    )

    log("reading the GGUF file and IMDB")
    weights = Weights()
    tokenizer = weights.get()[2]
    reviews = imdb_test_reviews(max(args.perplexity_reviews, 200))
    prompts = [
        build_prompt_ids(tokenizer, reviews, p) for p in args.prompt_lengths
    ]

    configs = [
        (name, precision)
        for precision in args.precisions
        for name in names
        if not (name == "transformers" and precision == "int8")
    ]
    if "transformers" in names and "int8" in args.precisions:
        print("transformers int8: skipped (not measured)")
    built, failed = {}, {}
    with inference_mode():
        for config in configs:
            log(f"building {config[0]} {config[1]}")
            try:
                built[config] = build(*config, args.jit, weights)
            except Exception as error:  # reported, not fatal
                failed[config] = f"n/a ({reason(error)})"
                print(f"{config[0]} {config[1]}: {failed[config]}")
            if hasattr(built.get(config), "describe"):
                print(f"{config[0]} {config[1]}: {built[config].describe}")
        weights._loaded = None  # the float32 tensors are no longer needed
        gc.collect()

        log("checking logits")
        checks = check_logits(built, tokenizer, reviews)
        for key, entry in checks.items():
            text = ", ".join(f"{k} {v:.2e}" for k, v in entry.items())
            print(f"max |logit diff| {key}: {text}")

        timings, agreement = {}, {}
        for length, prompt in zip(args.prompt_lengths, prompts):
            log(f"prompt {length}: warm-up")
            active, tokens = {}, {}
            for config, contender in built.items():
                try:
                    tokens[config] = np.asarray(
                        contender.warm(prompt, args.new_tokens)
                    )
                    active[config] = contender
                except Exception as error:
                    timings[config, length] = f"n/a ({reason(error)})"
            for config, made in tokens.items():
                ref = tokens.get(("ours", "float32"))
                if ref is not None:
                    same = int(np.cumprod(made == ref).sum())
                    agreement[f"{config[0]} {config[1]} P={length}"] = same
            runs = {config: [] for config in active}
            log(f"prompt {length}: {args.repeats} rounds")
            for _ in range(args.repeats):
                for config, contender in list(active.items()):
                    try:
                        runs[config].append(
                            contender.measure(prompt, args.new_tokens)
                        )
                    except Exception as error:
                        timings[config, length] = f"n/a ({reason(error)})"
                        del active[config]
            for config in active:
                timings[config, length] = median_summary(runs[config])
        print(
            "greedy tokens equal to ours float32's (leading run of "
            f"{args.new_tokens}): "
            + ", ".join(f"{k}: {v}" for k, v in agreement.items())
        )

        perplexities = {}
        if args.perplexity_reviews:
            log("perplexity")
            batches = perplexity_batches(
                tokenizer,
                reviews[: args.perplexity_reviews],
                args.perplexity_length,
                args.perplexity_batch,
            )
            for (name, precision), contender in built.items():
                wanted = name in args.perplexity_of and (
                    name != "transformers" or precision == "float32"
                )
                if not wanted:
                    continue
                try:
                    perplexities[name, precision] = perplexity(
                        contender, batches
                    )
                except Exception as error:
                    perplexities[name, precision] = f"n/a ({reason(error)})"
    del built
    gc.collect()

    memory = {}
    if args.memory:
        log("peak memory, one process per configuration")
        memory = measure_memory(args, configs, prompts)

    print_table(
        args, configs, failed, timings, perplexities, memory, with_transformers
    )
    if args.json:
        dump = {
            "cpu": cpu,
            "backend": backend(),
            "compile": compile_setting(args.jit),
            "versions": versions(),
            "torch_threads": threads,
            "options": vars(args),
            "failed": {f"{n} {p}": r for (n, p), r in failed.items()},
            "logit_checks": checks,
            "greedy_agreement_with_ours_float32": agreement,
            "timings": {
                f"{n} {p} P={length}": t
                for ((n, p), length), t in timings.items()
            },
            "perplexity": {f"{n} {p}": v for (n, p), v in perplexities.items()},
            "memory": {f"{n} {p}": v for (n, p), v in memory.items()},
        }
        Path(args.json).write_text(json.dumps(dump, indent=2))
        print(f"wrote {args.json}")


def _get(timings, config, length, key):
    entry = timings.get((config, length))
    if not isinstance(entry, dict) or key not in entry:
        return None
    return entry[key]["median"]


def _ratio(ours, theirs, invert=False):
    if ours is None or theirs is None:
        return "-"
    return f"{(theirs / ours) if invert else (ours / theirs):.2f}"


def _ratios_cell(timings, config, other, length, prefill):
    """ "decode, prefill": `config`'s speed over `other`'s (prefill: the
    inverse time ratio), at prompt `length`."""
    decode = _ratio(
        _get(timings, config, length, "decode_tok_s"),
        _get(timings, other, length, "decode_tok_s"),
    )
    prefill = _ratio(
        prefill, _get(timings, other, length, "prefill_s"), invert=True
    )
    return f"{decode}, {prefill}"


def print_table(
    args, configs, failed, timings, perplexities, memory, with_transformers
):
    print()
    print(
        f"backend {backend()}, {compile_setting(args.jit)}; batch 1, "
        f"{args.new_tokens} new tokens; medians of {args.repeats}"
    )
    print(
        "| contender | precision | prompt | decode tok/s (min-max) "
        "| streamed tok/s | prefill s | total s | ours/hub decode, prefill "
        "| ours/tf32 decode, prefill | perplexity | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        name, precision = config
        ppl = perplexities.get(config, "-")
        if isinstance(ppl, float):
            ppl = f"{ppl:.2f}"
        mem = memory.get(config, {})
        mem = (
            f"{mem['peak_rss_mib']:.0f}"
            if "peak_rss_mib" in mem
            else (f"n/a ({mem['error']})" if mem else "-")
        )
        if config in failed:
            print(
                f"| {name} | {precision} | all | {failed[config]} | | | | | "
                f"| | |"
            )
            continue
        for length in args.prompt_lengths:
            entry = timings.get((config, length))
            if not isinstance(entry, dict):
                print(
                    f"| {name} | {precision} | {length} | {entry} | | | | | "
                    f"| {ppl} | {mem} |"
                )
                continue
            decode = entry.get("decode_tok_s")
            decode_text = (
                f"{decode['median']:.1f} ({decode['min']:.1f}-"
                f"{decode['max']:.1f})"
                if decode
                else "-"
            )
            streamed = entry.get("streamed_tok_s")
            streamed_text = f"{streamed['median']:.1f}" if streamed else "-"
            prefill = entry["prefill_s"]["median"]
            total = entry["total_s"]["median"]
            hub_cell = tf_cell = "-"
            if name == "ours":
                hub = ("keras-hub", precision)
                hub_cell = _ratios_cell(timings, config, hub, length, prefill)
                if with_transformers:
                    tf32 = ("transformers", "float32")
                    tf_cell = _ratios_cell(
                        timings, config, tf32, length, prefill
                    )
            print(
                f"| {name} | {precision} | {length} | {decode_text} "
                f"| {streamed_text} | {prefill:.3f} | {total:.3f} "
                f"| {hub_cell} | {tf_cell} | {ppl} | {mem} |"
            )


def comma_list(kind=str):
    def parse(text):
        return [kind(part) for part in text.split(",") if part.strip()]

    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--prompt-lengths", type=comma_list(int), default=[32, 1024]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--precisions", type=comma_list(), default=list(PRECISIONS)
    )
    parser.add_argument(
        "--contenders",
        type=comma_list(),
        default=list(CONTENDERS),
        help="any of ours,keras-hub,transformers (transformers: on torch "
        "or with --transformers)",
    )
    parser.add_argument(
        "--transformers",
        action="store_true",
        help="time transformers (torch) under a non-torch backend too",
    )
    parser.add_argument("--perplexity-reviews", type=int, default=100)
    parser.add_argument("--perplexity-length", type=int, default=256)
    parser.add_argument("--perplexity-batch", type=int, default=8)
    parser.add_argument(
        "--perplexity-of",
        type=comma_list(),
        default=["ours", "transformers"],
        help="contenders whose perplexity is computed (transformers: "
        "float32 only); add keras-hub to check it too",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="peak RSS of each configuration, each in a fresh process",
    )
    parser.add_argument(
        "--no-jit",
        dest="jit",
        action="store_false",
        help="run everything eagerly (ours jit_compile=False, keras-hub "
        "run_eagerly=True)",
    )
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for precision in args.precisions:
        if precision not in PRECISIONS:
            parser.error(f"unknown precision {precision!r}")
    for name in args.contenders:
        if name not in CONTENDERS:
            parser.error(f"unknown contender {name!r}")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2")
    quiet()
    if args.child:
        run_child(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
