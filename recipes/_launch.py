"""Run a recipe file as a module of the `recipes` package.

`python recipes/sentiment.py` runs the file as a script: Python puts the
folder recipes/ on the module path, not the folder above it, so the
package `recipes` cannot be imported. The recipe then calls
`run_as_module(__file__)`: it registers this folder as the package
`recipes` and runs the file again as `recipes.sentiment`, as
`python -m recipes.sentiment` does from the repository root. A script
elsewhere that uses the recipes (benchmarks/) runs this file and calls
`register()`.
"""

import importlib.util
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def register():
    """Make this folder importable as the package `recipes`."""
    spec = importlib.util.spec_from_file_location(
        "recipes", HERE / "__init__.py", submodule_search_locations=[str(HERE)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["recipes"] = package
    spec.loader.exec_module(package)


def run_as_module(path):
    """Run the recipe file `path` as `recipes.<its name>`, then exit (the
    file's own run as a script stops here)."""
    register()
    runpy.run_module(
        f"recipes.{Path(path).stem}", run_name="__main__", alter_sys=True
    )
    raise SystemExit(0)
