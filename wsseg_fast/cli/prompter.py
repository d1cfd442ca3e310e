"""WPS-SAM prompter command: ``train-prompter`` (inference: ``pseudo-label --method prompter
--prompter PROMPTER.pt``)."""

from __future__ import annotations

from wsseg_fast.cli.common import add_quiet
from wsseg_fast.cli.settings import add_settings, settings_from_args
from wsseg_fast.pipelines.prompter import PrompterConfig, train_prompter

PROMPTER_FLAGS = {
    "num_queries": "--queries",
    "nhead": "--heads",
    "dim_feedforward": "--ffn",
    "num_encoder_layers": "--encoder-layers",
    "num_decoder_layers": "--decoder-layers",
}


def register(sub) -> None:
    p = sub.add_parser("train-prompter", help="train WPS-SAM's query prompter on cached SAM embeddings and weak boxes")
    add_settings(p, PrompterConfig, PROMPTER_FLAGS)
    add_quiet(p)
    p.set_defaults(func=run_train_prompter)


def run_train_prompter(args) -> int:
    path = train_prompter(settings_from_args(PrompterConfig, args, PROMPTER_FLAGS), progress=not args.quiet)
    print(f"prompter: {path} (use: wsseg-fast pseudo-label --method prompter --prompter {path} ...)")
    return 0
