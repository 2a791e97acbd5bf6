"""Every docstring example in the library and the recipes runs, under
every backend."""

import doctest
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import keras_selfattn
import recipes


def modules_with_examples(package):
    """Names of the modules of `package` whose source holds a `>>>`
    example (the package itself counts too)."""
    prefix = package.__name__ + "."
    names = [package.__name__] + [
        info.name for info in pkgutil.walk_packages(package.__path__, prefix)
    ]
    return sorted(name for name in names if ">>>" in _source(name))


def _source(name):
    path = importlib.util.find_spec(name).origin
    return Path(path).read_text(encoding="utf-8")


MODULES = modules_with_examples(keras_selfattn) + modules_with_examples(recipes)
# Its examples build a model on a device mesh: they run in
# tests/test_distribution.py, in a JAX process with 4 simulated devices.
ON_A_MESH = {"keras_selfattn.distribution"}


def test_the_modules_with_examples_are_found():
    assert {
        "keras_selfattn",
        "keras_selfattn.downloads",
        "keras_selfattn.text",
        "recipes.cli",
        "recipes.crf",
        "recipes.data",
        "recipes.distributed",
        "recipes.splitting",
        "recipes.tagger_inputs",
        "recipes.tagging",
    } <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name):
    if name in ON_A_MESH:
        pytest.skip("runs on a simulated device mesh in test_distribution")
    module = importlib.import_module(name)
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for test in finder.find(module, name):
        runner.run(test)
    assert runner.tries > 0, f"no examples found in {name}"
    assert runner.failures == 0, f"{runner.failures} examples failed in {name}"
