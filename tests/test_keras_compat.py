"""Our MultiHeadAttention and GroupedQueryAttention as drop-ins for keras':
keras 3.15's own layers are the oracle (their weights copied into ours),
for outputs, scores, masks, regularizer losses, configs and `.keras` files.

Query rows whose keys are all masked are left out of the comparisons: ours
gives zeros there on purpose, keras does not."""

import re

import keras
import numpy as np
import pytest
from support import (
    keep_one_key_per_row,
    rand,
    to_numpy,
)

import keras_selfattn as ksa

ATOL = 1e-5
MHA, GQA = "MultiHeadAttention", "GroupedQueryAttention"
# keras 3.15 exports its GroupedQueryAttention class as GroupQueryAttention.
KERAS = {
    MHA: keras.layers.MultiHeadAttention,
    GQA: keras.layers.GroupQueryAttention,
}
SMALL = {
    MHA: dict(num_heads=2, key_dim=3),
    GQA: dict(head_dim=3, num_query_heads=2, num_key_value_heads=1),
}
GQA_4_2 = dict(head_dim=3, num_query_heads=4, num_key_value_heads=2)


def copy_weights(ours, theirs):
    """Copy keras' weights, perturbed so that biases are not zeros, into
    ours (built layers)."""
    rng = np.random.default_rng(99)
    weights = theirs.get_weights()
    theirs.set_weights([w + 0.1 * rand(rng, *w.shape) for w in weights])
    shapes = [tuple(w.shape) for w in theirs.weights]
    assert [tuple(w.shape) for w in ours.weights] == shapes
    ours.set_weights(theirs.get_weights())


def build_and_copy(ours, theirs, inputs):
    """Build both for `inputs` (query, value[, key]) and copy weights."""
    shapes = [x.shape for x in inputs]
    theirs.build(*shapes)
    ours.build(*shapes)
    copy_weights(ours, theirs)
    return ours, theirs


def paired(name, inputs, ours_kwargs=None, **kwargs):
    """keras' layer `name` and ours from the same arguments (plus
    `ours_kwargs` for ours only), built for `inputs`, weights copied."""
    theirs = KERAS[name](**kwargs)
    ours = getattr(ksa, name)(**kwargs, **(ours_kwargs or {}))
    return build_and_copy(ours, theirs, inputs)


def assert_close(got, want):
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=ATOL)


def outputs(ours, theirs, *args, **kwargs):
    """Ours and keras' outputs of the same call (keras' first), as NumPy."""
    want = to_numpy(theirs(*args, **kwargs))
    got = to_numpy(ours(*args, **kwargs))
    assert got.shape == want.shape
    return got, want


def assert_same(ours, theirs, *args, **kwargs):
    assert_close(*outputs(ours, theirs, *args, **kwargs))


def assert_matches(ours, theirs, *args, **kwargs):
    """Ours and keras' agree on the output and scores of the same call, and
    ours also without scores; returns keras' scores."""
    want, want_scores = theirs(*args, return_attention_scores=True, **kwargs)
    got, got_scores = ours(*args, return_attention_scores=True, **kwargs)
    assert tuple(got_scores.shape) == tuple(want_scores.shape)
    assert_close(got_scores, want_scores)
    assert_close(got, want)
    assert_close(ours(*args, **kwargs), want)
    return want_scores


def band(length, window):
    """Query i may attend key j iff |i - j| < window."""
    i = np.arange(length)
    return np.abs(i[:, None] - i[None, :]) < window


# --------------------------------------------------------------------------
# MultiHeadAttention arguments keras has


@pytest.mark.parametrize("output_shape", [5, (2, 3)], ids=["int", "tuple"])
def test_mha_output_shape(output_shape):
    rng = np.random.default_rng(1)
    query, value = rand(rng, 2, 5, 7), rand(rng, 2, 3, 4)
    key = rand(rng, 2, 3, 6)
    mask = keep_one_key_per_row(rng.random((2, 5, 3)) > 0.5)
    inputs = (query, value, key)
    ours, theirs = paired(
        MHA, inputs, num_heads=2, key_dim=3, output_shape=output_shape
    )
    got, want = outputs(ours, theirs, *inputs, attention_mask=mask)
    assert want.shape == (2, 5, *np.atleast_1d(output_shape))
    assert_close(got, want)
    symbolic = ours(*(keras.Input(x.shape[1:]) for x in inputs))
    assert tuple(symbolic.shape) == (None, *want.shape[1:])


# attention_axes, value shape, mask shape for the query (2, 3, 5, 4). The
# mask is keras' (B, d1, T, S): batch, the other axis, query and key
# positions; keras inserts the head axis itself.
AXES = [
    ((2,), (2, 3, 7, 6), None),
    ((2,), (2, 3, 7, 6), (2, 3, 5, 7)),
    ((1, 2), (2, 2, 7, 6), None),
    (None, (2, 2, 7, 6), None),
    (-2, (2, 3, 7, 6), None),
    ((-3,), (2, 7, 5, 6), None),
]


@pytest.mark.parametrize(
    "axes, value_shape, mask_shape",
    AXES,
    ids=["2", "2-masked", "1,2", "None", "-2", "-3"],
)
def test_mha_attention_axes_4d(axes, value_shape, mask_shape):
    rng = np.random.default_rng(2)
    query, value = rand(rng, 2, 3, 5, 4), rand(rng, *value_shape)
    mask = None
    if mask_shape:
        mask = keep_one_key_per_row(rng.random(mask_shape) > 0.5)
    ours, theirs = paired(
        MHA, (query, value), num_heads=2, key_dim=3, attention_axes=axes
    )
    assert_matches(ours, theirs, query, value, attention_mask=mask)


@pytest.mark.parametrize("use_bias", [True, False])
def test_mha_use_gate(use_bias):
    rng = np.random.default_rng(4)
    query, value = rand(rng, 2, 5, 7), rand(rng, 2, 3, 4)
    mask = keep_one_key_per_row(rng.random((2, 5, 3)) > 0.5)
    kwargs = dict(num_heads=2, key_dim=2, value_dim=3, use_bias=use_bias)
    ours, theirs = paired(MHA, (query, value), use_gate=True, **kwargs)
    # query, key, gate, value and output projections
    assert len(theirs.weights) == 5 * (1 + use_bias) == len(ours.weights)
    assert_matches(ours, theirs, query, value, attention_mask=mask)


# --------------------------------------------------------------------------
# sliding_window and flash_attention


# Every implementation against the NumPy oracle, with windows over several
# key blocks: tests/test_attention_paths.py.
@pytest.mark.parametrize("masks", ["window", "causal", "padding"])
def test_mha_sliding_window(masks):
    rng = np.random.default_rng(5)
    x = rand(rng, 2, 11, 6)
    allowed = np.broadcast_to(band(11, 3), (2, 11, 11))
    kwargs = {}
    if masks == "causal":
        kwargs["use_causal_mask"] = True
        allowed = allowed & np.tril(np.ones((11, 11), bool))
    if masks == "padding":
        padding = np.ones((2, 11, 11), bool)
        padding[1, :, 7:] = False  # rows 8-10 of batch 1 see no key
        kwargs["attention_mask"] = padding
        allowed = allowed & padding
    window = dict(SMALL[MHA], sliding_window=3)
    ours, theirs = paired(MHA, (x, x), **window)
    got, want = outputs(ours, theirs, x, x, **kwargs)
    rows = allowed.any(-1)
    np.testing.assert_allclose(got[rows], want[rows], atol=ATOL)


@pytest.mark.parametrize("window", [0, -1, 2.5])
@pytest.mark.parametrize("name", [MHA, GQA])
def test_bad_sliding_window(name, window):
    for make in (KERAS[name], getattr(ksa, name)):
        message = re.escape(f"sliding_window={window}")
        with pytest.raises(ValueError, match=message):
            make(**SMALL[name], sliding_window=window)


@pytest.mark.parametrize("name", [MHA, GQA])
def test_flash_attention_arguments(name):
    with pytest.raises(ValueError):
        KERAS[name](**SMALL[name], flash_attention=True, dropout=0.1)
    make = getattr(ksa, name)
    with pytest.raises(ValueError):
        make(**SMALL[name], flash_attention=True, dropout=0.1)
    with pytest.raises(ValueError) as error:
        make(**SMALL[name], flash_attention=True, implementation="einsum")
    assert "flash_attention" in str(error.value)
    assert "einsum" in str(error.value)
    for flash in (None, False, True):
        config = make(**SMALL[name], flash_attention=flash).get_config()
        assert config["flash_attention"] is flash


@pytest.mark.parametrize("name", [MHA, GQA])
def test_flash_attention_false_matches_keras(name):
    rng = np.random.default_rng(6)
    query, value = rand(rng, 2, 5, 6), rand(rng, 2, 7, 6)
    mask = keep_one_key_per_row(rng.random((2, 5, 7)) > 0.5)
    inputs = (query, value)
    ours, theirs = paired(name, inputs, flash_attention=False, **SMALL[name])
    assert_same(ours, theirs, *inputs, attention_mask=mask)
    assert_same(ours, theirs, *inputs)


# --------------------------------------------------------------------------
# Losses and configs


@pytest.mark.parametrize(
    "name, kwargs",
    [
        (MHA, SMALL[MHA]),
        (MHA, dict(SMALL[MHA], use_gate=True)),
        (GQA, GQA_4_2),
    ],
    ids=["mha", "mha_gate", "gqa"],
)
def test_activity_regularizer_losses(name, kwargs):
    # keras regularizes every projection's output; its GQA also (again) its
    # own output.
    rng = np.random.default_rng(7)
    x = rand(rng, 2, 5, 6)
    ours, theirs = paired(name, (x, x), activity_regularizer="l2", **kwargs)
    for _ in range(2):  # the losses are the last call's
        theirs(x, x)
        ours(x, x)
    want = sum(to_numpy(loss) for loss in theirs.losses)
    assert want > 0
    got = sum(to_numpy(loss) for loss in ours.losses)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def every_argument(name):
    """Every keras argument of `name` set to something not its default."""
    common = dict(
        dropout=0.25,
        sliding_window=3,
        use_gate=True,
        kernel_initializer="he_normal",
        bias_initializer="ones",
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_regularizer="l1",
        activity_regularizer="l2",
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint="non_neg",
        seed=7,
    )
    if name == GQA:  # keeps its biases, so the bias options act
        return dict(common, **GQA_4_2)
    heads = dict(num_heads=3, key_dim=2, value_dim=4, use_bias=False)
    return dict(common, **heads, output_shape=(2, 3), attention_axes=(1,))


@pytest.mark.parametrize("name", [MHA, GQA])
@pytest.mark.parametrize("arguments", ["defaults", "every"])
def test_loads_keras_config(name, arguments):
    kwargs = every_argument(name) if arguments == "every" else SMALL[name]
    theirs = KERAS[name](name="attention", **kwargs)
    config = theirs.get_config()
    direct = getattr(ksa, name)(name="attention", **kwargs)
    ours = getattr(ksa, name).from_config(config)
    for layer in (direct, ours):
        mine = layer.get_config()
        assert {key: mine.get(key, "<missing>") for key in config} == config
    rng = np.random.default_rng(8)
    inputs = rand(rng, 2, 5, 6), rand(rng, 2, 7, 6)
    build_and_copy(ours, theirs, inputs)
    assert_same(ours, theirs, *inputs)


def test_mha_old_output_dim_config_loads():
    # as the layer wrote it before `output_shape` (its other keys are
    # keras' or defaults)
    old = {"name": "attention", "num_heads": 2, "key_dim": 3}
    old.update(output_dim=5, num_key_value_heads=None, implementation="auto")
    theirs = keras.layers.MultiHeadAttention(2, 3, output_shape=5)
    ours = ksa.MultiHeadAttention.from_config(old)
    assert ours.get_config()["output_shape"] == (5,)
    assert theirs.get_config()["output_shape"] == (5,)
    rng = np.random.default_rng(9)
    inputs = rand(rng, 2, 5, 7), rand(rng, 2, 3, 4)
    build_and_copy(ours, theirs, inputs)
    got, want = outputs(ours, theirs, *inputs)
    assert got.shape == (2, 5, 5)
    assert_close(got, want)


# --------------------------------------------------------------------------
# Implicit masks


def test_mha_implicit_masks_in_functional_model():
    ids = np.array([[3, 4, 5, 0, 0], [6, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    inputs = keras.Input((None,), dtype="int32")
    normal = keras.initializers.RandomNormal(stddev=1.0)  # not all alike
    embed = keras.layers.Embedding(10, 6, normal, mask_zero=True)
    x = embed(inputs)
    theirs = keras.layers.MultiHeadAttention(2, 3)
    ours = ksa.MultiHeadAttention(2, 3)
    outputs = [theirs(x, x), ours(x, x), ours(x)]
    # Masked average pooling: padded steps count only if the mask is lost.
    pool = keras.layers.GlobalAveragePooling1D()
    model = keras.Model(inputs, outputs + [pool(out) for out in outputs])
    copy_weights(ours, theirs)
    want, got, got_self, *pooled = model.predict(ids, verbose=0)
    valid = ids != 0
    np.testing.assert_allclose(got[valid], want[valid], atol=ATOL)
    np.testing.assert_allclose(got_self[valid], got[valid], atol=ATOL)
    want_pooled = (want * valid[..., None]).sum(1) / valid.sum(1)[:, None]
    for result in pooled:
        np.testing.assert_allclose(result, want_pooled, atol=ATOL)


# --------------------------------------------------------------------------
# GroupedQueryAttention


@pytest.mark.parametrize("use_gate", [False, True])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_gqa_matches_keras(kv_heads, use_gate):
    rng = np.random.default_rng(10)
    query, value = rand(rng, 2, 5, 6), rand(rng, 2, 7, 6)
    key = rand(rng, 2, 7, 4)
    mask = keep_one_key_per_row(rng.random((2, 5, 7)) > 0.5)
    inputs = (query, value, key)
    kwargs = dict(head_dim=3, num_query_heads=4, use_gate=use_gate)
    ours, theirs = paired(GQA, inputs, num_key_value_heads=kv_heads, **kwargs)
    masks = dict(attention_mask=mask, use_causal_mask=True)
    scores = assert_matches(ours, theirs, *inputs, **masks)
    assert tuple(scores.shape) == (2, 4, 5, 7)
    assert_same(ours, theirs, *inputs)  # no mask: keras' fused path


# --------------------------------------------------------------------------
# `.keras` files, here and under the later backends


def saving_model():
    keras.utils.set_random_seed(3)
    query, grid = keras.Input((7, 6)), keras.Input((3, 5, 4))
    gated = dict(use_gate=True, bias_initializer="random_normal")
    windowed = ksa.MultiHeadAttention(
        2, 3, output_shape=(2, 3), sliding_window=3, **gated
    )(query, query, use_causal_mask=True)
    axial = ksa.MultiHeadAttention(2, 3, attention_axes=(2,), **gated)(
        grid, grid
    )
    grouped = ksa.GroupedQueryAttention(3, 4, 2, **gated)(query, query)
    # Positions and caps (tests/test_positions.py checks their values).
    encoder = ksa.TransformerEncoder(
        8,
        3,
        num_key_value_heads=1,
        sliding_window=4,
        logit_soft_cap=2.0,
        rotary_max_wavelength=100,
        position_bias="relative",
        relative_num_buckets=8,
        relative_max_distance=16,
    )(query)
    alibi = ksa.MultiHeadAttention(
        2, 3, position_bias="alibi", logit_soft_cap=3.0
    )(query, use_causal_mask=True)
    model = keras.Model(
        [query, grid], [windowed, axial, grouped, encoder, alibi]
    )
    for variable in model.weights:  # a table that is not all zeros
        if "relative_position_bias" in variable.path:
            variable.assign(rand(np.random.default_rng(4), 8, 3))
    return model


def compat_inputs():
    """The inputs of `saving_model`."""
    rng = np.random.default_rng(11)
    return [rand(rng, 2, 7, 6), rand(rng, 2, 3, 5, 4)]


def test_keras_file_round_trip(tmp_path):
    # Under the other backends: test_saving.test_keras_file_crosses_backends.
    inputs = compat_inputs()
    model = saving_model()
    want = model.predict(inputs, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    for got, expected in zip(loaded.predict(inputs, verbose=0), want):
        np.testing.assert_array_equal(got, expected)
