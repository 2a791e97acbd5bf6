"""Batches padded to length buckets, for training and for prediction.

Rows are grouped by the smallest bucket that holds them, so XLA compiles
one program per bucket (and batch size) instead of one per batch, and
short texts cost little. Under `--distribute` every batch splits evenly
over the mesh's batch axis.
"""

import keras
import numpy as np

from keras_selfattn import distribution


def bucket_lengths(max_length, smallest=32):
    """Powers of two from `smallest` up to, and ending at, `max_length`."""
    buckets = []
    size = smallest
    while size < max_length:
        buckets.append(size)
        size *= 2
    return tuple(buckets) + (max_length,)


def _take(array, rows, width):
    """Rows of `array`, cut to `width` along the length axis (axis 1) when
    it has one."""
    return array[rows, :width] if array.ndim >= 2 else array[rows]


def _take_all(arrays, rows, width):
    if isinstance(arrays, dict):
        return {name: _take(a, rows, width) for name, a in arrays.items()}
    return _take(arrays, rows, width)


def make_batches(
    inputs,
    targets,
    batch_size,
    buckets,
    shuffle,
    seed=0,
    transform=None,
    multiple_of=1,
):
    """A `keras.utils.PyDataset` of `(inputs, targets)` batches, each padded
    only to the smallest bucket that holds its longest row.

    `inputs` is an int array of token ids `(n, L)` (0 = padding), or a dict
    of arrays with the ids under `"token_ids"`; every array with a second
    axis (inputs and targets) is cut along it to the batch's bucket.
    `transform(batch_inputs, rng)`, if given, rewrites each batch's inputs
    (data augmentation); it must keep their shapes.

    `multiple_of` > 1 makes every batch size a multiple of it (a batch
    split over that many devices; `batch_size` must be one, as
    `distributed.start` checks): the rows a bucket cannot fill a multiple
    with move up to the next, wider bucket, and the last fewer than
    `multiple_of` rows are left out (other rows each epoch when
    shuffled); `.left_out` counts them.
    """
    ids = inputs["token_ids"] if isinstance(inputs, dict) else inputs
    lengths = (ids != 0).sum(axis=1)
    bucket_of = np.searchsorted(np.asarray(buckets), lengths)

    class BucketedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.batches = self._plan()

        def _plan(self):
            batches, self.left_out = _plan_batches(
                bucket_of,
                len(buckets),
                batch_size,
                multiple_of,
                self.rng if shuffle else None,
            )
            return batches

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, index):
            bucket, rows = self.batches[index]
            batch = _take_all(inputs, rows, buckets[bucket])
            if transform is not None:
                batch = transform(batch, self.rng)
            return batch, _take_all(targets, rows, buckets[bucket])

        def on_epoch_end(self):
            if shuffle:
                self.batches = self._plan()

    return BucketedBatches()


def _plan_batches(bucket_of, num_buckets, batch_size, multiple_of, rng):
    """One epoch's batches, `(bucket, rows)` pairs, and how many rows are
    left out (see `make_batches`); shuffled by `rng`, or in order if it is
    None."""
    batches = []
    carried = np.zeros(0, int)  # shorter rows fit any wider bucket
    for bucket in range(num_buckets):
        rows = np.flatnonzero(bucket_of == bucket)
        if rng is not None:
            rows = rng.permutation(rows)
        rows = np.concatenate([carried, rows])
        kept = len(rows) - len(rows) % multiple_of
        rows, carried = rows[:kept], rows[kept:]
        for start in range(0, len(rows), batch_size):
            batches.append((bucket, rows[start : start + batch_size]))
    if rng is not None:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return _two_widths_first(batches), len(carried)


def _two_widths_first(batches):
    """Move a batch of another bucket to position 1, if there is one.

    Keras' TensorFlow adapter fixes the input signature from the first two
    batches; two different widths there make the length axis dynamic.
    """
    for i, (bucket, _) in enumerate(batches[1:], start=1):
        if bucket != batches[0][0]:
            batches[1], batches[i] = batches[i], batches[1]
            break
    return batches


def pad_rows(inputs, multiple):
    """`inputs` (an array or a dict of arrays, rows first) padded to a
    multiple of `multiple` rows by repeating the last row."""

    def pad(array):
        extra = -len(array) % multiple
        if not extra:
            return array
        return np.concatenate([array, np.repeat(array[-1:], extra, axis=0)])

    if isinstance(inputs, dict):
        return {name: pad(array) for name, array in inputs.items()}
    return pad(inputs)


def predict_rows(model, inputs, batch_size=32):
    """`model.predict(inputs)` in batches that split evenly over the
    current distribution's batch axis (padded rows are dropped again)."""
    shards = distribution.batch_shards()
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    rows = len(first)
    batch_size = -(-batch_size // shards) * shards
    padded = pad_rows(inputs, shards)
    return model.predict(padded, batch_size=batch_size, verbose=0)[:rows]
