"""Benchmark harness (pytest-benchmark).

Every suite parametrises one op over shapes (one benchmark *group* per op and
shape) and over implementations: each backend of the op plus public peers.
Each benchmark records `extra_info` = {op, shape, impl, kind} so that
`benchmarks/report.py` can print ratios against the op's `torch` reference.

    pytest benchmarks/ --benchmark-json=benchmarks/results/latest.json
    python benchmarks/report.py benchmarks/results/latest.json

Absolute times on a shared machine are noise; the ratios within one run are
the result.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from wsseg_fast.ops import OP_SPECS  # noqa: E402

REFERENCE = "torch"


def impl_params(op: str, peers: tuple[str, ...] = (), device: str = "cpu") -> list:
    """pytest params: the op's runnable backends on `device`, then public peers.
    The Triton interpreter is not timed: it measures Python, not the kernel."""
    spec = OP_SPECS[op]
    params = []
    for backend in spec.backends:
        reason = spec.why_unavailable(backend, torch.device(device))
        if backend == "triton" and device == "cpu":
            reason = reason or "the Triton interpreter is not a speed measurement"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(backend, id=backend, marks=marks))
    params += [pytest.param(peer, id=peer) for peer in peers]
    return params


def record(benchmark, op: str, shape, impl: str, **extra):
    """Group by op and shape; tag the implementation for the report (`kind`:
    reference, backend or peer; pass `kind=` for what is not an op's backend)."""
    benchmark.group = f"{op} {tuple(shape)}"
    backends = OP_SPECS[op].backends if op in OP_SPECS else ()
    kind = extra.pop("kind", None) or (
        "reference" if impl == REFERENCE else ("backend" if impl in backends else "peer")
    )
    benchmark.extra_info.update(
        op=op, shape=list(shape), impl=impl, kind=kind, threads=torch.get_num_threads(), **extra
    )
