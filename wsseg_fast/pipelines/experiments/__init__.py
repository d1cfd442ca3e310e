"""The demo experiments: ``experiment demo`` (both stages) and ``experiment demo-tags`` (image tags only)."""

from wsseg_fast.pipelines.experiments.demo import DemoExperimentConfig, run_demo_experiment
from wsseg_fast.pipelines.experiments.tags import TagsExperimentConfig, run_tags_experiment

__all__ = ["DemoExperimentConfig", "TagsExperimentConfig", "run_demo_experiment", "run_tags_experiment"]
