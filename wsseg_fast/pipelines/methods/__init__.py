"""Pseudo-label methods, one module per family, registered by name in :data:`METHODS`:

- :mod:`~.boxes`: ``box``, ``grabcut`` (the boxes alone);
- :mod:`~.sam`: ``sam-box``, ``sam-point``, ``sbr`` (SAM prompted with the weak labels);
- :mod:`~.logic_refine`: ``logic-refine``, ``sam-logic-refine`` (each image's knowledge base);
- :mod:`~.cam`: ``cam``, ``cam-rw``, ``cam-sam-rw`` (image tags only);
- :mod:`~.prompter`: ``prompter`` (WPS-SAM, prompt-free).

What they share -- the input, the output, the registry -- is in :mod:`~.base`.
"""

from wsseg_fast.pipelines.methods import boxes, cam, logic_refine, prompter, sam  # noqa: F401  (register them)
from wsseg_fast.pipelines.methods.base import (
    METHODS,
    Instances,
    Method,
    MethodError,
    MethodInput,
    box_masks,
    box_pixels,
    parse_options,
    register_method,
    resolve,
)

__all__ = [
    "METHODS",
    "Instances",
    "Method",
    "MethodError",
    "MethodInput",
    "box_masks",
    "box_pixels",
    "parse_options",
    "register_method",
    "resolve",
]
