"""The recipes' `predict` command: its arguments and the texts it reads.
No Keras: the full command line (`recipes/cli.py`) and `predict
--artifact` (`recipes/deploy.py`) both build on it."""

import sys


def add_arguments(parser, run_dir):
    """The arguments of `predict` (`texts`, `--model-dir`, `--artifact`)."""
    parser.add_argument("texts", nargs="*", help="texts (default: stdin lines)")
    parser.add_argument("--model-dir", default=run_dir)
    parser.add_argument(
        "--artifact",
        help="run this exported model (see `export`) in its own runtime "
        "instead of the Keras model; its folder holds the run's files "
        "(tokenizer.json, metrics.json; NER: labels.json, decoding.json)",
    )


def input_texts(texts):
    """`texts` if any were given, else the non-empty lines of stdin."""
    texts = texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise SystemExit("No texts given (arguments or stdin lines).")
    return texts
