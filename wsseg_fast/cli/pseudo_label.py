"""``pseudo-label``: the resumable pseudo-labelling job."""

from __future__ import annotations

import argparse
import json
import os
import sys

from wsseg_fast.cli.common import UsageError, add_quiet
from wsseg_fast.cli.settings import add_settings, settings_from_args
from wsseg_fast.pipelines.methods import METHODS
from wsseg_fast.pipelines.pseudo_label import JobConfig
from wsseg_fast.pipelines.pseudo_label import run_pseudo_label as run

JOB_FLAGS = {"options": "--method-option"}


class _ListMethods(argparse.Action):
    """``--list-methods``: print the methods and their options, then exit (nothing else needed)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        for name, m in sorted(METHODS.items()):
            opts = ", ".join(f"{k}={v}" for k, v in m.options.items()) or "no options"
            print(f"{name:16s} {m.help} [{opts}]")
        parser.exit()


def add_pseudo_label(sub) -> None:
    p = sub.add_parser("pseudo-label", help="pseudo-label a COCO dataset from its weak labels with SAM (resumable)")
    add_settings(p, JobConfig, JOB_FLAGS)
    p.add_argument(
        "--prompter", metavar="CKPT", help="--method prompter: the trained prompter (prompter.pt from train-prompter)"
    )
    p.add_argument("--list-methods", action=_ListMethods, help="print the methods and their options, then exit")
    add_quiet(p)
    p.set_defaults(func=run_pseudo_label)


def run_pseudo_label(args) -> int:
    if args.prompter is not None:  # the same setting as --method-option checkpoint=, named
        if args.method != "prompter":
            raise UsageError(f"--prompter goes with --method prompter, not --method {args.method}")
        if any(str(pair).startswith("checkpoint=") for pair in args.options or []):
            raise UsageError("give the prompter once: --prompter CKPT or --method-option checkpoint=CKPT")
        args.options = [*(args.options or []), f"checkpoint={args.prompter}"]
    cfg = settings_from_args(JobConfig, args, JOB_FLAGS)
    if cfg.checkpoint is None and METHODS[cfg.method].needs_sam:
        print(
            f"note: no --checkpoint: SAM {cfg.model} has random weights; the masks only exercise the pipeline",
            file=sys.stderr,
        )
    summary = run(cfg, progress=not args.quiet)
    r = summary["run"]
    print(
        f"{summary['labelled']} images labelled in {cfg.out} ({r['images_labelled']} this run, "
        f"{r['images_skipped_as_done']} already done, {r['images_failed']} failed) in {r['seconds']:.2f} s; "
        f"embeddings: {r['cache_hits']} from the cache, {r['encoded']} encoded"
    )
    for name in r["images_changed"]:
        print(f"  relabelled: {name}: the image changed since it was labelled", file=sys.stderr)
    for failure in summary["failed"]:
        print(f"  failed: {failure['file_name']}: {failure['error']}", file=sys.stderr)
    if summary["report"] is not None:
        with open(os.path.join(cfg.out, "report.md")) as f:
            print(f.read(), end="")
    elif args.quiet:
        print(json.dumps(r))
    return 0 if not summary["failed"] else 3


def register(sub) -> None:
    add_pseudo_label(sub)
