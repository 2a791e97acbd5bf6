"""Generating with an exported decode step, without Keras: a
`keras_selfattn.CausalLM`'s cached step (`CausalLM.decode_step_model`),
written as ONNX by `recipes.exporting.export_decode_step`, run by
onnxruntime in a greedy loop in NumPy.

    # with Keras, once:
    exporting.export_decode_step(lm, "runs/lm", max_length=64)
    # serving, with onnxruntime and NumPy alone:
    session = lm_serving.load_decode_step("runs/lm/decode_step.onnx")
    out = lm_serving.greedy_tokens(session, prompt_ids)

`greedy_tokens` gives what `keras_selfattn.generation.generate(lm,
prompt_ids, max_length, strategy="greedy")` gives for the same prompts,
padding mask, stop tokens and padding id. Importing this module imports
no Keras and no backend.

The artifact's inputs: `token_ids` int32 `(batch, tokens)`, `cache`
`(batch, num_layers, 2, cache_length, kv_heads, head_dim)` and
`cache_update_index` an int32 scalar; its outputs the logits `(batch,
tokens, vocab)` and the next cache (told apart by rank: exporters name
outputs their own way). `batch` and `tokens` are dynamic where the
exporter kept them so: a fixed batch is served in groups of that many
rows, a dynamic token count prefills a prompt in one call, a count of
one feeds it token by token.
"""

from pathlib import Path

import numpy as np

from keras_selfattn.prompts import check_prompts, check_stop_token_ids, finish

# The decode step's file in a model directory, and the entry of its ONNX
# metadata that holds the longest sequence its cache serves.
DECODE_STEP_ARTIFACT = "decode_step.onnx"
MAX_LENGTH_KEY = "max_length"
INPUT_NAMES = ("cache", "cache_update_index", "token_ids")
_CACHE_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def load_decode_step(path):
    """An onnxruntime session (on the CPU) of the decode step at `path`."""
    import onnxruntime

    return onnxruntime.InferenceSession(
        str(Path(path)), providers=["CPUExecutionProvider"]
    )


class DecodeStep:
    """An exported decode step as the loop runs it: `step(token_ids,
    cache, index) -> (logits, next_cache)`, with the sizes the artifact
    fixes (`batch_size`, `tokens_per_call`: None where dynamic), its
    `cache_shape` past the batch axis, `cache_dtype` and `max_length`
    (None if the artifact does not say).
    """

    def __init__(self, session):
        try:
            inputs = {spec.name: spec for spec in session.get_inputs()}
            outputs = [len(spec.shape) for spec in session.get_outputs()]
            metadata = session.get_modelmeta().custom_metadata_map
        except AttributeError:
            raise ValueError(
                "`session` must be an onnxruntime InferenceSession of an "
                f"exported decode step. Received: session={session!r}"
            ) from None
        if tuple(sorted(inputs)) != INPUT_NAMES or sorted(outputs) != [3, 6]:
            raise ValueError(
                f"A decode step takes the inputs {list(INPUT_NAMES)} and "
                "returns logits (rank 3) and a cache (rank 6). Received: "
                f"inputs {sorted(inputs)}, outputs of ranks {outputs}"
            )
        self.session = session
        self.logits_output = outputs.index(3)
        batch, tokens = inputs["token_ids"].shape
        self.batch_size = batch if isinstance(batch, int) else None
        self.tokens_per_call = tokens if isinstance(tokens, int) else None
        if self.tokens_per_call not in (None, 1):
            raise ValueError(
                "The loop feeds one token a call, or a whole prompt to an "
                "artifact of a dynamic token count. Received: an artifact "
                f"of token_ids shape {inputs['token_ids'].shape}"
            )
        self.cache_shape = tuple(inputs["cache"].shape[1:])
        cache_type = inputs["cache"].type
        if cache_type not in _CACHE_DTYPES:
            raise ValueError(
                f"The cache must be one of {sorted(_CACHE_DTYPES)} (NumPy "
                f"feeds them). Received: a cache of {cache_type}"
            )
        self.cache_dtype = _CACHE_DTYPES[cache_type]
        max_length = metadata.get(MAX_LENGTH_KEY)
        self.max_length = None if max_length is None else int(max_length)

    def __call__(self, token_ids, cache, index):
        results = self.session.run(
            None,
            {
                "token_ids": np.ascontiguousarray(token_ids, np.int32),
                "cache": cache,
                "cache_update_index": np.array(index, np.int32),
            },
        )
        logits = results[self.logits_output]
        return logits, results[1 - self.logits_output]

    def initial_cache(self, batch_size):
        return np.zeros((batch_size, *self.cache_shape), self.cache_dtype)


def greedy_tokens(
    session,
    token_ids,
    max_length=None,
    padding_mask=None,
    stop_token_ids=None,
    pad_token_id=0,
):
    """Extend each prompt to `max_length` tokens with the argmax of the
    exported step's logits: `keras_selfattn.generation.generate`'s
    greedy decoding, in NumPy.

    Prompts are right-padded; where `padding_mask` is True a row keeps
    its own token. The tokens before the shortest prompt's last one fill
    the cache first (in one call where the artifact takes any number of
    tokens); then each call feeds one token and reads the next one's
    logits. A row stops at its first generated token in
    `stop_token_ids`, the loop when every row has; later positions hold
    `pad_token_id` and are False in the returned padding mask.

    Args:
        session: an onnxruntime session of the decode step
            (`load_decode_step`).
        token_ids: int `(B, P)` prompts.
        max_length: the length of the returned rows, at most the
            `max_length` the step was exported for (the default).
        padding_mask: boolean `(B, P)`, True for prompt tokens, each row's
            a prefix of at least one token; defaults to all True.
        stop_token_ids: optional token ids that end a row.
        pad_token_id: the id after a row's stop token.

    Returns:
        `{"token_ids": int32 (B, max_length), "padding_mask": bool (B,
        max_length)}`.
    """
    step = DecodeStep(session)
    max_length = _check_max_length(max_length, step.max_length)
    stops = check_stop_token_ids(stop_token_ids)
    tokens, mask, _ = check_prompts(
        token_ids, padding_mask, max_length, pad_token_id
    )
    rows = len(tokens)
    group = step.batch_size or rows
    for first in range(0, rows, group):
        chunk = np.arange(first, first + group)
        chunk = np.minimum(chunk, rows - 1)  # a short group repeats a row
        written = _greedy_rows(step, tokens[chunk], mask[chunk], stops)
        tokens[first : first + group] = written[: rows - first]
    return finish(tokens, mask, stops, pad_token_id)


def _greedy_rows(step, tokens, mask, stops):
    """`tokens` `(rows, max_length)` with each position after the
    shortest prompt written: the row's prompt token or the argmax."""
    tokens = tokens.copy()
    start = int(mask.sum(axis=1).min())
    max_length = tokens.shape[1]
    if start == max_length:
        return tokens
    cache = step.initial_cache(len(tokens))
    if step.tokens_per_call is None and start > 1:
        _, cache = step(tokens[:, : start - 1], cache, 0)
    else:
        for position in range(start - 1):
            _, cache = step(tokens[:, position : position + 1], cache, position)
    done = np.zeros(len(tokens), bool)
    for index in range(start, max_length):
        logits, cache = step(tokens[:, index - 1 : index], cache, index - 1)
        new = np.argmax(logits[:, -1], axis=-1).astype(np.int32)
        in_prompt = mask[:, index]
        tokens[:, index] = np.where(in_prompt, tokens[:, index], new)
        if stops is not None:
            done |= np.isin(tokens[:, index], stops) & ~in_prompt
            if done.all():
                break
    return tokens


def _check_max_length(max_length, exported):
    if max_length is None and exported is not None:
        return exported
    if (
        isinstance(max_length, bool)
        or not isinstance(max_length, (int, np.integer))
        or max_length < 1
        or (exported is not None and max_length > exported)
    ):
        limit = "" if exported is None else f" up to {exported}"
        raise ValueError(
            f"`max_length` must be a positive integer{limit} (the "
            "artifact's cache serves the `max_length` it was exported "
            f"for). Received: max_length={max_length!r}"
        )
    return int(max_length)
