"""Peak memory of a call on the CPU: the highest total of bytes that PyTorch's CPU
allocator holds at once while the call runs, above what was held before it.

Read from the profiler's allocation events ("[memory]": +bytes on allocation,
-bytes on free, in time order), so it counts tensors only -- not Python objects
or the allocator's caching -- which is what the goal ("peak allocated bytes")
asks for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by ``fn()`` (and not yet freed) at any moment during the call."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    held = peak = 0
    for delta in (e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())):
        held += delta
        peak = max(peak, held)
    return peak


def forward_backward(loss_fn: Callable[[torch.Tensor], torch.Tensor], probs: torch.Tensor) -> Callable[[], object]:
    """A call computing ``loss_fn(x)`` and its gradient for a fresh leaf ``x`` equal to ``probs``
    (the gradient, which every backend allocates once, is included)."""

    def call():
        x = probs.detach().requires_grad_()
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    return call
