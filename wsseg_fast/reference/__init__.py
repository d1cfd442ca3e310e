"""Pure-PyTorch (and SciPy) implementations of every op.

They define what each op computes: every backend is tested against them, and
benchmarks use them as the baseline. They favour clarity over speed.
"""

from wsseg_fast.reference.linear_assignment import batch_linear_assignment

__all__ = ["batch_linear_assignment"]

# --- sparse affinity random walk (issue 4) ---
from wsseg_fast.reference.affinity import dense_random_walk, local_affinity, random_walk  # noqa: E402

__all__ += ["dense_random_walk", "local_affinity", "random_walk"]
