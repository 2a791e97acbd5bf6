"""The Keras side of NER decoding (`recipes/decoding.py` needs no Keras):
the model as a `decoding.Tagger`, the validation-F1 callback, the decoder
file `export` writes beside an artifact, and `predict`'s lines from a
saved run."""

import json
from pathlib import Path

import keras

from keras_selfattn import distribution
from recipes import (
    batching,
    crf,
    decoding,
    tagging,
    training,
    word_vectors,
)


def length_buckets(max_length):
    """The row lengths batches are padded to (`batching.bucket_lengths`)."""
    return batching.bucket_lengths(max_length, smallest=16)


def keras_tagger(model, tag_names, buckets):
    """The Keras `model` as `decoding` runs it (a `decoding.Tagger`), its
    batches padded to split evenly over the devices (`--distribute`);
    Viterbi reads the CRF's learned scores, or only the IOB2 constraints
    for a softmax tagger."""

    def predict(batch):
        rows = len(batch["token_ids"])
        batch = batching.pad_rows(batch, distribution.batch_shards())
        outputs = model.predict_on_batch(batch)
        return keras.ops.convert_to_numpy(outputs)[:rows]

    layer = crf.find_crf(model)
    if layer is None:
        chain = tagging.constraint_scores(tag_names)
    else:
        chain = layer.transition_scores()
    return decoding.Tagger(predict, layer is None, chain, buckets)


class EntityF1(keras.callbacks.Callback):
    """Adds `val_f1` (entity micro-F1 on the validation split, Viterbi
    decoding) to the logs at the end of every epoch."""

    def __init__(self, prepared, tag_names, batch_size, buckets):
        super().__init__()
        self.prepared, self.tag_names = prepared, tag_names
        self.batch_size, self.buckets = batch_size, buckets

    def on_epoch_end(self, epoch, logs=None):
        predicted = decoding.tag_prepared(
            keras_tagger(self.model, self.tag_names, self.buckets),
            self.prepared,
            self.tag_names,
            self.batch_size,
        )
        scores = tagging.entity_scores(
            [tags for _, tags in self.prepared.sentences], predicted
        )
        logs["val_f1"] = scores["f1"]
        print(f"epoch {epoch + 1}: validation entity F1 {scores['f1']:.4f}")


def decoder_files(model, settings):
    """`{decoding.DECODER_FILE: data}`: the length buckets, and the CRF's
    learned transition and start scores (none for a softmax tagger)."""
    layer = crf.find_crf(model)
    learned = None
    if layer is not None:
        learned = [keras.ops.convert_to_numpy(s) for s in layer.scores()]
    buckets = length_buckets(settings.max_length)
    return {decoding.DECODER_FILE: decoding.decoder_settings(buckets, learned)}


def label_texts(model_dir, texts):
    """`predict`'s lines (`decoding.entity_lines`) for `texts`, tagged by
    the Keras model of the run in `model_dir`."""
    model, tokenizer, _, settings = training.load_run(model_dir)
    tag_names = json.loads((Path(model_dir) / "labels.json").read_text())
    buckets = length_buckets(settings.max_length)
    tagger = keras_tagger(model, tag_names, buckets)
    entities = decoding.tag_texts(
        tagger,
        tokenizer,
        tag_names,
        settings.max_length,
        texts,
        word_vectors.read_index(model_dir),
    )
    return decoding.entity_lines(texts, entities)
