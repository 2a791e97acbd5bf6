"""Recipes that train and serve models built from keras-selfattn layers.

    python recipes/sentiment.py ...     # or, from the repository root,
    python -m recipes.sentiment ...     # the same run
    python recipes/ner.py ...

A recipe file run as a script re-runs itself as a module of this package
(`recipes/_launch.py`), so every module here imports the others as
`recipes.<name>`.

The Keras backend is picked before anything imports `keras`:
`$KERAS_BACKEND` if set; else each recipe's own default, the fastest
measured for it on CPU (`DEFAULT_BACKENDS`; README, "Recipes"), which
the recipe sets with `use_default_backend` before it imports Keras; else
(this package imported by other code) JAX. `BACKEND_NOTE` says which and
why.
"""

import os
import sys

# Each recipe's backend when KERAS_BACKEND is unset: the one that trains
# (generates) fastest here, measured (README).
DEFAULT_BACKENDS = {"sentiment": "torch", "ner": "torch", "generate": "jax"}
FALLBACK_BACKEND = "jax"

_USER_BACKEND = os.environ.get("KERAS_BACKEND")
if _USER_BACKEND:
    BACKEND_NOTE = f"backend: {_USER_BACKEND} (from KERAS_BACKEND)"
else:
    os.environ["KERAS_BACKEND"] = FALLBACK_BACKEND
    BACKEND_NOTE = f"backend: {FALLBACK_BACKEND} (KERAS_BACKEND unset)"


def use_default_backend(recipe):
    """Set `recipe`'s default backend (`DEFAULT_BACKENDS`) unless
    KERAS_BACKEND was set or Keras is already imported (then its backend
    stays); `BACKEND_NOTE` records the choice."""
    global BACKEND_NOTE
    if _USER_BACKEND:
        return
    if "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
        BACKEND_NOTE = f"backend: {backend} (Keras imported before the recipe)"
        return
    backend = DEFAULT_BACKENDS[recipe]
    os.environ["KERAS_BACKEND"] = backend
    BACKEND_NOTE = (
        f"backend: {backend} (KERAS_BACKEND unset; the fastest measured "
        f"on CPU for the {recipe} recipe)"
    )
