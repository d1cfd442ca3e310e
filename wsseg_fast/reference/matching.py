"""Reference for HungarianMatcher: DETR's matcher, one SciPy call per image.

This is the loop that batched matching replaces (the host copy and the Python
loop are its cost); it is the ground truth in tests and the baseline in
benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import scipy.optimize
import torch


@torch.no_grad()
def match_per_image(
    outputs: Mapping[str, torch.Tensor],
    targets: Sequence[Mapping[str, torch.Tensor]],
    cost_class: float = 10.0,
    cost_prompt: float = 1.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image ``(query_idx, target_idx)`` minimising ``cost_class * -p(label)
    + cost_prompt * ||prompts_q - prompts_t||_2``, sorted by query."""
    pairs = []
    for b, target in enumerate(targets):
        prob = outputs["pred_logits"][b].float().softmax(-1)
        predicted = outputs["pred_prompts"][b].flatten(1).float()
        cost = -cost_class * prob[:, target["labels"]]
        cost = cost + cost_prompt * torch.cdist(predicted, target["prompts"].flatten(1).float())
        rows, cols = scipy.optimize.linear_sum_assignment(cost.cpu().numpy())
        pairs.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return pairs
