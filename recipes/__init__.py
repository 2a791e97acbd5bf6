"""Recipes that train and serve models built from keras-selfattn layers.

    python recipes/sentiment.py ...     # or, from the repository root,
    python -m recipes.sentiment ...     # the same run
    python recipes/ner.py ...

A recipe file run as a script re-runs itself as a module of this package
(`recipes/_launch.py`), so every module here imports the others as
`recipes.<name>`.

Importing this package picks the Keras backend before anything imports
`keras`: `$KERAS_BACKEND` if set, else JAX, the fastest measured for the
recipes on CPU (README, "Benchmarks"). `BACKEND_NOTE` says which and why.
"""

import os

DEFAULT_BACKEND = "jax"

if os.environ.get("KERAS_BACKEND"):
    BACKEND_NOTE = (
        f"backend: {os.environ['KERAS_BACKEND']} (from KERAS_BACKEND)"
    )
else:
    os.environ["KERAS_BACKEND"] = DEFAULT_BACKEND
    BACKEND_NOTE = (
        f"backend: {DEFAULT_BACKEND} (KERAS_BACKEND unset; the fastest "
        "measured on CPU for this recipe)"
    )
