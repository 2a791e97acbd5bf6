"""The recipes' command line: the options both take, the defaults that
depend on the mode (`--smoke`, `--init`), and the three commands (train,
`predict`, `export`)."""

import argparse
from pathlib import Path

from recipes import (
    distributed,
    exporting,
    precision,
    predict_command,
    reporting,
)

# `--lora`'s learning rate unless one is given: adapters need a larger one
# than full fine-tuning (README, NER).
LORA_LEARNING_RATE = 2e-3


class ModeDefaults:
    """Defaults that depend on the mode. `plain` holds every such setting
    (training from scratch); `smoke` and `init` override some of them
    under `--smoke` and under `--init` (fine-tuning `default_init` unless
    told otherwise), `--smoke`'s first. An option given on the command
    line wins over all of them; a setting with no option is set as well.
    """

    def __init__(self, plain, smoke, init, default_init=None):
        self.plain, self.smoke, self.init = plain, smoke, init
        self.default_init = default_init

    def note(self, name):
        """The help text's default of option `name`: what a plain run
        takes, then the other `--init` mode's value where it differs.

        >>> modes = ModeDefaults({"epochs": 12, "dropout": 0.1}, {},
        ...                      {"epochs": 2})
        >>> modes.note("epochs"), modes.note("dropout")
        ('default 12 (--init: 2)', 'default 0.1')
        """
        fine_tuning = {**self.plain, **self.init}
        if self.default_init:
            plain, other, flag = fine_tuning, self.plain, "--init none"
        else:
            plain, other, flag = self.plain, fine_tuning, "--init"
        parts = [f"default {plain[name]}"] if name in plain else []
        if name in other and other[name] != plain.get(name):
            parts.append(f"({flag}: {other[name]})")
        return " ".join(parts)

    def apply(self, args):
        """Set every setting of `args` left unset (None) from the layers."""
        layers = [self.smoke] if args.smoke else []
        if args.init:
            layers.append(self.init)
        for values in layers + [self.plain]:
            for name, value in values.items():
                if getattr(args, name, None) is None:
                    setattr(args, name, value)


def recipe_parser(description, run_dir, predict_help, modes, model_size):
    """The options both recipes take, a `predict` subcommand (`texts`,
    `--model-dir`, `--artifact`) and an `export` one (`--model-dir`,
    `--format`). `modes` (a `ModeDefaults`) gives the
    defaults of `--init`, `--epochs`, `--batch-size`, `--max-length` and
    `--learning-rate`; `model_size` those of the from-scratch model's
    `--embedding-dim`, `--num-layers`, `--num-heads` and
    `--intermediate-dim`. Returns `(parser, predict_parser)` to add to."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    pred = sub.add_parser("predict", help=predict_help)
    predict_command.add_arguments(pred, run_dir)
    export = sub.add_parser(
        "export",
        help="write the trained model as an artifact for a serving runtime "
        "(see `predict --artifact`)",
    )
    exporting.add_arguments(export, run_dir)
    parser.add_argument("--output-dir", default=run_dir)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="whole path on a tiny slice, in a minute or two",
    )
    add_training_options(parser, modes, model_size)
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard logs to <output-dir>/tensorboard",
    )
    distributed.add_arguments(parser)
    return parser, pred


def add_training_options(parser, modes, model_size):
    """`--init`, `--lora`, the training settings whose defaults depend on
    the mode (`modes`) and the from-scratch model's sizes (`model_size`).
    """
    parser.add_argument(
        "--init",
        metavar="CHECKPOINT",
        default=modes.default_init,
        help="fine-tune a pretrained BERT-family encoder: all-MiniLM-L6-v2 "
        "or a checkpoint directory (config.json, model.safetensors, "
        "tokenizer.json); its tokenizer replaces the trained one and the "
        "width/layer options do not apply. 'none' trains from scratch. "
        f"Default: {modes.default_init or 'none'}",
    )
    parser.add_argument(
        "--lora",
        type=positive_int,
        metavar="RANK",
        help="with --init: freeze the pretrained encoder and train LoRA "
        "adapters of this rank on its query and value projections (and "
        "the task head in full); --learning-rate then defaults to "
        f"{LORA_LEARNING_RATE}",
    )
    note = modes.note
    for name in ("epochs", "batch_size", "max_length"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=positive_int, help=note(name)
        )
    parser.add_argument(
        "--learning-rate", type=float, help=note("learning_rate")
    )
    parser.add_argument(
        "--precision",
        choices=precision.CHOICES,
        default="auto",
        help="compute dtype: bfloat16 (mixed, variables float32) or "
        "float32; auto takes bfloat16 only where the CPU multiplies in it "
        "natively and the backend uses it (see recipes/precision.py). "
        "Default auto; metrics.json records the choice",
    )
    for name, default in model_size.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=default,
            help=f"from-scratch model size; default {default}",
        )


def positive_int(text):
    """An option's positive integer.

    >>> positive_int("8")
    8
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer. Received: {text!r}"
        )
    return value


def parse_args(parser, argv, modes):
    """Parse `argv`; `--init none` becomes None and the settings left
    unset take their mode's defaults (`modes`)."""
    args = parser.parse_args(argv)
    if args.init and args.init.lower() == "none":
        args.init = None
    if args.lora and args.learning_rate is None:
        args.learning_rate = LORA_LEARNING_RATE
    if args.lora and getattr(args, "new_layers_learning_rate", 0) is None:
        # LoRA runs were measured with one rate for every layer (README).
        args.new_layers_learning_rate = args.learning_rate
    modes.apply(args)
    if args.command is None:  # training
        distributed.check_args(parser, args)
        if args.lora and not args.init:
            parser.error(
                "--lora adapts a pretrained encoder: it needs --init "
                "CHECKPOINT (training from scratch, --init none, has no "
                "frozen weights to adapt)"
            )
    return args


def run(args, train, predict, export):
    """The `predict` or `export` subcommand, or a training run whose
    output is also written to `<output_dir>/train.log`."""
    if args.command in ("predict", "export"):
        {"predict": predict, "export": export}[args.command](args)
        return
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with reporting.Tee(out / "train.log"):
        train(args)
