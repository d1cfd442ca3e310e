"""Fuzzy logic for weak supervision: operators (LTN semantics), fused constraint
losses and knowledge bases compiled from weak annotations.

    from wsseg_fast.logic import compile_knowledge_base
    kb = compile_knowledge_base(annotations, num_classes=3, image_size=(256, 256))
    loss, satisfaction = kb(probs)          # probs [B, C, H, W] in [0, 1]
"""

from __future__ import annotations

from wsseg_fast.logic.operators import (
    EPS,
    and_luk,
    and_min,
    and_prod,
    class_truths,
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

# The knowledge base uses the fused ops, whose module imports the references,
# which import the operators above: loaded on first use to keep imports acyclic.
_LAZY = {
    "KnowledgeBase": "wsseg_fast.logic.knowledge_base",
    "Constraint": "wsseg_fast.logic.knowledge_base",
    "compile_knowledge_base": "wsseg_fast.logic.knowledge_base",
    "box_constraint_loss": "wsseg_fast.ops.box_constraint",
    "pairwise_constraint_loss": "wsseg_fast.ops.pairwise_constraint",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsseg_fast.logic' has no attribute {name!r}")


__all__ = [
    "EPS", "Constraint", "KnowledgeBase", "and_luk", "and_min", "and_prod", "box_constraint_loss", "class_truths",
    "compile_knowledge_base", "equivalence", "exists", "forall", "implies_godel", "implies_goguen",
    "implies_kleene_dienes", "implies_luk", "implies_reichenbach", "negation", "or_luk", "or_max",
    "or_prob_sum", "pairwise_constraint_loss", "pi_0", "pi_1", "pmean", "pmean_error", "sat_agg",
]
