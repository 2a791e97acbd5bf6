"""Prompts in and generated tokens out, in NumPy (no Keras): the checks
and the result that `keras_selfattn.generation` and serving without Keras
share, and the chat template that turns messages into a prompt.

Prompts are right padded: row `b` holds its prompt in its first tokens,
marked True in `padding_mask`.
"""

import numbers

import numpy as np

from keras_selfattn._validation import check_positive_int


def check_token_id(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 0
    ):
        raise ValueError(
            f"`{name}` must be a non-negative integer. Received: "
            f"{name}={value!r}"
        )
    return int(value)


def check_stop_token_ids(stop_token_ids):
    """A sorted tuple of ids, or None."""
    if stop_token_ids is None:
        return None
    if isinstance(stop_token_ids, numbers.Integral):
        stop_token_ids = [stop_token_ids]
    ids = np.asarray(stop_token_ids).reshape(-1).tolist()
    if not ids or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
    ):
        raise ValueError(
            "`stop_token_ids` must be a non-negative int or a non-empty "
            f"list of them. Received: stop_token_ids={stop_token_ids!r}"
        )
    return tuple(sorted(set(ids)))


def check_prompts(token_ids, padding_mask, max_length, pad_token_id):
    """`(token_ids, mask, start)`: NumPy `(B, max_length)` prompts padded
    with `pad_token_id`, their mask, and the shortest prompt's length."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2 or not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(
            "`token_ids` must be integer ids of shape (batch, length). "
            f"Received: token_ids.shape={token_ids.shape}, "
            f"dtype={token_ids.dtype}"
        )
    batch_size, prompt_length = token_ids.shape
    max_length = check_positive_int("max_length", max_length)
    if max_length < prompt_length:
        raise ValueError(
            "`max_length` must be at least the prompt length "
            f"{prompt_length}. Received: max_length={max_length}"
        )
    if padding_mask is None:
        mask = np.ones(token_ids.shape, bool)
    else:
        mask = np.asarray(padding_mask).astype(bool)
        if mask.shape != token_ids.shape:
            raise ValueError(
                "`padding_mask` must have the shape of `token_ids` "
                f"{token_ids.shape}. Received: padding_mask.shape="
                f"{mask.shape}"
            )
    lengths = mask.sum(axis=1)
    prefix = np.arange(prompt_length)[None, :] < lengths[:, None]
    if batch_size == 0 or (mask != prefix).any() or lengths.min() < 1:
        raise ValueError(
            "`padding_mask` must mark a prompt of at least one token at the "
            "start of every row (right padding). Received: row lengths "
            f"{lengths.tolist()}, padding_mask={mask.astype(int).tolist()}"
        )
    pad = max_length - prompt_length
    token_ids = np.pad(
        token_ids.astype("int32"), [(0, 0), (0, pad)], constant_values=0
    )
    token_ids = np.where(
        np.pad(mask, [(0, 0), (0, pad)]), token_ids, pad_token_id
    )
    mask = np.pad(mask, [(0, 0), (0, pad)])
    return token_ids.astype("int32"), mask, int(lengths.min())


def finish(tokens, mask, stop_token_ids, pad_token_id):
    """The returned dict: positions after each row's first generated stop
    token padded and masked out."""
    if stop_token_ids is None:
        padding_mask = np.ones(tokens.shape, bool)
    else:
        ends = np.isin(tokens, stop_token_ids) & ~mask
        after = (np.cumsum(ends, axis=1) - ends) > 0
        padding_mask = ~after
    tokens = np.where(padding_mask, tokens, pad_token_id).astype("int32")
    return {"token_ids": tokens, "padding_mask": padding_mask}


def apply_chat_template(
    template, messages, add_generation_prompt=True, **variables
):
    """Render a chat template (Jinja, as Hugging Face and GGUF files store
    them) over `messages`, as transformers' `apply_chat_template` does:
    a sandboxed environment, blocks trimmed.

    Args:
        template: the template text (e.g. a GGUF's
            `tokenizer.chat_template`).
        messages: a list of `{"role": ..., "content": ...}` dicts.
        add_generation_prompt: end with the header of the assistant's
            turn, so that the model writes the answer.
        **variables: further template variables (`bos_token`, ...).

    Returns:
        The prompt text; its special tokens are text the tokenizer keeps
        whole.

    Example:

    >>> template = (
    ...     "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    ...     "{% endfor %}{% if add_generation_prompt %}<|assistant|>"
    ...     "{% endif %}"
    ... )
    >>> apply_chat_template(template, [{"role": "user", "content": "Hi"}])
    '<|user|>Hi<|assistant|>'
    """
    if not isinstance(template, str) or not template:
        raise ValueError(
            "`template` must be a non-empty chat template string. "
            f"Received: template={template!r}"
        )
    if not isinstance(messages, (list, tuple)) or not all(
        isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages
    ):
        raise ValueError(
            "`messages` must be a list of dicts with `role` and `content`. "
            f"Received: messages={messages!r}"
        )
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"The chat template refused the messages: {message}")

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True
    )
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template).render(
        messages=list(messages),
        add_generation_prompt=add_generation_prompt,
        **variables,
    )
