"""Pure-PyTorch (and SciPy) implementations of every op.

They define what each op computes: every backend is tested against them, and
benchmarks use them as the baseline. They favour clarity over speed.
"""

from wsseg_fast.reference.linear_assignment import batch_linear_assignment

__all__ = ["batch_linear_assignment"]

# ---- fuzzy-logic constraint losses (issue 3)
from wsseg_fast.reference import logic  # noqa: E402
from wsseg_fast.reference.logic import box_constraint_loss, pairwise_constraint_loss  # noqa: E402

__all__ += ["box_constraint_loss", "logic", "pairwise_constraint_loss"]
# --- SLIC superpixels and superpixel modulation (issue 5) ---
from wsseg_fast.reference.slic import slic, slic_energy  # noqa: E402
from wsseg_fast.reference.superpixel import (  # noqa: E402
    activation_modulation,
    ssc_alignment_loss,
    superpixel_pool,
)

__all__ += ["activation_modulation", "slic", "slic_energy", "ssc_alignment_loss", "superpixel_pool"]
# --- sparse affinity random walk (issue 4) ---
from wsseg_fast.reference.affinity import dense_random_walk, local_affinity, random_walk  # noqa: E402

__all__ += ["dense_random_walk", "local_affinity", "random_walk"]
