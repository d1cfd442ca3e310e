"""Domain priors read from a YAML (or JSON) file, classes by name; one format for every
command that takes priors (``finetune --priors``, ``logic-refine``'s ``priors=`` option)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from wsseg_fast.errors import UserError

PRIOR_KEYS = ("contains", "excludes", "one_class_per_pixel", "pairwise", "box_size")


class PriorsError(UserError):
    """A priors file that cannot be read or used; one line from the CLI."""


def load_priors(path: str | os.PathLike | None, class_names: list[str], what: str = "--priors") -> dict:
    """The priors file at ``path``, checked against ``class_names`` (channel 0 is the background)::

        contains: [[cup, disc]]        # every cup pixel is a disc pixel (a -> b)
        excludes: [[rod, ring]]        # never both at one pixel
        one_class_per_pixel: true
        pairwise: true                 # neighbours of similar colour share a label (default on)
        box_size: [0.2, 0.95]          # rho_lo |box| <= sum of p in the box <= rho_hi |box|

    ``None``: no priors (``{}``). Errors name ``what``, the option the path came from."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PriorsError(f"{what}: cannot read {path}: {exc}") from None
    try:
        priors = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PriorsError(f"{what}: {path} is not valid YAML: {exc}") from None
    if not isinstance(priors, dict):
        raise PriorsError(f"{what}: {path} must hold a mapping, got {type(priors).__name__}")
    unknown = sorted(set(priors) - set(PRIOR_KEYS))
    if unknown:
        raise PriorsError(f"{what}: unknown keys {unknown} in {path}; known: {', '.join(PRIOR_KEYS)}")
    for key in ("contains", "excludes"):
        pairs = priors.get(key) or []
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(c in class_names[1:] for c in p)
                                                   for p in pairs):
            raise PriorsError(f"{what}: {key} must be a list of [class, class] pairs of {class_names[1:]}, got {pairs!r}")
    size = priors.get("box_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, (int, float)) for v in size)
                                 and 0 <= size[0] <= size[1] <= 1):
        raise PriorsError(f"{what}: box_size must be [rho_lo, rho_hi] with 0 <= rho_lo <= rho_hi <= 1, got {size!r}")
    if priors.get("pairwise") is True:
        priors["pairwise"] = {}
    return priors
