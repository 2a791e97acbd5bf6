"""From the NER tagger's per-token scores to tags and entities: prediction
in length buckets, decoding each sentence (Viterbi over valid IOB2 moves,
or argmax), entity scores of a split, tagging raw text with character
offsets, and the lines `predict` prints.

The model is a `Tagger`: a function from a batch of inputs to outputs,
with what decoding needs to know of it. The Keras model is one
(`keras_tagging.keras_tagger`), an exported artifact in its runtime another
(`served_tagger`, for `predict --artifact`). Pure Python and NumPy (and
the tokenizer): no Keras.
"""

import collections

import numpy as np

from keras_selfattn import text
from recipes import tagger_inputs, tagging, word_vectors

Tagger = collections.namedtuple(
    "Tagger", ["predict", "probabilities", "chain", "buckets"]
)
Tagger.__doc__ = """A tagger model as decoding runs it: `predict` maps a
batch (a dict of arrays, see `tagger_inputs.model_inputs`) to per-token
outputs `(rows, length, tags)`, softmax probabilities if `probabilities`,
else a CRF's emissions; `chain` is `(transitions, start)` for Viterbi
(see `tagging.viterbi_decode`); rows run padded to the length `buckets`
(see `predict_outputs`)."""

# What `export` writes beside an NER artifact: the data of `served_tagger`.
DECODER_FILE = "decoding.json"
# A CRF's learned scores in it, as `crf.LinearChainCRF.scores` orders them.
CHAIN = ("transitions", "start")


def decoder_settings(buckets, learned=None):
    """The data of `DECODER_FILE`: the length `buckets`, and `learned`, a
    CRF's `(transitions, start)` scores (None: a softmax tagger)."""
    crf = None
    if learned is not None:
        crf = dict(zip(CHAIN, (np.asarray(s).tolist() for s in learned)))
    return {"buckets": [int(size) for size in buckets], "crf": crf}


def served_tagger(predict, tag_names, settings):
    """The `Tagger` of an exported model that `predict` runs, from its
    `decoder_settings`: Viterbi over the CRF's learned scores with the
    moves IOB2 forbids at `-inf` (as `crf.LinearChainCRF` decodes them),
    or over those constraints alone for a softmax tagger."""
    crf = settings["crf"]
    if crf is None:
        chain = tagging.constraint_scores(tag_names)
    else:
        transitions, start = (np.asarray(crf[k], np.float32) for k in CHAIN)
        chain = tagging.forbid_moves(
            transitions, start, *tagging.allowed_transitions(tag_names)
        )
    return Tagger(predict, crf is None, chain, tuple(settings["buckets"]))


def predict_scores(tagger, inputs, batch_size):
    """Per-token tag scores `(n, L, tags)` in log space (CRF emissions, or
    log-probabilities) for the rows of `inputs` (see `predict_outputs`)."""
    outputs = predict_outputs(
        tagger.predict, inputs, batch_size, tagger.buckets
    )
    if tagger.probabilities:
        outputs = np.log(np.maximum(outputs, 1e-12))
    return outputs


def predict_outputs(predict, inputs, batch_size, buckets):
    """The outputs `(n, L, tags)` of `predict` (a batch -> its outputs) for
    the rows of `inputs`, run in length-sorted batches padded to buckets
    (zeros beyond each bucket)."""
    ids = inputs["token_ids"]
    lengths = (ids != 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        bucket = int(np.searchsorted(buckets, lengths[rows].max()))
        width = buckets[min(bucket, len(buckets) - 1)]
        outputs = predict({name: a[rows, :width] for name, a in inputs.items()})
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
    `Tagger`) or, if `chain` is None, by argmax. Words truncated away are
    tagged "O".
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


def tag_prepared(tagger, prepared, tag_names, batch_size):
    """Predicted tags (Viterbi) of every sentence of a prepared split."""
    scores = predict_scores(tagger, prepared.inputs, batch_size)
    return decode_prepared(scores, prepared, tag_names, tagger.chain)


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


def evaluate(tagger, prepared, tag_names, batch_size):
    """Entity scores of one split, with Viterbi and with argmax decoding."""
    true = [tags for _, tags in prepared.sentences]
    scores = predict_scores(tagger, prepared.inputs, batch_size)
    chains = {"viterbi": tagger.chain, "argmax": None}
    return {
        decoding: tagging.entity_scores(
            true, decode_prepared(scores, prepared, tag_names, chain)
        )
        for decoding, chain in chains.items()
    }


def tag_texts(tagger, tokenizer, tag_names, max_length, texts, word_index):
    """Entities of raw texts: per text, a list of `(type, start, end)`
    character offsets (end exclusive), from the tokenizer's word spans.
    Each text is one row (its own context) of at most `max_length`
    tokens; `word_index` as `tagger_inputs.model_inputs` takes it."""
    encoding = text.encode_text_words(tokenizer, texts, max_length=max_length)
    rows = [
        [t[a:b] for a, b in spans]
        for t, spans in zip(texts, encoding.word_spans)
    ]
    inputs = tagger_inputs.model_inputs(encoding, rows, word_index)
    tags = decode_tags(
        predict_scores(tagger, inputs, 64),
        encoding.word_ids,
        [[i] for i in range(len(rows))],
        [len(words) for words in rows],
        tag_names,
        tagger.chain,
    )
    return [
        [
            (kind, spans[start][0], spans[end - 1][1])
            for kind, start, end in tagging.entity_spans(sentence_tags)
        ]
        for sentence_tags, spans in zip(tags, encoding.word_spans)
    ]


def entity_lines(texts, entities):
    """What `predict` prints: each text, then a line
    `<TAB>type<TAB>start<TAB>end<TAB>surface` an entity of it (character
    offsets, end exclusive; `entities` as `tag_texts` gives them)."""
    lines = []
    for raw, found in zip(texts, entities):
        lines.append(raw)
        lines += [
            f"\t{kind}\t{start}\t{end}\t{raw[start:end]}"
            for kind, start, end in found
        ]
    return lines


def label_entities(run, texts):
    """`predict --artifact`'s lines (`entity_lines`) from `run` (a
    `deploy.ServedRun`), decoded as the Keras model's are, from the
    artifact's outputs, labels.json and `DECODER_FILE`."""
    tag_names = run.read_json("labels.json")
    tagger = served_tagger(run.run, tag_names, run.read_json(DECODER_FILE))
    entities = tag_texts(
        tagger,
        run.tokenizer,
        tag_names,
        run.settings.max_length,
        texts,
        word_vectors.read_index(run.folder),
    )
    return entity_lines(texts, entities)
