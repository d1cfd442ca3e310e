"""``pseudo-label --refine crf``: a dense-CRF refinement of any label map.

Mean-field inference of a CRF with Gaussian appearance and smoothness kernels (Krähenbühl &
Koltun 2011) on a local window, with the project's own kernels -- ``local_affinity`` for the
kernel weights and ``random_walk`` (one averaging step) for the messages. The messages are
normalised (a bilateral filter of the label distribution over the window) instead of the fully
connected, unnormalised sum: a window of ``radius`` pixels holds the neighbours that matter at
these image sizes, and normalising keeps one weight meaningful for every image.
"""

from __future__ import annotations

import numpy as np
import torch

from wsseg_fast.ops.affinity import local_affinity
from wsseg_fast.ops.color import rgb_to_lab
from wsseg_fast.ops.random_walk import random_walk

CRF_DEFAULTS = {
    "radius": 5,
    "iterations": 5,
    "gt_prob": 0.7,
    "appearance_weight": 4.0,
    "smoothness_weight": 1.0,
    "theta_position": 5.0,
    "theta_colour": 10.0,
    "theta_smooth": 2.0,
}


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
    affinity = (
        o["appearance_weight"] * local_affinity(appearance, radius, metric="l2")
        + o["smoothness_weight"] * local_affinity(smooth, radius, metric="l2")
    ) / weight
    q = unary
    for _ in range(int(o["iterations"])):
        q = torch.softmax(log_unary + weight * random_walk(q, affinity, radius, beta=1.0, steps=1), dim=1)
    refined = present[q[0].argmax(0).numpy()].astype(np.uint8)
    return np.where(label == 255, label, refined)
