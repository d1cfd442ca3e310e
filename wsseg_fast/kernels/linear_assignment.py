"""Triton kernel of ``batch_linear_assignment``: one program per problem.

The shortest augmenting path method of ``csrc/include/wsseg/linear_assignment.h``
(its row reduction start; the C++ kernels add Jonker-Volgenant's start on square
finite problems), with the per-column state (duals, distances, path, matching) held
as register vectors: a search step relaxes a whole cost row at once and picks
the next column by the C++ kernels' total order (distance, then a free column,
then the lower index). Optimal totals agree with every backend; on ties the
matching may differ from the C++ kernels' on square problems.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

MAX_BLOCK = 2048  # columns held in registers by one program

# Per-problem status; the same codes as wsseg::lsap::Status in C++.
STATUS_OK = tl.constexpr(0)
STATUS_INFEASIBLE = tl.constexpr(1)
STATUS_INVALID = tl.constexpr(2)


@triton.jit
def _pick(vec, offs, idx):
    """vec[idx] for a scalar idx (a register vector has no indexing)."""
    return tl.sum(tl.where(offs == idx, vec, 0), axis=0)


@triton.jit
def _lsap_kernel(
    cost_ptr,
    out_ptr,
    status_ptr,
    scratch_ptr,
    nr,
    nc,
    stride_b,
    stride_r,
    stride_c,
    n_workers,
    INF: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    NEGATE: tl.constexpr,
    IS_INT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Branch-free where the state is carried through loops: every carried value
    # keeps one type, as the compiler requires.
    b = tl.program_id(0).to(tl.int64)
    base = cost_ptr + b * stride_b
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < nr
    cmask = cols < nc
    zero = tl.zeros([], dtype=cost_ptr.dtype.element_ty)

    # Validate (NaN / -inf) and reduce rows: u[i] = min_j c(i, j), v = 0, the
    # (lowest) argmin kept as a tentative match.
    bad = tl.zeros([], dtype=tl.int32)
    u = tl.zeros([BLOCK_R], dtype=zero.dtype)
    v = tl.zeros([BLOCK_C], dtype=zero.dtype)
    col4row = tl.full([BLOCK_R], -1, tl.int32)
    row4col = tl.full([BLOCK_C], -1, tl.int32)
    for row in range(0, nr):
        c = tl.load(base + row * stride_r + cols * stride_c, mask=cmask, other=0)
        if NEGATE:
            c = -c
        if not IS_INT:
            invalid = cmask & ((c != c) | (c == -INF))
            bad = tl.maximum(bad, tl.max(invalid.to(tl.int32), axis=0) * STATUS_INVALID)
            c = tl.where(invalid, INF, c)  # the problem is rejected; keep NaN out of argmin
        c = tl.where(cmask, c, INF)
        m = tl.min(c, axis=0)
        arg = tl.argmin(c, axis=0).to(tl.int32)
        finite = m != INF
        u = tl.where(rows == row, tl.where(finite, m, zero), u)
        col4row = tl.where(rows == row, tl.where(finite, arg, -1), col4row)
    # Greedy warm start: a row keeps its argmin when that column is still free.
    for row in range(0, nr):
        j = _pick(col4row, rows, row)
        free = (j >= 0) & (_pick(row4col, cols, j) < 0)
        row4col = tl.where((cols == j) & free, row, row4col)
        col4row = tl.where((rows == row) & (free == 0), -1, col4row)

    scratch = scratch_ptr + b * BLOCK_C
    for cur_row in range(0, nr):
        searching = (_pick(col4row, rows, cur_row) < 0) & (bad == 0)
        shortest = tl.full([BLOCK_C], INF, zero.dtype)
        path = tl.full([BLOCK_C], -1, tl.int32)
        visited_col = tl.zeros([BLOCK_C], tl.int32)
        visited_row = tl.zeros([BLOCK_R], tl.int32)
        min_val = zero
        i = cur_row
        sink = tl.full([], -1, tl.int32)
        while searching:
            visited_row = tl.where(rows == i, 1, visited_row)
            c = tl.load(base + i * stride_r + cols * stride_c, mask=cmask, other=0)
            if NEGATE:
                c = -c
            allowed = cmask & (c != INF)  # a forbidden edge never relaxes
            r = min_val + tl.where(allowed, c, zero) - _pick(u, rows, i) - v
            relax = allowed & (visited_col == 0) & (r < shortest)
            shortest = tl.where(relax, r, shortest)
            path = tl.where(relax, i, path)
            open_col = cmask & (visited_col == 0)
            dist = tl.where(open_col, shortest, INF)
            lowest = tl.min(dist, axis=0)
            tie = open_col & (dist == lowest)
            j_free = tl.min(tl.where(tie & (row4col < 0), cols, BLOCK_C), axis=0)
            j = tl.where(j_free < BLOCK_C, j_free, tl.min(tl.where(tie, cols, BLOCK_C), axis=0))
            # (via int32: the interpreter cannot `&` a float comparison's scalar)
            feasible = (lowest != INF).to(tl.int32) != 0
            bad = tl.where(feasible, bad, STATUS_INFEASIBLE)
            min_val = tl.where(feasible, lowest, min_val)
            visited_col = tl.where((cols == j) & feasible, 1, visited_col)
            nxt = _pick(row4col, cols, j)
            sink = tl.where(feasible & (nxt < 0), j, sink)
            searching = feasible & (nxt >= 0)
            i = tl.where(searching, nxt, i)

        # Dual update. u[i] += min_val - shortest[col4row[i]] gathers across
        # register vectors: go through this program's scratch row.
        found = sink >= 0
        tl.store(scratch + cols, shortest)
        tl.debug_barrier()
        on_path = found & (visited_row == 1) & (rows != cur_row) & rmask
        short_at = tl.load(scratch + col4row, mask=on_path, other=0)
        u = tl.where(on_path, u + min_val - short_at, u)
        u = tl.where(found & (rows == cur_row), u + min_val, u)
        v = tl.where(found & (visited_col == 1), v - (min_val - shortest), v)
        tl.debug_barrier()
        # Augment along the path that ends at the free column `sink`.
        j = sink
        walking = found
        while walking:
            i = _pick(path, cols, j)
            row4col = tl.where(cols == j, i, row4col)
            prev = _pick(col4row, rows, i)
            col4row = tl.where(rows == i, j, col4row)
            j = prev
            walking = i != cur_row

    tl.store(status_ptr + b, bad)
    out = out_ptr + b * n_workers
    ok = rmask & (bad == 0)
    if TRANSPOSED:
        tl.store(out + col4row, rows.to(tl.int64), mask=ok)
    else:
        tl.store(out + rows, col4row.to(tl.int64), mask=ok)


@triton_op("wsseg_fast::batch_linear_assignment_triton", mutates_args=())
def batch_linear_assignment_triton(cost: torch.Tensor, maximize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``cost [B, W, T]`` (float64 or int64) -> (assignment ``[B, W]``, status ``[B]``).

    status: 0 solved, 1 infeasible, 2 NaN / -inf entries; a bad problem's row is -1.
    """
    batch, workers, tasks = cost.shape
    out = torch.full((batch, workers), -1, dtype=torch.long, device=cost.device)
    status = torch.zeros(batch, dtype=torch.int32, device=cost.device)
    if cost.numel() == 0:
        return out, status
    transposed = workers > tasks
    nr, nc = (tasks, workers) if transposed else (workers, tasks)
    stride_r, stride_c = (cost.stride(2), cost.stride(1)) if transposed else (cost.stride(1), cost.stride(2))
    block_c = triton.next_power_of_2(nc)
    scratch = torch.empty((batch, block_c), dtype=cost.dtype, device=cost.device)
    wrap_triton(_lsap_kernel)[(batch,)](
        cost,
        out,
        status,
        scratch,
        nr,
        nc,
        cost.stride(0),
        stride_r,
        stride_c,
        workers,
        INF=(2**63 - 1) if not cost.is_floating_point() else float("inf"),
        TRANSPOSED=transposed,
        NEGATE=maximize,
        IS_INT=not cost.is_floating_point(),
        BLOCK_R=triton.next_power_of_2(nr),
        BLOCK_C=block_c,
    )
    return out, status
