"""Classic box-to-mask baselines: GrabCut per box, and a dense-CRF refinement of any label map.

- ``grabcut``: OpenCV's ``cv2.grabCut`` (Rother et al. 2004: GMM colour models inside and
  outside the box, iterated graph cuts) on a crop around each box (``margin`` pixels of
  surroundings: its background model is local, and a crop is far faster than the image).
  Overlaps are resolved as for ``box`` (the smaller box wins). A box GrabCut cannot label
  (too small, or it finds no object) falls back to the filled box.
- :func:`crf_refine` (``pseudo-label --refine crf``): mean-field inference of a CRF with
  Gaussian appearance and smoothness kernels (Krähenbühl & Koltun 2011) on a local window,
  with the project's own kernels — ``local_affinity`` for the kernel weights and
  ``random_walk`` (one averaging step) for the messages. The messages are normalised (a
  bilateral filter of the label distribution over the window) instead of the fully
  connected, unnormalised sum: a window of ``radius`` pixels holds the neighbours that
  matter at these image sizes, and normalising keeps one weight meaningful for every image.
"""

from __future__ import annotations

import numpy as np
import torch

from wsseg_fast.ops.affinity import local_affinity
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.ops.random_walk import random_walk
from wsseg_fast.pipelines.methods import Instances, MethodInput, box_masks, box_pixels, register_method

CRF_DEFAULTS = {"radius": 5, "iterations": 5, "gt_prob": 0.7, "appearance_weight": 4.0, "smoothness_weight": 1.0,
                "theta_position": 5.0, "theta_colour": 10.0, "theta_smooth": 2.0}


def _import_cv2():
    try:
        import cv2  # optional: only the grabcut method needs OpenCV
    except ImportError:
        raise ValueError("the grabcut method needs OpenCV: pip install opencv-python-headless") from None
    return cv2


@register_method("grabcut", needs_sam=False, options={"iterations": 5, "margin": 20})
def grabcut(ctx: MethodInput) -> Instances:
    """OpenCV GrabCut from each box (GMM colour models, graph cuts); overlaps as for box."""
    cv2 = _import_cv2()
    h, w = ctx.image.shape[:2]
    bgr = np.ascontiguousarray(ctx.image[..., ::-1])
    filled = box_masks(ctx.boxes, h, w)
    masks = filled.copy()
    margin = int(ctx.options["margin"])
    for i, (y0, y1, x0, x1) in enumerate(box_pixels(ctx.boxes, h, w)):
        cy0, cy1, cx0, cx1 = max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)
        rect = (x0 - cx0, y0 - cy0, x1 - x0, y1 - y0)
        if rect[2] < 2 or rect[3] < 2 or (cy1 - cy0, cx1 - cx0) == (y1 - y0, x1 - x0):
            continue  # nothing outside the box to learn the background from
        label = np.zeros((cy1 - cy0, cx1 - cx0), np.uint8)
        try:
            cv2.grabCut(np.ascontiguousarray(bgr[cy0:cy1, cx0:cx1]), label, rect, np.zeros((1, 65)), np.zeros((1, 65)),
                        int(ctx.options["iterations"]), cv2.GC_INIT_WITH_RECT)
        except cv2.error:
            continue
        fg = (label == cv2.GC_FGD) | (label == cv2.GC_PR_FGD)
        if fg.any():
            masks[i] = False
            masks[i, cy0:cy1, cx0:cx1] = fg
    area = filled.reshape(len(filled), -1).sum(1).astype(np.float64)
    return Instances(masks, ctx.classes, 1.0 - area / (h * w))


def crf_refine(image: np.ndarray, label: np.ndarray, options: dict | None = None) -> np.ndarray:
    """A class-index map refined by mean-field inference (see the module docstring); classes
    absent from ``label`` stay absent, and so does the ignore value 255."""
    o = {**CRF_DEFAULTS, **(options or {})}
    present = np.unique(label[label != 255])
    if len(present) < 2:
        return label
    h, w = label.shape
    index = np.searchsorted(present, np.where(label == 255, present[0], label))
    k = len(present)
    unary = torch.full((1, k, h, w), (1 - o["gt_prob"]) / (k - 1))
    unary.scatter_(1, torch.from_numpy(index)[None, None], o["gt_prob"])
    log_unary = unary.log()
    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    position = torch.stack([yy, xx])[None]
    # local_affinity(l2) = exp(-mean over D channels of squared differences): scale each feature by
    # sqrt(D / 2) / theta so that it equals exp(-|dp|^2 / 2 theta_p^2 - |dI|^2 / 2 theta_c^2).
    appearance = torch.cat([position / o["theta_position"], lab / o["theta_colour"]], 1) * (5 / 2) ** 0.5
    smooth = position / o["theta_smooth"]
    radius = int(o["radius"])
    # Both kernels in one affinity, so each iteration is one walk step.
    weight = o["appearance_weight"] + o["smoothness_weight"]
    affinity = (o["appearance_weight"] * local_affinity(appearance, radius, metric="l2")
                + o["smoothness_weight"] * local_affinity(smooth, radius, metric="l2")) / weight
    q = unary
    for _ in range(int(o["iterations"])):
        q = torch.softmax(log_unary + weight * random_walk(q, affinity, radius, beta=1.0, steps=1), dim=1)
    refined = present[q[0].argmax(0).numpy()].astype(np.uint8)
    return np.where(label == 255, label, refined)
