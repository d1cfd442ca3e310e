"""Pure-PyTorch (and SciPy) implementations of every op, one module per op.

They define what each op computes: every backend is tested against them, and
benchmarks use them as the baseline. They favour clarity over speed.

The package exports each op's reference function, so ``reference.slic`` is the
function; an op's helpers are imported from its module
(``from wsseg_fast.reference.random_walk import transition``).
"""

from wsseg_fast.reference.affinity import local_affinity
from wsseg_fast.reference.box_constraint import box_constraint_loss
from wsseg_fast.reference.linear_assignment import batch_linear_assignment
from wsseg_fast.reference.pairwise_constraint import pairwise_constraint_loss
from wsseg_fast.reference.random_walk import dense_random_walk, random_walk
from wsseg_fast.reference.slic import slic, slic_energy
from wsseg_fast.reference.superpixel_pool import activation_modulation, ssc_alignment_loss, superpixel_pool

__all__ = [
    "activation_modulation",
    "batch_linear_assignment",
    "box_constraint_loss",
    "dense_random_walk",
    "local_affinity",
    "pairwise_constraint_loss",
    "random_walk",
    "slic",
    "slic_energy",
    "ssc_alignment_loss",
    "superpixel_pool",
]
