"""Batched linear assignment (Hungarian matching), the solver behind DETR-style
set losses such as WPS-SAM's query prompter.

Same convention as the public ``torch_linear_assignment.batch_linear_assignment``
so it can be swapped in.
"""

from __future__ import annotations

import os

import torch

from wsseg_fast import reference
from wsseg_fast.ops._backend import ENV_VAR, TRITON_RUNNABLE, OpSpec, choose

if TRITON_RUNNABLE:
    from wsseg_fast.kernels import linear_assignment as _triton
else:  # pragma: no cover - Triton cannot run here (see TRITON_RUNNABLE)
    _triton = None

SPEC = OpSpec(
    "batch_linear_assignment",
    backends=("torch", "cpu", "cuda", "triton"),
    auto={"cpu": ("cpu",), "cuda": ("cuda", "triton")},
)

if SPEC.compiled["cpu"] or SPEC.compiled["cuda"]:

    @torch.library.register_fake("wsseg_fast::batch_linear_assignment")
    def _(cost, maximize=False, check=True):
        return cost.new_empty(cost.shape[:2], dtype=torch.long)


# The CPU kernel's own dtypes: a CPU tensor of one of these with backend="auto"
# (and no $WSSEG_FAST_BACKEND) goes straight to the cached op overload, which
# keeps the per-call overhead of a single small problem (B=1) near the
# dispatcher's own.
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.int64)
_CPU_OP = torch.ops.wsseg_fast.batch_linear_assignment.default if SPEC.compiled["cpu"] else None


def _as_solver_dtype(cost: torch.Tensor) -> torch.Tensor:
    """Integers and bool -> int64 (exact); float16/bfloat16 -> float32."""
    if cost.is_complex():
        raise TypeError(f"batch_linear_assignment: `cost` must be real, got {cost.dtype}")
    if cost.dtype in (torch.float16, torch.bfloat16):
        return cost.float()
    if not cost.is_floating_point():
        return cost.long()
    if cost.dtype not in (torch.float32, torch.float64):
        return cost.double()  # float8 and friends
    return cost


def batch_linear_assignment(
    cost: torch.Tensor, *, maximize: bool = False, check: bool = True, backend: str = "auto"
) -> torch.Tensor:
    """Solve B linear assignment problems at once.

    Args:
        cost: ``[B, W, T]`` costs of assigning worker (row) ``w`` to task
            (column) ``t``; any real dtype, any device. ``+inf`` forbids a pair
            (``-inf`` with ``maximize=True``); for integer costs the largest
            int64 does (costs and their path sums must otherwise fit in int64).
        maximize: maximise the total instead.
        check: raise ``ValueError`` (naming the batch index) for a problem with
            NaN, ``-inf`` or no feasible matching. With ``check=False`` such a
            problem's row is all -1 and no host synchronisation happens on CUDA.
        backend: ``auto | triton | cuda | cpu | torch`` (``auto`` honours
            ``$WSSEG_FAST_BACKEND``).

    Returns:
        ``[B, W]`` int64: the task matched to each worker, ``-1`` for none. Each
        problem gets a matching of size ``min(W, T)`` with the optimal total
        cost (SciPy's optimum; ties may pick another matching of equal cost).
        Integer costs are solved exactly in int64; floating costs in float64.
    """
    if (
        _CPU_OP is not None
        and backend == "auto"
        and type(cost) is torch.Tensor
        and cost.device.type == "cpu"
        and cost.dtype in _KERNEL_DTYPES
        and cost.dim() == 3
        and not os.environ.get(ENV_VAR)
    ):
        return _CPU_OP(cost, maximize, check)
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"batch_linear_assignment: `cost` must be a torch.Tensor, got {type(cost).__name__}")
    if cost.dim() != 3:
        raise ValueError(f"batch_linear_assignment: `cost` must have shape [B, W, T], got {tuple(cost.shape)}")
    cost = _as_solver_dtype(cost)
    which = choose(SPEC, backend, cost.device)
    if which == "torch":
        return reference.batch_linear_assignment(cost, maximize=maximize, check=check)
    if which == "triton":
        if max(cost.shape[1:]) > _triton.MAX_BLOCK:
            raise ValueError(
                f"batch_linear_assignment: the triton backend holds a problem's columns in registers and takes "
                f"W and T up to {_triton.MAX_BLOCK}; got {tuple(cost.shape)} (use the cuda or cpu backend)"
            )
        if cost.is_floating_point():
            cost = cost.double()
        out, status = _triton.batch_linear_assignment_triton(cost, maximize)
        if check:
            _raise_for_status(status, maximize)
        return out
    return torch.ops.wsseg_fast.batch_linear_assignment(cost, maximize, check)


def _raise_for_status(status: torch.Tensor, maximize: bool) -> None:
    bad = torch.nonzero(status).flatten()  # the host synchronisation check=True asks for
    if bad.numel():
        b = int(bad[0])
        if int(status[b]) == _triton.STATUS_INVALID:
            raise ValueError(reference.linear_assignment.invalid_message(b, maximize))
        raise ValueError(reference.linear_assignment.infeasible_message(b, maximize))


def assignment_to_indices(assignment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, W]`` assignment -> ``(row_ind, col_ind)``, each ``[B, K]``, SciPy's format.

    Rows are ascending within each problem. Every problem must have the same
    number K of matched rows (true for the output of ``batch_linear_assignment``).
    """
    if not isinstance(assignment, torch.Tensor) or assignment.dim() != 2:
        raise ValueError("assignment_to_indices: `assignment` must be a [B, W] tensor")
    batch = assignment.shape[0]
    if batch == 0:
        empty = torch.zeros(0, 0, dtype=torch.long, device=assignment.device)
        return empty, empty
    matched = assignment >= 0
    counts = matched.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError("assignment_to_indices: problems have different numbers of matched rows")
    k = int(counts[0])
    row_ind = matched.nonzero()[:, 1].reshape(batch, k)
    col_ind = assignment.masked_select(matched).reshape(batch, k)
    return row_ind, col_ind
