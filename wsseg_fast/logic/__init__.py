"""Fuzzy logic for weak supervision: operators (LTN semantics), fused constraint
losses and knowledge bases compiled from weak annotations.

    from wsseg_fast.logic import compile_knowledge_base
    kb = compile_knowledge_base(annotations, num_classes=3, image_size=(256, 256))
    loss, satisfaction = kb(probs)          # probs [B, C, H, W] in [0, 1]

The operators live in :mod:`wsseg_fast.fuzzy` (a layer below the references and the
ops, which use them) and the fused losses in :mod:`wsseg_fast.ops`; both are
re-exported here.
"""

from __future__ import annotations

from wsseg_fast.fuzzy import (
    EPS,
    and_luk,
    and_min,
    and_prod,
    equivalence,
    exists,
    forall,
    implies_godel,
    implies_goguen,
    implies_kleene_dienes,
    implies_luk,
    implies_reichenbach,
    negation,
    or_luk,
    or_max,
    or_prob_sum,
    pi_0,
    pi_1,
    pmean,
    pmean_error,
    sat_agg,
)
from wsseg_fast.logic.knowledge_base import Constraint, KnowledgeBase, class_truths, compile_knowledge_base
from wsseg_fast.logic.priors import BoxSize, Contains, Excludes, OneClassPerPixel, Pairwise, load_priors
from wsseg_fast.ops.box_constraint import box_constraint_loss
from wsseg_fast.ops.pairwise_constraint import pairwise_constraint_loss

__all__ = [
    "EPS",
    "BoxSize",
    "Constraint",
    "Contains",
    "Excludes",
    "OneClassPerPixel",
    "Pairwise",
    "load_priors",
    "KnowledgeBase",
    "and_luk",
    "and_min",
    "and_prod",
    "box_constraint_loss",
    "class_truths",
    "compile_knowledge_base",
    "equivalence",
    "exists",
    "forall",
    "implies_godel",
    "implies_goguen",
    "implies_kleene_dienes",
    "implies_luk",
    "implies_reichenbach",
    "negation",
    "or_luk",
    "or_max",
    "or_prob_sum",
    "pairwise_constraint_loss",
    "pi_0",
    "pi_1",
    "pmean",
    "pmean_error",
    "sat_agg",
]
