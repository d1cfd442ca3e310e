"""Baselines from the boxes alone: ``box`` (filled boxes) and ``grabcut`` (OpenCV's GrabCut
from each box: GMM colour models inside and outside the box, iterated graph cuts).

``grabcut`` runs as OpenCV documents its rect mode (and as Simple-Does-It used it): on the whole
image, everything outside the box is background, the other objects' boxes included (they are
outside this box, so OpenCV counts them as background evidence too). ``margin=N`` (N >= 0) runs it
on a crop of N pixels around the box instead: its background model then sees only that ring."""

from __future__ import annotations

import numpy as np

from wsseg_fast.pipelines.methods.base import (
    Instances,
    MethodError,
    MethodInput,
    box_masks,
    box_pixels,
    register_method,
)


@register_method("box", needs_sam=False)
def box_method(ctx: MethodInput) -> Instances:
    """Filled boxes (the baseline); where boxes overlap the smaller box wins."""
    h, w = ctx.image.shape[:2]
    masks = box_masks(ctx.boxes, h, w)
    area = masks.reshape(len(masks), -1).sum(1).astype(np.float64)
    return Instances(masks, ctx.classes, 1.0 - area / (h * w))


def _import_cv2():
    try:
        import cv2  # optional: only the grabcut method needs OpenCV
    except ImportError:
        raise MethodError("the grabcut method needs OpenCV: pip install opencv-python-headless") from None
    return cv2


@register_method("grabcut", needs_sam=False, options={"iterations": 5, "margin": -1})
def grabcut(ctx: MethodInput) -> Instances:
    """OpenCV GrabCut from each box (GMM colour models, graph cuts), the whole image outside the box as background
    (margin=N: a crop of N pixels around the box instead); overlaps as for box."""
    cv2 = _import_cv2()
    h, w = ctx.image.shape[:2]
    bgr = np.ascontiguousarray(ctx.image[..., ::-1])
    filled = box_masks(ctx.boxes, h, w)
    masks = filled.copy()
    margin = int(ctx.options["margin"])
    margin = max(h, w) if margin < 0 else margin  # negative: the whole image
    for i, (y0, y1, x0, x1) in enumerate(box_pixels(ctx.boxes, h, w)):
        cy0, cy1, cx0, cx1 = max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)
        rect = (x0 - cx0, y0 - cy0, x1 - x0, y1 - y0)
        if rect[2] < 2 or rect[3] < 2 or (cy1 - cy0, cx1 - cx0) == (y1 - y0, x1 - x0):
            continue  # nothing outside the box to learn the background from
        label = np.zeros((cy1 - cy0, cx1 - cx0), np.uint8)
        try:
            cv2.grabCut(
                np.ascontiguousarray(bgr[cy0:cy1, cx0:cx1]),
                label,
                rect,
                np.zeros((1, 65)),
                np.zeros((1, 65)),
                int(ctx.options["iterations"]),
                cv2.GC_INIT_WITH_RECT,
            )
        except cv2.error:
            continue
        fg = (label == cv2.GC_FGD) | (label == cv2.GC_PR_FGD)
        if fg.any():
            masks[i] = False
            masks[i, cy0:cy1, cx0:cx1] = fg
    area = filled.reshape(len(filled), -1).sum(1).astype(np.float64)
    return Instances(masks, ctx.classes, 1.0 - area / (h * w))
