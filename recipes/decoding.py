"""From the NER tagger's per-token scores to tags and entities: prediction
in length buckets, decoding each sentence (Viterbi over valid IOB2 moves,
or argmax), entity scores of a split, the validation-F1 callback, and
tagging raw text with character offsets."""

import keras
import numpy as np

from keras_selfattn import distribution, text
from recipes import batching, crf, tagger_inputs, tagging


def chain_scores(model, tag_names):
    """`(transitions, start)` for Viterbi: the CRF's learned scores, or
    only the IOB2 constraints for a softmax tagger."""
    layer = crf.find_crf(model)
    if layer is None:
        return tagging.constraint_scores(tag_names)
    return layer.transition_scores()


def predict_scores(model, inputs, batch_size, buckets):
    """Per-token tag scores `(n, L, tags)` in log space (CRF emissions, or
    log-probabilities) for the rows of `inputs`, run in length-sorted
    batches padded to buckets (zeros beyond each bucket)."""
    outputs = predict_outputs(model, inputs, batch_size, buckets)
    if crf.find_crf(model) is None:
        outputs = np.log(np.maximum(outputs, 1e-12))
    return outputs


def predict_outputs(model, inputs, batch_size, buckets):
    """The model's outputs `(n, L, tags)` for the rows of `inputs`, run in
    length-sorted batches padded to buckets (zeros beyond each bucket)."""
    ids = inputs["token_ids"]
    lengths = (ids != 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        bucket = int(np.searchsorted(buckets, lengths[rows].max()))
        width = buckets[min(bucket, len(buckets) - 1)]
        batch = {name: a[rows, :width] for name, a in inputs.items()}
        # Under --distribute a batch must split evenly over the devices.
        batch = batching.pad_rows(batch, distribution.batch_shards())
        outputs = keras.ops.convert_to_numpy(model.predict_on_batch(batch))
        outputs = outputs[: len(rows)]
        if out is None:
            out = np.zeros((*ids.shape, outputs.shape[-1]), np.float32)
        out[rows, :width] = outputs
    return out


def decode_tags(
    scores, word_ids, chunks, sentence_lengths, tag_names, chain=None
):
    """Per-sentence tag names from the rows' per-token tag scores.

    Each word reads its first sub-token; each sentence of a row is decoded
    on its own, by Viterbi with `chain = (transitions, start)` (see
    `chain_scores`) or, if `chain` is None, by argmax. Words truncated away
    are tagged "O".
    """
    outside = tag_names.index("O")
    positions = tagger_inputs.word_positions(word_ids, chunks, sentence_lengths)
    tags = [None] * len(sentence_lengths)
    for row, where, chunk in zip(scores, positions, chunks):
        word_scores = np.full((len(where), len(tag_names)), -1e9)
        word_scores[where < 0, outside] = 0.0
        word_scores[where >= 0] = row[where[where >= 0]]
        start = 0
        for i in chunk:
            part = word_scores[start : start + sentence_lengths[i]]
            start += sentence_lengths[i]
            if chain is None:
                best = part.argmax(axis=-1)
            else:
                best = tagging.viterbi_decode(part, *chain)
            tags[i] = [tag_names[j] for j in best]
    return tags


def tag_prepared(model, prepared, tag_names, batch_size, buckets):
    """Predicted tags (Viterbi) of every sentence of a prepared split."""
    scores = predict_scores(model, prepared.inputs, batch_size, buckets)
    return decode_prepared(
        scores, prepared, tag_names, chain_scores(model, tag_names)
    )


def decode_prepared(scores, prepared, tag_names, chain):
    """`decode_tags` for the rows of a prepared split."""
    return decode_tags(
        scores,
        prepared.word_ids,
        prepared.chunks,
        [len(words) for words, _ in prepared.sentences],
        tag_names,
        chain,
    )


class EntityF1(keras.callbacks.Callback):
    """Adds `val_f1` (entity micro-F1 on the validation split, Viterbi
    decoding) to the logs at the end of every epoch."""

    def __init__(self, prepared, tag_names, batch_size, buckets):
        super().__init__()
        self.prepared, self.tag_names = prepared, tag_names
        self.batch_size, self.buckets = batch_size, buckets

    def on_epoch_end(self, epoch, logs=None):
        predicted = tag_prepared(
            self.model,
            self.prepared,
            self.tag_names,
            self.batch_size,
            self.buckets,
        )
        scores = tagging.entity_scores(
            [tags for _, tags in self.prepared.sentences], predicted
        )
        logs["val_f1"] = scores["f1"]
        print(f"epoch {epoch + 1}: validation entity F1 {scores['f1']:.4f}")


def evaluate(model, prepared, tag_names, batch_size, buckets):
    """Entity scores of one split, with Viterbi and with argmax decoding."""
    true = [tags for _, tags in prepared.sentences]
    scores = predict_scores(model, prepared.inputs, batch_size, buckets)
    chains = {"viterbi": chain_scores(model, tag_names), "argmax": None}
    return {
        decoding: tagging.entity_scores(
            true, decode_prepared(scores, prepared, tag_names, chain)
        )
        for decoding, chain in chains.items()
    }


def tag_texts(model, tokenizer, tag_names, settings, texts):
    """Entities of raw texts: per text, a list of `(type, start, end)`
    character offsets (end exclusive), from the tokenizer's word spans.
    Each text is one row (its own context)."""
    encoding = text.encode_text_words(
        tokenizer, texts, max_length=settings.max_length
    )
    rows = [
        [t[a:b] for a, b in spans]
        for t, spans in zip(texts, encoding.word_spans)
    ]
    inputs = tagger_inputs.model_inputs(encoding, rows)
    buckets = batching.bucket_lengths(settings.max_length, smallest=16)
    tags = decode_tags(
        predict_scores(model, inputs, 64, buckets),
        encoding.word_ids,
        [[i] for i in range(len(rows))],
        [len(words) for words in rows],
        tag_names,
        chain_scores(model, tag_names),
    )
    return [
        [
            (kind, spans[start][0], spans[end - 1][1])
            for kind, start, end in tagging.entity_spans(sentence_tags)
        ]
        for sentence_tags, spans in zip(tags, encoding.word_spans)
    ]
