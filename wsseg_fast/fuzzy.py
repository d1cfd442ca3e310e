"""Fuzzy-logic operators on tensors of truth values in [0, 1] (LTN semantics).

The same values and gradients as LTNtorch's ``ltn.fuzzy_ops`` (tested against
it), as plain functions. ``stable=True`` (the default, as in LTN) applies the
projections that keep gradients finite at 0 and 1:
pi_0(x) = (1 - eps) x + eps moves a value off 0, pi_1(x) = (1 - eps) x off 1.

Quantifiers take a guarding ``mask``; unlike LTN, an empty domain is defined:
``forall`` gives 1 and ``exists`` gives 0 (LTN returns NaN there).

:func:`check_truth_values` is the value check every loss on truth values shares (the fused
box and pairwise losses, knowledge bases): see "Bad values" in ``docs/ops.md``.

The lowest layer of the package: it imports nothing from wsseg_fast, so the
references, the ops and :mod:`wsseg_fast.logic` can all build on it.
"""

from __future__ import annotations

import torch

EPS = 1e-4
TRUTH_TOLERANCE = 1e-3
"""How far outside [0, 1] a truth value may lie before a loss refuses it: room for rounding in
probabilities that are sums or products (one float16 ulp above 1 is 9.8e-4; a bfloat16 one, 7.8e-3,
is beyond it)."""


def pi_0(x: torch.Tensor) -> torch.Tensor:
    """Moves truth values off 0: (1 - eps) x + eps."""
    return (1 - EPS) * x + EPS


def pi_1(x: torch.Tensor) -> torch.Tensor:
    """Moves truth values off 1: (1 - eps) x."""
    return (1 - EPS) * x


# --- connectives ---------------------------------------------------------------------------------


def negation(a: torch.Tensor) -> torch.Tensor:
    """Standard negation 1 - a."""
    return 1.0 - a


def and_prod(a: torch.Tensor, b: torch.Tensor, stable: bool = True) -> torch.Tensor:
    """Product t-norm a * b (pi_0 on both operands when stable)."""
    if stable:
        a, b = pi_0(a), pi_0(b)
    return a * b


def and_luk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Łukasiewicz t-norm max(a + b - 1, 0)."""
    return torch.maximum(a + b - 1.0, torch.zeros_like(a))  # maximum: LTN's slope at the kink


def and_min(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gödel t-norm min(a, b)."""
    return torch.minimum(a, b)


def or_prob_sum(a: torch.Tensor, b: torch.Tensor, stable: bool = True) -> torch.Tensor:
    """Probabilistic sum a + b - a b, the dual of the product t-norm (pi_1 when stable)."""
    if stable:
        a, b = pi_1(a), pi_1(b)
    return a + b - a * b


def or_luk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Łukasiewicz t-conorm min(a + b, 1)."""
    return torch.minimum(a + b, torch.ones_like(a))


def or_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gödel t-conorm max(a, b)."""
    return torch.maximum(a, b)


def implies_reichenbach(a: torch.Tensor, b: torch.Tensor, stable: bool = True) -> torch.Tensor:
    """Reichenbach implication 1 - a + a b (pi_0 on a, pi_1 on b when stable)."""
    if stable:
        a, b = pi_0(a), pi_1(b)
    return 1.0 - a + a * b


def implies_goguen(a: torch.Tensor, b: torch.Tensor, stable: bool = True) -> torch.Tensor:
    """Goguen implication: 1 if a <= b else b / a (pi_0 on a when stable)."""
    if stable:
        a = pi_0(a)
    return torch.where(a <= b, torch.ones_like(a), b / a)


def implies_kleene_dienes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kleene–Dienes implication max(1 - a, b)."""
    return torch.maximum(1.0 - a, b)


def implies_godel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gödel implication: 1 if a <= b else b."""
    return torch.where(a <= b, torch.ones_like(a), b)


def implies_luk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Łukasiewicz implication min(1 - a + b, 1)."""
    return torch.minimum(1.0 - a + b, torch.ones_like(a))


def equivalence(a: torch.Tensor, b: torch.Tensor, and_op=and_prod, implies_op=implies_reichenbach) -> torch.Tensor:
    """a <-> b as (a -> b) AND (b -> a), with the given operators (LTN's ``Equiv``)."""
    return and_op(implies_op(a, b), implies_op(b, a))


# --- quantifiers ---------------------------------------------------------------------------------


def _masked_mean(values: torch.Tensor, dim, keepdim: bool, mask: torch.Tensor | None):
    """(mean of values over the mask, whether the domain is empty)."""
    if mask is None:
        if dim is None:
            return values.mean(), torch.tensor(values.numel() == 0, device=values.device)
        count = torch.tensor(1, device=values.device)
        for d in dim if isinstance(dim, (tuple, list)) else (dim,):
            count = count * values.shape[d]
        return values.mean(dim=dim, keepdim=keepdim), count == 0
    if mask.shape != values.shape:
        raise ValueError(
            f"quantifier: `mask` must have the shape of the operand {tuple(values.shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"quantifier: `mask` must be a bool tensor, got {mask.dtype}")
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=dim, keepdim=keepdim)
    count = mask.sum(dim=dim, keepdim=keepdim)
    empty = count == 0
    # Empty domains divide by 1 instead of 0 so that no NaN reaches the gradient.
    return total / torch.where(empty, torch.ones_like(count), count), empty


def pmean(
    xs: torch.Tensor,
    dim=None,
    *,
    p: float = 2.0,
    mask: torch.Tensor | None = None,
    stable: bool = True,
    keepdim: bool = False,
) -> torch.Tensor:
    """Existential quantifier ∃: (mean x^p)^(1/p), over ``dim`` (all when None) and the
    ``mask`` (guarded quantification); 0 on an empty domain. pi_0 on x when stable."""
    if stable:
        xs = pi_0(xs)
    mean, empty = _masked_mean(xs**p, dim, keepdim, mask)
    safe = torch.where(empty, torch.ones_like(mean), mean)
    return torch.where(empty, torch.zeros_like(mean), safe ** (1.0 / p))


def pmean_error(
    xs: torch.Tensor,
    dim=None,
    *,
    p: float = 2.0,
    mask: torch.Tensor | None = None,
    stable: bool = True,
    keepdim: bool = False,
) -> torch.Tensor:
    """Universal quantifier ∀: 1 - (mean (1 - x)^p)^(1/p), over ``dim`` and the ``mask``;
    1 on an empty domain. pi_1 on x when stable."""
    if stable:
        xs = pi_1(xs)
    mean, empty = _masked_mean((1.0 - xs) ** p, dim, keepdim, mask)
    safe = torch.where(empty, torch.ones_like(mean), mean)
    return torch.where(empty, torch.ones_like(mean), 1.0 - safe ** (1.0 / p))


exists = pmean
forall = pmean_error


def sat_agg(
    truths: torch.Tensor, weights: torch.Tensor | None = None, *, p: float = 2.0, stable: bool = True
) -> torch.Tensor:
    """SatAgg: the (weighted) pMeanError of closed formulas' truths ``[K]``.
    With unit weights this is LTN's ``SatAgg(AggregPMeanError(p))``."""
    if weights is None:
        return pmean_error(truths, p=p, stable=stable)
    if stable:
        truths = pi_1(truths)
    total = weights.sum()
    if truths.numel() == 0:
        return truths.new_ones(())
    return 1.0 - ((weights * (1.0 - truths) ** p).sum() / total) ** (1.0 / p)


def check_truth_values(probs: torch.Tensor, name: str) -> torch.Tensor:
    """The value check of a loss on truth values, in one reduction over ``probs`` (min and max).

    Returns a 0-dim tensor to add to the loss: 0, or NaN when ``probs`` holds a NaN (or an
    infinity), so that a NaN anywhere in ``probs`` makes the loss NaN, also where the loss does not
    read it. Raises ``ValueError`` naming ``name`` and ``probs`` when a value lies more than
    :data:`TRUTH_TOLERANCE` outside [0, 1]; a NaN is never this error (it propagates, as in torch's
    own losses). The raise is a data-dependent branch (and a host synchronisation on CUDA): it is
    skipped while ``torch.compile`` traces, where the NaN still propagates."""
    if probs.numel() == 0:
        return probs.new_zeros(())
    lo, hi = torch.aminmax(probs.detach())  # NaN when probs holds one
    if not torch.compiler.is_compiling() and bool((lo < -TRUTH_TOLERANCE) | (hi > 1.0 + TRUTH_TOLERANCE)):
        raise ValueError(
            f"{name}: `probs` must be truth values in [0, 1] (tolerance {TRUTH_TOLERANCE:g}), "
            f"got values in [{lo.item():.4g}, {hi.item():.4g}]"
        )
    return (lo + hi) * 0.0
