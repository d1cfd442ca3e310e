"""Backend choice for every op: ``auto | triton | cuda | cpu | torch``.

The ``backend=`` argument wins; when it is ``"auto"`` the environment variable
``WSSEG_FAST_BACKEND`` may name one instead. ``auto`` takes the first backend of
the op's priority list for the tensor's device that can run; an explicitly
requested backend that cannot run raises :class:`BackendUnavailableError`
saying why (as xformers reports why it skipped an implementation).

Availability is settled once at import, so choosing is plain Python that
``torch.compile`` traces without a graph break.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from wsseg_fast import _native

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch")
ENV_VAR = "WSSEG_FAST_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this call; the message says why."""


def _triton_problem() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


TRITON_PROBLEM = _triton_problem()
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
CUDA_AVAILABLE = torch.cuda.is_available()
# Whether Triton kernels can run in this process at all. Only then do the op modules import
# them: defining a kernel with torch.library.triton_op imports torch._inductor (~1 s), which a
# CPU-only job without the interpreter should not pay for kernels it cannot run.
TRITON_RUNNABLE = TRITON_PROBLEM is None and (CUDA_AVAILABLE or TRITON_INTERPRET)


@dataclass(frozen=True)
class OpSpec:
    """What an op implements and the order ``auto`` tries per device type."""

    name: str
    backends: tuple[str, ...]
    auto: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Compiled kernels present in the loaded _C, filled at construction.
    compiled: dict[str, bool] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        unknown = set(self.backends) - set(BACKENDS[1:])
        if unknown:
            raise ValueError(f"OpSpec {self.name}: unknown backends {sorted(unknown)}")
        self.compiled.update(
            cpu="cpu" in self.backends and _native.has_kernel(self.name, "CPU"),
            cuda="cuda" in self.backends and _native.has_kernel(self.name, "CUDA"),
        )

    def why_unavailable(self, backend: str, device: torch.device) -> str | None:
        """None when ``backend`` can run this op on ``device``, else the reason."""
        if backend not in self.backends:
            return f"{self.name} has no '{backend}' implementation (it has: {', '.join(self.backends)})"
        if backend == "torch":
            return None
        if device.type == "cuda" and not CUDA_AVAILABLE:
            return "no CUDA GPU is available"
        if backend in ("cpu", "cuda"):
            if device.type != backend:
                return f"the input is on {device}; the '{backend}' backend takes {backend.upper()} tensors"
            if not self.compiled[backend]:
                if _native.LOAD_ERROR is not None:
                    return f"wsseg_fast._C failed to load ({_native.LOAD_ERROR})"
                if backend == "cuda":
                    return "wsseg_fast._C was built without CUDA kernels (see setup.py: no CUDA toolkit at build time?)"
                return f"wsseg_fast._C has no CPU kernel for {self.name} (rebuild the extension)"
            return None
        # triton
        if TRITON_PROBLEM is not None:
            return TRITON_PROBLEM
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            if TRITON_INTERPRET:
                return None
            return "CPU tensors run Triton kernels only under TRITON_INTERPRET=1 (set before triton is imported)"
        return f"the input is on {device}; Triton kernels run on CUDA tensors"


def choose(spec: OpSpec, backend: str | None, device: torch.device) -> str:
    """The backend that runs ``spec`` for a tensor on ``device``."""
    source = "backend="
    if backend is None or backend == "auto":
        env = os.environ.get(ENV_VAR, "")
        if env.strip() and env.strip() != "auto":
            backend, source = env.strip(), f"${ENV_VAR}"
        else:
            backend = "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{spec.name}: {source} must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        for candidate in spec.auto.get(device.type, ()) + ("torch",):
            if spec.why_unavailable(candidate, device) is None:
                return candidate
    reason = spec.why_unavailable(backend, device)
    if reason is not None:
        raise BackendUnavailableError(f"{spec.name}: backend '{backend}' ({source}) cannot run: {reason}")
    return backend


def availability(spec: OpSpec, device: torch.device | str) -> dict[str, str]:
    """For each backend of ``spec``: ``"available"`` or why it is not."""
    device = torch.device(device)
    return {b: spec.why_unavailable(b, device) or "available" for b in spec.backends}
