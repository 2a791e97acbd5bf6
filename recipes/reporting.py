"""What a run reports: its log (`Tee`), time per phase (`Timer`), the
learning curves and the JSON files it writes."""

import json
import sys
import time

from keras_selfattn.downloads import atomic_write


class Tee:
    """Copy everything written to stdout into a log file as well."""

    def __init__(self, path):
        self._file = open(path, "a", encoding="utf-8")
        self._stdout = sys.stdout

    def write(self, text):
        self._stdout.write(text)
        self._file.write(text)

    def flush(self):
        self._stdout.flush()
        self._file.flush()

    def isatty(self):
        return self._stdout.isatty()

    def __enter__(self):
        sys.stdout = self
        return self

    def __exit__(self, *exc):
        sys.stdout = self._stdout
        self._file.close()


class Timer:
    """Wall time per named phase, in order: `with timer("tokenize"): ...`."""

    def __init__(self):
        self.seconds = {}

    def __call__(self, name):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()
                print(f"\n== {name}", flush=True)

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.start
                timer.seconds[name] = round(elapsed, 1)
                print(f"== {name}: {elapsed:.1f} s", flush=True)

        return _Phase()


def write_json(data, path):
    """`data` as indented JSON with sorted keys, written atomically."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def plot_learning_curves(history, path, metrics):
    """PNG with one panel per metric: train and validation per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5))
    axes = [axes] if len(metrics) == 1 else axes
    for axis, metric in zip(axes, metrics):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                epochs = range(1, len(values) + 1)
                axis.plot(epochs, values, marker="o", label=label)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
