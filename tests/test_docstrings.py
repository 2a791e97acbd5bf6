"""Every docstring example in the library runs, under every backend."""

import doctest
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import keras_selfattn


def modules_with_examples():
    """Names of the library's modules whose source holds a `>>>` example."""
    names = []
    prefix = "keras_selfattn."
    for info in pkgutil.walk_packages(keras_selfattn.__path__, prefix):
        path = importlib.util.find_spec(info.name).origin
        if ">>>" in Path(path).read_text(encoding="utf-8"):
            names.append(info.name)
    return ["keras_selfattn", *sorted(names)]


MODULES = modules_with_examples()
# Its examples build a model on a device mesh: they run in
# tests/test_distribution.py, in a JAX process with 4 simulated devices.
ON_A_MESH = {"keras_selfattn.distribution"}


def test_the_modules_with_examples_are_found():
    assert {"keras_selfattn.downloads", "keras_selfattn.text"} <= set(MODULES)


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
