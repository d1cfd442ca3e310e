"""``experiment demo`` and ``experiment demo-tags``: the stages on the built-in demo, one comparison table."""

from __future__ import annotations

import json

from wsseg_fast.cli.common import add_quiet
from wsseg_fast.cli.settings import add_settings, settings_from_args
from wsseg_fast.pipelines.experiments import (
    DemoExperimentConfig,
    TagsExperimentConfig,
    run_demo_experiment,
    run_tags_experiment,
)

EXPERIMENTS = {
    "demo": (DemoExperimentConfig, run_demo_experiment, "both stages with the tiny SAM on the built-in demo"),
    "demo-tags": (
        TagsExperimentConfig,
        run_tags_experiment,
        "the demo's image tags only: CAM classifiers, walks, a student",
    ),
}


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run the stages on the built-in demo and write a comparison table")
    names = p.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (config_class, _, help_text) in EXPERIMENTS.items():
        e = names.add_parser(name, help=help_text)
        add_settings(e, config_class)
        add_quiet(e)
        e.set_defaults(func=run_experiment, experiment=name)


def run_experiment(args) -> int:
    config_class, run, _ = EXPERIMENTS[args.experiment]
    config = settings_from_args(config_class, args)
    report = run(config, progress=not args.quiet)
    if args.quiet:
        print(json.dumps({r["name"]: round(r["miou"], 4) for r in report["rows"]}))
    print(f"wrote {config.out}/report.json, report.md, report.png")
    return 0
