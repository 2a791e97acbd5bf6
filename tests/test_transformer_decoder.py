"""TransformerDecoder: keras-hub's layer with weights copied, caches, and
the LLaMA-family options."""

import keras
import numpy as np
import pytest

import keras_selfattn as ksa
from tests.support import keep_one_key_per_row, rand, to_numpy

BATCH, LENGTH, ENCODER_LENGTH, WIDTH, HEADS = 2, 7, 5, 12, 3


def _inputs(cross, seed=0):
    rng = np.random.default_rng(seed)
    decoder = rand(rng, BATCH, LENGTH, WIDTH)
    encoder = rand(rng, BATCH, ENCODER_LENGTH, WIDTH)
    return (decoder, encoder) if cross else (decoder,)


def _copied(normalize_first, cross, **hub_kwargs):
    """keras-hub's decoder and ours with its weights."""
    keras_hub = pytest.importorskip("keras_hub")
    kwargs = {"normalize_first": normalize_first, **hub_kwargs}
    hub = keras_hub.layers.TransformerDecoder(16, HEADS, **kwargs)
    ours = ksa.TransformerDecoder(16, HEADS, **kwargs)
    inputs = _inputs(cross)
    hub(*inputs)
    ours(*inputs)
    assert [w.shape for w in ours.weights] == [w.shape for w in hub.weights]
    ours.set_weights(hub.get_weights())
    return hub, ours, inputs


@pytest.mark.parametrize("cross", [False, True], ids=["decoder", "cross"])
@pytest.mark.parametrize("normalize_first", [False, True])
def test_matches_keras_hub(normalize_first, cross):
    """Same outputs with weights copied, with padding and attention masks,
    and from keras-hub's config."""
    hub, ours, inputs = _copied(normalize_first, cross, activation="gelu")
    rng = np.random.default_rng(1)
    masks = {
        "decoder_padding_mask": np.arange(LENGTH) < [[LENGTH], [4]],
        # Every query keeps key 0: keras-hub averages rows with no key.
        "decoder_attention_mask": keep_one_key_per_row(
            rng.random((BATCH, LENGTH, LENGTH)) < 0.6
        ),
    }
    if cross:
        masks["encoder_padding_mask"] = np.arange(ENCODER_LENGTH) < [[5], [3]]
    for kwargs in ({}, masks):
        want = to_numpy(hub(*inputs, **kwargs))
        got = to_numpy(ours(*inputs, **kwargs))
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(to_numpy(ours(*inputs)), got, atol=1e-3)
    loaded = ksa.TransformerDecoder.from_config(hub.get_config())
    loaded.set_weights(hub.get_weights())
    np.testing.assert_allclose(
        to_numpy(loaded(*inputs)), to_numpy(hub(*inputs)), atol=1e-5
    )


@pytest.mark.parametrize("cross", [False, True], ids=["decoder", "cross"])
def test_cached_decoding_matches_keras_hub(cross):
    """Prefill then a step, keras-hub's return forms and caches."""
    hub, ours, inputs = _copied(True, cross)
    x = inputs[0]
    encoder = inputs[1:]
    head_dim = WIDTH // HEADS
    zeros = np.zeros((BATCH, 2, LENGTH, HEADS, head_dim), "float32")
    assert ours.cache_shape(BATCH, LENGTH) == zeros.shape
    caches = {}
    for layer in (hub, ours):
        kwargs = {"self_attention_cache": zeros}
        if cross:
            kwargs["cross_attention_cache"] = np.zeros(
                (BATCH, 2, ENCODER_LENGTH, HEADS, head_dim), "float32"
            )
        outputs = []
        for start, stop in ((0, 4), (4, 5)):
            result = layer(
                x[:, start:stop],
                *encoder,
                self_attention_cache_update_index=start,
                cross_attention_cache_update_index=0 if start == 0 else None,
                **kwargs,
            )
            assert len(result) == (3 if cross else 2)
            outputs.append(to_numpy(result[0]))
            kwargs["self_attention_cache"] = result[1]
            if cross:
                kwargs["cross_attention_cache"] = result[2]
        caches[layer] = [to_numpy(c) for c in result[1:]] + outputs
    for got, want in zip(caches[ours], caches[hub]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    full = to_numpy(ours(*inputs))[:, :5]
    np.testing.assert_allclose(
        np.concatenate(caches[ours][-2:], axis=1), full, atol=1e-5
    )


LLAMA = {
    "normalize_first": True,
    "normalization": "rms_norm",
    "gated_feedforward": True,
    "activation": "silu",
    "use_bias": False,
    "num_key_value_heads": 1,
    "rotary_max_wavelength": 10000,
}


def _llama_block_numpy(layer, x):
    """The LLaMA block in NumPy from the layer's weights: pre-RMS-norm,
    grouped causal attention with rotary, SwiGLU, no biases."""
    weights = {w.path.split("/", 1)[1]: to_numpy(w) for w in layer.weights}
    eps, head_dim = layer.layer_norm_epsilon, WIDTH // HEADS

    def rms(v, scale):
        return v / np.sqrt(np.mean(v * v, -1, keepdims=True) + eps) * scale

    def rotate(v):  # (B, L, heads, D)
        half = head_dim // 2
        inverse = 1.0 / 10000 ** (np.arange(0, head_dim, 2) / head_dim)
        angles = np.arange(v.shape[1])[:, None] * inverse
        angles = np.concatenate([angles, angles], -1)[None, :, None]
        turned = np.concatenate([-v[..., half:], v[..., :half]], -1)
        return v * np.cos(angles) + turned * np.sin(angles)

    h = rms(x, weights["self_attention_layer_norm/scale"])
    q = rotate(
        np.einsum("blw,wnd->blnd", h, weights["self_attention/query/kernel"])
    )
    k = rotate(
        np.einsum("blw,wnd->blnd", h, weights["self_attention/key/kernel"])
    )
    v = np.einsum("blw,wnd->blnd", h, weights["self_attention/value/kernel"])
    logits = np.einsum("btnd,bsd->bnts", q, k[:, :, 0]) / np.sqrt(head_dim)
    logits = np.where(np.tril(np.ones((LENGTH, LENGTH), bool)), logits, -1e30)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bnts,bsd->btnd", probs, v[:, :, 0])
    x = x + np.einsum(
        "btnd,ndw->btw",
        attended,
        weights["self_attention/attention_output/kernel"],
    )
    h = rms(x, weights["feedforward_layer_norm/scale"])
    gate = h @ weights["feedforward_gate_dense/kernel"]
    up = h @ weights["feedforward_intermediate_dense/kernel"]
    hidden = gate / (1 + np.exp(-gate)) * up
    return x + hidden @ weights["feedforward_output_dense/kernel"]


def test_llama_block_against_numpy():
    layer = ksa.TransformerDecoder(16, HEADS, **LLAMA)
    x = _inputs(False, seed=2)[0]
    got = to_numpy(layer(x))
    assert not any("bias" in w.path for w in layer.weights)
    np.testing.assert_allclose(got, _llama_block_numpy(layer, x), atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [LLAMA, {"position_bias": "relative", "sliding_window": 3}],
    ids=["llama", "t5_window"],
)
def test_decoding_equals_full_pass_and_saves(options, tmp_path):
    """Token-by-token decoding with a ring (window) or full cache equals
    the full pass; the layer saves and loads."""
    layer = ksa.TransformerDecoder(16, HEADS, **options)
    x = _inputs(False, seed=3)[0]
    full = to_numpy(layer(x))
    cache = np.zeros(layer.cache_shape(BATCH, LENGTH), "float32")
    outputs = []
    for position in range(LENGTH):
        output, cache = layer(
            x[:, position : position + 1],
            self_attention_cache=cache,
            self_attention_cache_update_index=position,
        )
        outputs.append(to_numpy(output))
    np.testing.assert_allclose(np.concatenate(outputs, 1), full, atol=1e-5)
    inputs = keras.Input((None, WIDTH))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "decoder.keras")
    loaded = keras.saving.load_model(tmp_path / "decoder.keras")
    np.testing.assert_allclose(to_numpy(loaded(x)), full, atol=1e-6)


def test_bad_calls():
    layer = ksa.TransformerDecoder(16, HEADS)
    x = _inputs(False)[0]
    layer(x)
    with pytest.raises(ValueError, match="built without cross-attention"):
        layer(x, x)
    with pytest.raises(ValueError, match="decoder_padding_mask"):
        layer(x, decoder_padding_mask=np.ones((BATCH, 3), bool))
    with pytest.raises(ValueError, match="`normalization` must be one of"):
        ksa.TransformerDecoder(16, HEADS, normalization="batch")
    with pytest.raises(ValueError, match="`decoder_sequence` must have"):
        ksa.TransformerDecoder(16, 4)(np.zeros((1, 2, 3), "float32"))
