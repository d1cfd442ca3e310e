"""Reference for ``batch_linear_assignment``: SciPy, one problem at a time.

This is also the public baseline it is benchmarked against (the loop that
DETR-style matchers run).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch

# For integer costs the largest int64 forbids a pair, as +inf does for floats.
FORBIDDEN_INT = torch.iinfo(torch.int64).max


def invalid_message(b: int, maximize: bool) -> str:
    bad = "+inf (with maximize=True, -inf marks a forbidden pair)" if maximize else "-inf"
    return f"batch_linear_assignment: cost[{b}] contains NaN or {bad}"


def infeasible_message(b: int, maximize: bool) -> str:
    forbidden = "-inf" if maximize else "+inf"
    return (
        f"batch_linear_assignment: cost[{b}] is infeasible: no matching of size min(W, T) "
        f"avoids the forbidden ({forbidden}) entries"
    )


def batch_linear_assignment(cost: torch.Tensor, *, maximize: bool = False, check: bool = True) -> torch.Tensor:
    """``[B, W, T]`` costs -> ``[B, W]`` column of each row, ``-1`` when unmatched.

    A problem SciPy rejects (NaN, -inf, infeasible) raises ``ValueError`` naming
    its batch index, or with ``check=False`` leaves its row at -1.
    """
    batch, workers, _ = cost.shape
    out = torch.full((batch, workers), -1, dtype=torch.long)
    host = cost.detach().cpu()
    if host.dtype in (torch.float16, torch.bfloat16):
        host = host.float()
    array = host.numpy()
    if host.dtype == torch.int64 and (host == FORBIDDEN_INT).any():
        array = np.where(array == FORBIDDEN_INT, np.inf, array.astype(np.float64))
    for b in range(batch):
        try:
            rows, cols = scipy.optimize.linear_sum_assignment(array[b], maximize=maximize)
        except ValueError as exc:
            if not check:
                continue
            text = str(exc)
            message = infeasible_message(b, maximize) if "infeasible" in text else invalid_message(b, maximize)
            raise ValueError(message) from None
        out[b, torch.from_numpy(rows.astype(np.int64))] = torch.from_numpy(cols.astype(np.int64))
    return out.to(cost.device)
