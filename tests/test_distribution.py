"""keras_selfattn.distribution and the recipes' --distribute.

The equivalence checks need several devices: distributed_training.py runs
in its own process on JAX with 4 simulated CPU devices (this process has
set up its backend with one). keras.distribution runs on JAX only, so they
run in the JAX test process; the layout map, the argument checks and the
batching run under every backend.
"""

import doctest
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from distributed_training import MESHES, RELOAD_PREDICTS, build_model
from support import BACKEND, run_script

import keras_selfattn as ksa
from keras_selfattn import distribution
from recipes import batching, distributed, sentiment

SCRIPT = Path(__file__).resolve().parent / "distributed_training.py"
# float32 on CPU: a distributed step sums the same numbers in another
# order (split batches, split heads and feed-forward), nothing more.
ATOL, RTOL = 1e-5, 1e-5
only_jax = pytest.mark.skipif(
    BACKEND != "jax",
    reason="keras.distribution runs on JAX only; the JAX test process "
    "runs these (in a 4-device subprocess)",
)


def mesh(shape=(1, 4)):
    """A mesh of named devices: enough for a layout map on any backend."""
    names = [f"cpu:{i}" for i in range(int(np.prod(shape)))]
    return keras.distribution.DeviceMesh(shape, ["batch", "model"], names)


# ---------------------------------------------------------------- layouts

# The layouts our layers' weights should get, by weight path (written out
# here, not derived from distribution.LAYOUTS): a renamed sublayer or
# weight changes its path, and the tests below fail.
SPLIT = {"kernel": (None, "model"), "bias": ("model",)}  # heads or units
WHOLE = (None,)


def split_projections(prefix, names=("query", "key", "value")):
    """Projections split by heads (EinsumDense) or units (Dense)."""
    return {
        f"{prefix}/{name}/{weight}": axes
        for name in names
        for weight, axes in SPLIT.items()
    }


def attention_layouts(prefix, gate=False):
    """A MultiHeadAttention's (or GroupedQueryAttention's) weights."""
    names = ("query", "key", "value") + (("gate",) if gate else ())
    return {
        **split_projections(prefix, names),
        f"{prefix}/attention_output/kernel": ("model", None, None),
        f"{prefix}/attention_output/bias": WHOLE,
    }


def encoder_layouts(prefix):
    """A TransformerEncoder's weights."""
    return {
        **attention_layouts(f"{prefix}/self_attention"),
        f"{prefix}/feedforward_intermediate_dense/kernel": (None, "model"),
        f"{prefix}/feedforward_intermediate_dense/bias": ("model",),
        f"{prefix}/feedforward_output_dense/kernel": ("model", None),
        f"{prefix}/feedforward_output_dense/bias": WHOLE,
        **{
            f"{prefix}/{norm}_layer_norm/{weight}": WHOLE
            for norm in ("self_attention", "feedforward")
            for weight in ("gamma", "beta")
        },
    }


def decoder_layouts(prefix, cross=False, llama=False):
    """A TransformerDecoder's weights: the encoder's, with cross-attention
    or (LLaMA) a gated feed-forward, RMS norms and no biases."""
    layouts = encoder_layouts(prefix)
    if cross:
        layouts.update(attention_layouts(f"{prefix}/cross_attention"))
        for weight in ("gamma", "beta"):
            layouts[f"{prefix}/cross_attention_layer_norm/{weight}"] = WHOLE
    if not llama:
        return layouts
    layouts[f"{prefix}/feedforward_gate_dense/kernel"] = (None, "model")
    for norm in ("self_attention", "feedforward"):
        layouts[f"{prefix}/{norm}_layer_norm/scale"] = WHOLE
    return {
        path: axes
        for path, axes in layouts.items()
        if not path.endswith(("bias", "gamma", "beta"))
    }


def embedding_layouts(prefix, learned=True):
    """A TokenAndPositionEmbedding's tables, split along the width."""
    tables = ["token_embedding/embeddings"]
    tables += ["position_embeddings"] if learned else []
    return {f"{prefix}/{table}": (None, "model") for table in tables}


# Every weight of build_model()'s layers of ours, and its layout.
EXPECTED_LAYOUTS = {
    **embedding_layouts("embedding"),
    **encoder_layouts("encoder"),
    **attention_layouts("grouped", gate=True),
    **split_projections("single"),
}


def our_layers():
    """`(layer, input shape, {weight path: layout axes})`: each of our
    layers, with every option that adds or renames weights."""
    x, ids = (2, 7, 12), (2, 7)
    relative = {"relative_position_bias/embeddings": (None, None)}
    t5 = {f"t5/{path}": axes for path, axes in relative.items()}
    biasless = {
        path: axes
        for path, axes in attention_layouts("biasless").items()
        if path.endswith("kernel")
    }
    return [
        (ksa.MultiHeadAttention(3, 4, name="mha"), x, attention_layouts("mha")),
        (
            ksa.MultiHeadAttention(3, 4, use_gate=True, name="gated"),
            x,
            attention_layouts("gated", gate=True),
        ),
        (
            ksa.MultiHeadAttention(3, 4, use_bias=False, name="biasless"),
            x,
            biasless,
        ),
        (
            ksa.MultiHeadAttention(3, 4, position_bias="relative", name="t5"),
            x,
            {**attention_layouts("t5"), **t5},
        ),
        (
            ksa.GroupedQueryAttention(4, 4, 2, use_gate=True, name="gqa"),
            x,
            attention_layouts("gqa", gate=True),
        ),
        (
            ksa.TransformerEncoder(11, 3, name="encoder"),
            x,
            encoder_layouts("encoder"),
        ),
        (
            ksa.TransformerDecoder(11, 3, name="decoder"),
            [x, x],
            decoder_layouts("decoder", cross=True),
        ),
        (
            ksa.TransformerDecoder(
                11,
                3,
                normalization="rms_norm",
                gated_feedforward=True,
                use_bias=False,
                name="llama",
            ),
            x,
            decoder_layouts("llama", llama=True),
        ),
        (
            ksa.TokenAndPositionEmbedding(13, 7, 12, name="embedding"),
            ids,
            embedding_layouts("embedding"),
        ),
        (
            ksa.TokenAndPositionEmbedding(
                13, 7, 12, position_encoding="sinusoidal", name="sinusoidal"
            ),
            ids,
            embedding_layouts("sinusoidal", learned=False),
        ),
        (
            ksa.SelfAttention(use_projections=True, units=6, name="single"),
            x,
            split_projections("single"),
        ),
        (ksa.SelfAttention(name="bare"), x, {}),
        (ksa.RelativePositionBias(3), x, relative),
        (ksa.RotaryEmbedding(), x, {}),
        (ksa.AlibiBias(), x, {}),
        (ksa.SinusoidalPositionEncoding(), x, {}),
    ]


def built(layer, shape):
    """`layer` built for `shape`, or for the shapes of a list."""
    layer.build(*shape) if isinstance(shape, list) else layer.build(shape)
    return layer


def layout_axes(layouts, path):
    layout = layouts[path]
    return None if layout is None else tuple(layout.axes)


def test_every_weight_of_our_layers_gets_its_layout():
    layouts = distribution.layout_map(mesh())
    for layer, shape, expected in our_layers():
        weights = built(layer, shape).weights
        actual = {v.path: layout_axes(layouts, v.path) for v in weights}
        assert actual == expected, type(layer).__name__


def test_every_layout_key_matches_a_weight_of_our_layers():
    paths = [
        v.path
        for layer, shape, _ in our_layers()
        for v in built(layer, shape).weights
    ]
    unused = [
        pattern
        for pattern, _ in distribution.LAYOUTS
        if not any(re.fullmatch(pattern, path) for path in paths)
    ]
    assert unused == []


def test_every_layer_of_ours_is_among_those_checked():
    # A model (CausalLM) holds the layers it is given, no weights of its own.
    exported = {
        getattr(ksa, name)
        for name in ksa.__all__
        if isinstance(getattr(ksa, name), type)
        and issubclass(getattr(ksa, name), keras.layers.Layer)
        and not issubclass(getattr(ksa, name), keras.Model)
    }
    assert {type(layer) for layer, _, _ in our_layers()} == exported


def test_layout_map_leaves_no_weight_of_our_layers_unmatched():
    model = build_model()
    layouts = distribution.layout_map(mesh())
    # Only the plain Keras head is left to the default (replicated).
    assert distribution.unmatched_weights(model, layouts) == [
        "classifier/kernel",
        "classifier/bias",
    ]
    ours = {v.path: layouts[v.path].axes for v in model.weights[:-2]}
    assert ours == EXPECTED_LAYOUTS


def test_layout_map_matches_our_layers_nested_and_without_biases():
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(50, 12, name="token_embedding")(ids)
    stack = keras.Sequential(
        [
            keras.Input((None, 12)),
            ksa.TransformerEncoder(8, 2, name="encoder"),
            ksa.MultiHeadAttention(2, 6, use_bias=False, name="attention"),
        ],
        name="stack",
    )
    model = keras.Model(ids, stack(x))
    layouts = distribution.layout_map(mesh())
    assert distribution.unmatched_weights(model, layouts) == []
    axes = {v.path: layouts[v.path].axes for v in model.weights}
    assert axes.pop("token_embedding/embeddings") == (None, "model")
    for path, layout in axes.items():
        ours = path.replace("stack/encoder", "encoder").replace(
            "stack/attention", "grouped"
        )
        assert layout == EXPECTED_LAYOUTS[ours], path


def test_layout_map_names_an_axis_of_the_mesh():
    assert distribution.layout_map(mesh(), model_axis="batch")[
        "a/feedforward_output_dense/kernel"
    ].axes == ("batch", None)
    with pytest.raises(ValueError, match="model_axis='tensor'"):
        distribution.layout_map(mesh(), model_axis="tensor")


def test_layout_map_example():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for test in finder.find(
        distribution.layout_map, "layout_map", globs=vars(distribution)
    ):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_make_distribution_checks_its_arguments():
    cases = [
        ({"kind": "pipeline"}, "kind='pipeline'"),
        ({"kind": "data", "mesh_shape": (2, 2)}, r"mesh_shape=\(2, 2\)"),
        ({"kind": "model", "mesh_shape": 4}, "mesh_shape=4"),
        ({"kind": "model", "mesh_shape": (0, 2)}, "mesh_shape=0"),
        ({"kind": "model", "mesh_shape": (1, 2, 2)}, "mesh_shape="),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            distribution.make_distribution(**kwargs)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX runs keras.distribution")
def test_make_distribution_needs_jax():
    with pytest.raises(RuntimeError, match=f"backend={BACKEND!r}"):
        distribution.make_distribution("data")


@only_jax
def test_make_distribution_counts_the_devices():
    # This process has one device.
    one = distribution.make_distribution("data")
    assert one.device_mesh.shape == (1,)
    assert distribution.batch_shards(one) == 1
    with pytest.raises(ValueError, match="needs 4 devices; this process"):
        distribution.make_distribution("model", mesh_shape=(2, 2))
    with pytest.raises(ValueError, match="devices=0"):
        distribution.make_distribution("data", devices=0)
    with pytest.raises(ValueError, match="holds 2 devices but 1"):
        distribution.make_distribution(
            "model", mesh_shape=(1, 2), devices=["cpu:0"]
        )


def test_no_distribution_splits_batches_in_one():
    assert distribution.batch_shards() == 1
    with pytest.raises(ValueError, match="distribution=None"):
        distribution.describe_mesh()


# ---------------------------------------------------------------- recipes


def test_recipes_take_distribute_and_a_mesh(capsys):
    if BACKEND == "jax":
        args = sentiment.parse_args(["--distribute", "model", "--mesh", "2,2"])
        assert (args.distribute, args.mesh) == ("model", (2, 2))
    else:
        with pytest.raises(SystemExit):
            sentiment.parse_args(["--distribute", "data"])
        assert "JAX backend only" in capsys.readouterr().err
    for argv, message in (
        (["--mesh", "2,2"], "--mesh needs --distribute"),
        (["--distribute", "model", "--mesh", "2,x"], "Received: '2,x'"),
        (["--distribute", "model", "--mesh", "0,4"], "Received: '0,4'"),
        (["--distribute", "tensor"], "invalid choice"),
    ):
        with pytest.raises(SystemExit):
            sentiment.parse_args(argv)
        assert message in capsys.readouterr().err
    args = sentiment.parse_args(["predict", "a text"])  # no mesh to check
    assert args.distribute is None


def test_model_mesh_takes_the_largest_model_axis_that_fits():
    assert distributed.model_mesh(4, [2, 128, 64]) == (2, 2)
    assert distributed.model_mesh(8, [4, 256, 128]) == (2, 4)
    assert distributed.model_mesh(6, [4, 256, 128]) == (3, 2)
    assert distributed.model_mesh(3, [4, 256]) == (3, 1)
    assert distributed.model_mesh(4, []) == (1, 4)


def test_batches_split_evenly_over_devices():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 64, size=203)
    ids = (np.arange(64) < lengths[:, None]).astype("int32")
    ids *= np.arange(1, 204)[:, None]  # row number + 1
    buckets = batching.bucket_lengths(64, smallest=16)
    # The batch size is a multiple of `multiple_of`: the command line checks
    # it against the mesh (distributed.start) and make_batches trusts it.
    for shuffle in (True, False):
        batches = batching.make_batches(
            ids, ids[:, 0], 32, buckets, shuffle, multiple_of=4
        )
        seen = []
        for i in range(len(batches)):
            batch, rows = batches[i]
            assert len(rows) % 4 == 0
            # Rows moved up a bucket keep every token.
            np.testing.assert_array_equal(
                (batch != 0).sum(1), lengths[rows - 1]
            )
            seen.extend(rows)
        assert batches.left_out == 203 % 4
        assert len(seen) == len(set(seen)) == 203 - batches.left_out
    whole = batching.make_batches(ids, ids[:, 0], 32, buckets, True)
    assert whole.left_out == 0


def test_pad_rows_repeats_the_last_row():
    ids = np.arange(10).reshape(5, 2)
    padded = batching.pad_rows({"token_ids": ids, "labels": ids[:, 0]}, 4)
    np.testing.assert_array_equal(padded["token_ids"][5:], [[8, 9]] * 3)
    np.testing.assert_array_equal(padded["labels"], [0, 2, 4, 6, 8, 8, 8, 8])
    assert batching.pad_rows(ids, 1) is ids


# ----------------------------------------------- 4 devices, one process


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """distributed_training.py's report, run once under JAX, 4 devices."""
    import json

    # Each program runs once or twice: compiling is the cost, so LLVM's
    # optimisations are off (the partitioning and the numbers are the same
    # on every run compared).
    flags = os.environ.get("XLA_FLAGS", "") + (
        " --xla_force_host_platform_device_count=4"
        " --xla_backend_optimization_level=0"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XLA_FLAGS", flags)
        patch.setenv("JAX_PLATFORMS", "cpu")
        stdout = run_script(
            SCRIPT, [str(tmp_path_factory.mktemp("dist"))], backend="jax"
        )
    return json.loads(stdout.strip().splitlines()[-1])


@only_jax
def test_the_subprocess_sees_four_devices(report):
    assert report["devices"] == [f"cpu:{i}" for i in range(4)]
    assert report["single"]["devices"] == [1]


@only_jax
@pytest.mark.parametrize("name", list(MESHES))
def test_one_step_matches_one_device(report, name):
    single, run = report["single"], report[name]
    np.testing.assert_allclose(run["loss"], single["loss"], RTOL, ATOL)
    worst = max(run["weight_diffs"].values())
    assert worst <= ATOL, run["weight_diffs"]
    # The step moved the weights far more than the tolerance.
    assert single["max_update"] > 1000 * ATOL


@only_jax
@pytest.mark.parametrize("name", list(MESHES))
def test_weights_sit_where_the_layout_says(report, name):
    placement = report[name]["placement"]
    kind = MESHES[name][0]
    model_size = MESHES[name][1][-1] if kind == "model" else 1
    for path, where in placement.items():
        assert where["devices"] == 4, path
        assert where["device_shape"] == where["expected_shape"], path
        axes = EXPECTED_LAYOUTS.get(path, ()) if kind == "model" else ()
        split = [i for i, axis in enumerate(axes) if axis == "model"]
        expected = list(where["shape"])
        for i in split:
            expected[i] //= model_size
        assert where["device_shape"] == expected, path
        assert [a for a in where["spec"] if a] == ["model"] * len(split), path
    if kind == "model":
        query = placement["encoder/self_attention/query/kernel"]
        assert query["device_shape"] == [16, 4 // model_size, 4]
        assert "(-, model, -)" in report[name]["sharding"]


@only_jax
@pytest.mark.parametrize("name", list(MESHES))
def test_saved_model_loads_on_one_device_and_predicts_the_same(report, name):
    assert report[name]["reloaded_devices"] == [1]
    assert report[name]["reloaded_weights_equal"]
    if name == RELOAD_PREDICTS:
        assert report[name]["reload_diff"] <= ATOL


@only_jax
def test_examples_run_on_four_devices(report):
    assert report["doctests"]["failed"] == 0
    assert report["doctests"]["tried"] > 10
