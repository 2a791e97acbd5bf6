"""One attention call, described once for every path.

`AttentionProblem` holds the checked inputs of one call in the form every
path takes: query `(B, T, H, D)`, key `(B, S, Hkv, D)`, value
`(B, S, Hkv, Dv)`; a boolean rank-4 mask broadcastable to `(B, H, T, S)`
(or None); the causal flag, window, biases, soft cap, scale and dropout.
A path is a function `path(problem) -> (output, probabilities or None)`.
"""

import dataclasses
import math

from keras import ops

from keras_selfattn.ops.masks import as_bool, merge_masks, sliding_window_mask


@dataclasses.dataclass(frozen=True)
class AttentionProblem:
    """The inputs of one attention call, as every path takes them.

    Build it with `describe_problem`, which brings masks and biases to
    rank 4 and fills the scale.
    """

    query: object
    key: object
    value: object
    mask: object = None
    is_causal: bool = False
    scale: float = 1.0
    sliding_window: int = None
    attention_bias: object = None
    position_bias: object = None
    logit_soft_cap: float = None
    dropout_rate: float = 0.0
    seed: object = None
    flash_attention: bool = None
    return_attention_scores: bool = False

    @property
    def needs_probabilities(self):
        """Whether the call needs the probabilities materialised (dropout
        on them, or returned)."""
        return self.dropout_rate > 0.0 or self.return_attention_scores

    @property
    def tiled_features(self):
        """A position bias or a soft cap: what the blockwise path computes
        tile by tile and the fused kernels cannot (or only whole)."""
        return self.position_bias is not None or self.logit_soft_cap is not None

    def banded_mask(self):
        """The mask with the sliding window folded in, for the paths that
        take the window as a dense `(T, S)` band."""
        if self.sliding_window is None:
            return self.mask
        window = sliding_window_mask(
            ops.shape(self.query)[1],
            ops.shape(self.key)[1],
            self.sliding_window,
        )
        return merge_masks(self.mask, window[None, None])


def describe_problem(query, key, value, *, mask=None, scale=None, **options):
    """An `AttentionProblem` of checked inputs: a rank-2 mask or bias
    becomes rank 4, an integer mask boolean, `scale=None` `1 / sqrt(D)`;
    `options` are the other fields."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if mask is not None:
        mask = as_bool(mask)
        if len(mask.shape) == 2:
            mask = mask[None, None]
    bias = options.pop("attention_bias", None)
    if bias is not None:
        bias = ops.convert_to_tensor(bias)
        if len(bias.shape) == 2:
            bias = bias[None, None]
    return AttentionProblem(
        query,
        key,
        value,
        mask=mask,
        scale=scale,
        attention_bias=bias,
        **options,
    )
