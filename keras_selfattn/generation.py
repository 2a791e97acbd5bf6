"""Token generation: sampling functions and a compiled decoding loop.

`generate` drives any model with `prefill(token_ids, length) ->
(hidden_states, cache)` and keras-hub's sampler step `next(prompt, cache,
index) -> (logits, hidden_states, cache)`, such as
`keras_selfattn.CausalLM`. It needs neither keras-hub nor TensorFlow:
without a callback the whole loop is one compiled function (`jax.jit` on
JAX, `tf.function(jit_compile=True)` on TensorFlow; torch runs it eagerly);
with `on_token` a Python loop streams the tokens of a compiled step.

The strategies: `"greedy"` (argmax) and `"sample"` (draw from
`softmax(logits / temperature)`, optionally restricted to the `top_k`
most likely tokens and to the nucleus of probability `top_p`; HF
transformers' order: temperature, top-k, then top-p).

Randomness is drawn before the loop, one uniform number per row and step
from `seed`, and a token is drawn by inverting the cumulative
distribution: a seed gives the same tokens compiled or streamed.
"""

import numbers
import weakref

import keras
import numpy as np
from keras import ops

from keras_selfattn._validation import check_choice, check_positive_int
from keras_selfattn.ops.compiling import compile_function
from keras_selfattn.prompts import (
    check_prompts,
    check_stop_token_ids,
    check_token_id,
    finish,
)

STRATEGIES = ("greedy", "sample")

# Logits of excluded tokens: finite, so a row never becomes all NaN.
_EXCLUDED = float(np.finfo("float32").min)


def top_k_logits(logits, k):
    """Keep each row's `k` largest logits; the rest become the float32
    minimum (probability 0 after softmax). Ties with the `k`-th largest
    are kept.

    Args:
        logits: float `(B, vocab)`.
        k: positive int; a `k` above the vocabulary keeps every token.

    Returns:
        float32 `(B, vocab)`.

    Example:

    >>> import numpy as np
    >>> kept = top_k_logits(np.array([[1.0, 3.0, 2.0, 0.5]]), 2)
    >>> (keras.ops.convert_to_numpy(kept) > -1e30).tolist()
    [[False, True, True, False]]
    """
    k = check_positive_int("k", k)
    logits = ops.cast(logits, "float32")
    k = min(k, logits.shape[-1])
    kth = ops.top_k(logits, k, sorted=True)[0][:, k - 1 : k]
    return ops.where(logits >= kth, logits, _EXCLUDED)


def top_p_logits(logits, p):
    """Keep each row's nucleus: its most likely tokens, in order, until
    their probability reaches `p` (at least the most likely one); the rest
    become the float32 minimum.

    Args:
        logits: float `(B, vocab)`.
        p: float in (0, 1].

    Returns:
        float32 `(B, vocab)`.

    Example:

    >>> import numpy as np
    >>> logits = np.log(np.array([[0.1, 0.5, 0.3, 0.1]]))
    >>> kept = top_p_logits(logits, 0.7)  # 0.5 + 0.3 reaches 0.7
    >>> (keras.ops.convert_to_numpy(kept) > -1e30).tolist()
    [[False, True, True, False]]
    """
    _check_top_p("p", p)
    logits = ops.cast(logits, "float32")
    if p >= 1.0:
        return logits
    ordered = ops.top_k(logits, logits.shape[-1], sorted=True)[0]
    probabilities = ops.softmax(ordered, axis=-1)
    before = ops.cumsum(probabilities, axis=-1) - probabilities
    count = ops.sum(ops.cast(before < p, "int32"), axis=-1, keepdims=True)
    threshold = ops.take_along_axis(ordered, count - 1, axis=-1)
    return ops.where(logits >= threshold, logits, _EXCLUDED)


def sample_from_uniform(logits, uniform):
    """Draw one token per row from `softmax(logits)` with the given
    uniform numbers in [0, 1): the first token whose cumulative
    probability reaches `1 - uniform` of the total (never one of
    probability 0).

    Args:
        logits: float `(B, vocab)`.
        uniform: float `(B,)` in [0, 1).

    Returns:
        int32 `(B,)`.

    Example:

    >>> import numpy as np
    >>> logits = np.log(np.array([[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]]))
    >>> tokens = sample_from_uniform(logits, np.array([0.9, 0.5]))
    >>> keras.ops.convert_to_numpy(tokens).tolist()
    [0, 1]
    """
    logits = ops.cast(logits, "float32")
    cumulative = ops.cumsum(ops.softmax(logits, axis=-1), axis=-1)
    uniform = ops.cast(uniform, "float32")
    target = ops.expand_dims(1.0 - uniform, -1) * cumulative[:, -1:]
    tokens = ops.sum(ops.cast(cumulative < target, "int32"), axis=-1)
    return ops.minimum(tokens, logits.shape[-1] - 1)


def choose_tokens(
    logits, uniform, strategy, temperature=1.0, top_k=None, top_p=None
):
    """The next token of each row: the argmax (`"greedy"`), or a draw with
    `uniform` from the tempered, top-k and top-p filtered distribution
    (`"sample"`). Arguments are trusted (see `sample_logits`).

    Example:

    >>> import numpy as np
    >>> logits = np.array([[0.0, 2.0, 1.0]])
    >>> keras.ops.convert_to_numpy(
    ...     choose_tokens(logits, np.array([0.99]), "sample", top_k=1)
    ... ).tolist()
    [1]
    """
    logits = ops.cast(logits, "float32")
    if strategy == "greedy":
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None:
        logits = top_p_logits(logits, top_p)
    return sample_from_uniform(logits, uniform)


def sample_logits(
    logits,
    strategy="greedy",
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
):
    """One token per row from next-token logits.

    Args:
        logits: float `(B, vocab)`.
        strategy: `"greedy"` or `"sample"`.
        temperature: positive float dividing the logits (`"sample"`).
        top_k: optional positive int: sample among the `top_k` most
            likely tokens.
        top_p: optional float in (0, 1]: sample within the nucleus of
            probability `top_p`.
        seed: None, an int, or a `keras.random.SeedGenerator`.

    Returns:
        int32 `(B,)`.

    Example:

    >>> import numpy as np
    >>> logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    >>> keras.ops.convert_to_numpy(sample_logits(logits)).tolist()
    [1, 0]
    >>> keras.ops.convert_to_numpy(
    ...     sample_logits(logits, "sample", top_k=1, seed=7)
    ... ).tolist()
    [1, 0]
    """
    options = check_sampling(strategy, temperature, top_k, top_p)
    _check_seed(seed)
    logits = ops.convert_to_tensor(logits)
    if len(logits.shape) != 2:
        raise ValueError(
            "`logits` must have shape (batch, vocab). Received: "
            f"logits.shape={tuple(logits.shape)}"
        )
    uniform = (
        ops.zeros(ops.shape(logits)[:1])
        if strategy == "greedy"
        else keras.random.uniform(ops.shape(logits)[:1], seed=seed)
    )
    return choose_tokens(logits, uniform, *options)


def check_sampling(strategy, temperature, top_k, top_p):
    """Check the sampling arguments; return them as `(strategy,
    temperature, top_k, top_p)` (numbers as Python floats and ints)."""
    check_choice("strategy", strategy, STRATEGIES)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not 0.0 < temperature < float("inf")
    ):
        raise ValueError(
            "`temperature` must be a positive number. Received: "
            f"temperature={temperature!r}"
        )
    top_k = check_positive_int("top_k", top_k, allow_none=True)
    if top_p is not None:
        _check_top_p("top_p", top_p)
    if strategy == "greedy" and (top_k is not None or top_p is not None):
        raise ValueError(
            "`top_k` and `top_p` apply to strategy='sample'. Received: "
            f"strategy='greedy', top_k={top_k!r}, top_p={top_p!r}"
        )
    top_p = None if top_p is None else float(top_p)
    return strategy, float(temperature), top_k, top_p


def _check_top_p(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < value <= 1.0
    ):
        raise ValueError(
            f"`{name}` must be a float in (0, 1]. Received: {name}={value!r}"
        )


def _check_seed(seed):
    if seed is None or isinstance(seed, keras.random.SeedGenerator):
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            "`seed` must be None, an int or a keras.random.SeedGenerator. "
            f"Received: seed={seed!r}"
        )


def generate(
    model,
    token_ids,
    max_length,
    padding_mask=None,
    strategy="greedy",
    temperature=1.0,
    top_k=None,
    top_p=None,
    stop_token_ids=None,
    seed=None,
    on_token=None,
    pad_token_id=0,
    jit_compile=True,
):
    """Extend each prompt to `max_length` tokens.

    Prompts are right-padded: where `padding_mask` is True a row keeps its
    own token, and from the row's first False position on the model
    writes. The cache is filled with the tokens before the shortest prompt
    in one pass (`model.prefill`); then each step feeds one token
    (`model.next`), as keras-hub's samplers do.

    A row stops at the first generated token (outside its prompt) in
    `stop_token_ids`; the loop stops when every row has. Positions after
    a row's stop token hold `pad_token_id`, and the returned padding mask
    is False there (True over the prompt, the generated tokens and the
    stop token): keras-hub's `generate_step` output.

    Args:
        model: a model with `prefill` and `next`, e.g. a
            `keras_selfattn.CausalLM`.
        token_ids: int `(B, P)` prompts, `P <= max_length`.
        max_length: the length of the returned rows.
        padding_mask: boolean `(B, P)`, True for prompt tokens, each row's
            a prefix of at least one token; defaults to all True.
        strategy: `"greedy"` or `"sample"`.
        temperature, top_k, top_p: see `sample_logits` (`"sample"` only).
        stop_token_ids: optional token ids that end a row.
        seed: None, an int or a `keras.random.SeedGenerator`: an int gives
            the same tokens on every call.
        on_token: optional `on_token(step, tokens)` called after each
            generated position with `step`, the position (column of the
            returned token ids) just filled, and `tokens`, the NumPy int32
            `(B,)` ids written there (a row's prompt token inside its
            prompt, `pad_token_id` after its stop). Streams the tokens;
            each step is then compiled alone.
        pad_token_id: the id filling positions after a row's stop token,
            in the result and the stream (the model never reads it).
        jit_compile: compile the loop (or the step) on JAX and TensorFlow;
            False runs it eagerly (the tokens are the same).

    Returns:
        `{"token_ids": int32 (B, max_length), "padding_mask": bool (B,
        max_length)}`, NumPy arrays.

    Example:

    >>> import numpy as np
    >>> from keras_selfattn import CausalLM, TransformerDecoder
    >>> lm = CausalLM(
    ...     keras.layers.Embedding(30, 8),
    ...     [TransformerDecoder(16, 2)],
    ... )
    >>> prompt = np.array([[5, 6, 7], [8, 9, 0]])
    >>> out = generate(
    ...     lm, prompt, 8, padding_mask=prompt > 0, strategy="sample",
    ...     top_k=5, temperature=0.7, seed=1
    ... )
    >>> out["token_ids"].shape, out["token_ids"][0, :3].tolist()
    ((2, 8), [5, 6, 7])
    >>> streamed = []
    >>> out = generate(
    ...     lm, prompt, 5, padding_mask=prompt > 0,
    ...     on_token=lambda step, tokens: streamed.append(step)
    ... )
    >>> streamed
    [2, 3, 4]
    """
    options = check_sampling(strategy, temperature, top_k, top_p)
    _check_seed(seed)
    pad_token_id = check_token_id("pad_token_id", pad_token_id)
    stop_token_ids = check_stop_token_ids(stop_token_ids)
    if on_token is not None and not callable(on_token):
        raise ValueError(
            f"`on_token` must be callable. Received: on_token={on_token!r}"
        )
    if padding_mask is not None:
        padding_mask = ops.convert_to_numpy(padding_mask)
    token_ids, mask, start = check_prompts(
        ops.convert_to_numpy(token_ids), padding_mask, max_length, pad_token_id
    )
    batch_size = token_ids.shape[0]
    steps = max_length - start
    if strategy == "greedy":
        uniform = np.zeros((steps, batch_size), "float32")
    else:
        uniform = keras.random.uniform((steps, batch_size), seed=seed)
        uniform = ops.convert_to_numpy(uniform)
    key = (options, stop_token_ids, pad_token_id, bool(jit_compile))
    functions = _functions(model, key)
    arguments = [
        ops.convert_to_tensor(token_ids, "int32"),
        ops.convert_to_tensor(mask, "bool"),
        ops.convert_to_tensor(uniform, "float32"),
    ]
    if on_token is None:
        tokens = functions.loop(*arguments, start)
    else:
        tokens = _stream(functions, arguments, start, max_length, on_token)
    tokens = np.asarray(ops.convert_to_numpy(tokens), "int32")
    return finish(tokens, mask, stop_token_ids, pad_token_id)


def _stream(functions, arguments, start, max_length, on_token):
    """The loop in Python over a compiled step, calling `on_token`."""
    tokens, mask, uniform = arguments
    cache = functions.prefill(tokens, start)
    done = ops.zeros(ops.shape(tokens)[:1], "bool")
    for index in range(start, max_length):
        tokens, cache, done, new = functions.step(
            tokens,
            cache,
            ops.convert_to_tensor(index, "int32"),
            done,
            mask,
            uniform[index - start],
        )
        on_token(index, np.asarray(ops.convert_to_numpy(new), "int32"))
        if np.all(ops.convert_to_numpy(done)):
            break
    return tokens


# ------------------------------------------------------------- the loop


def _step(model, options, tokens, cache, index, done, mask, uniform):
    """Write the token of position `index`: `(tokens, cache, done, shown)`.

    `done` marks the rows that have generated a stop token. Such a row
    goes on writing (and feeding) generated tokens, as in keras-hub's
    samplers, so `pad_token_id` never reaches the model; `shown`, the `(B,)`
    column streamed, holds `pad_token_id` for it, as the result will."""
    (strategy, temperature, top_k, top_p), stop_token_ids, pad = options
    logits, _, cache = model.next(tokens, cache, index)
    new = choose_tokens(logits, uniform, strategy, temperature, top_k, top_p)
    in_prompt = ops.take(mask, index, axis=1)
    new = ops.where(in_prompt, ops.take(tokens, index, axis=1), new)
    tokens = ops.slice_update(tokens, [0, index], ops.expand_dims(new, 1))
    shown = ops.where(done, pad, new)
    if stop_token_ids is not None:
        stops = ops.convert_to_tensor(stop_token_ids, "int32")
        is_stop = ops.any(ops.equal(new[:, None], stops[None, :]), axis=-1)
        done = ops.logical_or(
            done, ops.logical_and(is_stop, ops.logical_not(in_prompt))
        )
    return tokens, cache, done, shown


def _loop(model, options, token_ids, mask, uniform, start):
    """Prefill, then `_step` from `start` until `max_length` or until
    every row is done: the token ids."""
    _, stop_token_ids, _ = options
    max_length = token_ids.shape[1]
    if start == max_length:
        return token_ids
    _, cache = model.prefill(token_ids, start)

    def cond(tokens, cache, index, done):
        if stop_token_ids is None:
            return ops.convert_to_tensor(True)
        return ops.logical_not(ops.all(done))

    def body(tokens, cache, index, done):
        row = ops.take(uniform, index - start, axis=0)
        tokens, cache, done, _ = _step(
            model, options, tokens, cache, index, done, mask, row
        )
        return tokens, cache, index + 1, done

    done = ops.zeros(ops.shape(token_ids)[:1], "bool")
    index = ops.convert_to_tensor(start, "int32")
    tokens, *_ = ops.while_loop(
        cond,
        body,
        (token_ids, cache, index, done),
        maximum_iterations=max_length - start,
    )
    return tokens


class _Functions:
    """The loop, prefill and step of one model and one set of options,
    compiled (or not) once and kept while the model lives."""

    def __init__(self, model, options, jit_compile):
        model = weakref.ref(model)

        def loop(token_ids, mask, uniform, start):
            return _loop(model(), options, token_ids, mask, uniform, start)

        def prefill(token_ids, start):
            return model().prefill(token_ids, start)[1]

        def step(tokens, cache, index, done, mask, uniform):
            return _step(
                model(), options, tokens, cache, index, done, mask, uniform
            )

        self.loop = _compile(loop, model, jit_compile, static_argnum=3)
        self.prefill = _compile(prefill, model, jit_compile, static_argnum=1)
        # A streamed step gets its position as an argument, and XLA on
        # TensorFlow takes an argument that starts a slice (keras-hub's
        # `PositionEmbedding` slices at `start_index`) as a compile-time
        # constant: it would compile the step again for every position.
        # There the step runs as a TensorFlow graph.
        self.step = _compile(step, model, jit_compile, tf_xla=False)


_FUNCTIONS = weakref.WeakKeyDictionary()


def _functions(model, key):
    options, stop_token_ids, pad_token_id, jit_compile = key
    by_key = _FUNCTIONS.setdefault(model, {})
    if key not in by_key:
        by_key[key] = _Functions(
            model, (options, stop_token_ids, pad_token_id), jit_compile
        )
    return by_key[key]


def _compile(function, model, jit_compile, static_argnum=None, tf_xla=True):
    """`function` compiled for the backend (`compile_function`), reading
    the variables of `model` (a weak reference); with `jit_compile=False`
    it runs as it is, its portable twin (on torch, under `no_grad`). The
    tests check that both give the same tokens."""
    if not jit_compile and keras.backend.backend() != "torch":
        return function
    return compile_function(
        function,
        static_argnums=() if static_argnum is None else (static_argnum,),
        variables=lambda: [
            *model().trainable_variables,
            *model().non_trainable_variables,
        ],
        xla=tf_xla,
    )
