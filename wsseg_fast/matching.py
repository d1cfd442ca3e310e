"""Set matching for DETR-style query prompters (WPS-SAM).

The prompter predicts, for each of Q queries, class logits over C classes plus
"no object" and K prompt tokens of width D. Targets are per image: class labels
and the teacher's prompt tokens (SAM's prompt encoder on the weak label).

:class:`HungarianMatcher` builds the ``[B, Q, T_max]`` cost of every image at
once and solves all assignments in one batched call: no per-image Python
loop, and on CUDA no device-to-host copy. :class:`PromptSetCriterion` turns the
matching into WPS-SAM's loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsseg_fast.ops import batch_linear_assignment

Targets = Sequence[Mapping[str, torch.Tensor]]


def pad_targets(targets: Targets, prompt_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image targets -> ``labels [B, T_max]``, ``prompts [B, T_max, K, D]``, ``valid [B, T_max]``."""
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
        raise TypeError("targets must be a list of dicts with 'labels' and 'prompts'")
    for b, t in enumerate(targets):
        if "labels" not in t or "prompts" not in t:
            raise ValueError(f"targets[{b}] needs 'labels' [T] and 'prompts' [T, K, D]; got keys {sorted(t)}")
        labels, prompts = t["labels"], t["prompts"]
        if labels.dim() != 1 or prompts.dim() != 3 or prompts.shape[0] != labels.shape[0]:
            raise ValueError(
                f"targets[{b}]: expected labels [T] and prompts [T, K, D] with the same T; got "
                f"{tuple(labels.shape)} and {tuple(prompts.shape)}"
            )
        if tuple(prompts.shape[1:]) != tuple(prompt_shape):
            raise ValueError(
                f"targets[{b}]['prompts'] has tokens of shape {tuple(prompts.shape[1:])}, the predictions "
                f"{tuple(prompt_shape)}"
            )
    labels = nn.utils.rnn.pad_sequence([t["labels"].long() for t in targets], batch_first=True)
    prompts = nn.utils.rnn.pad_sequence([t["prompts"] for t in targets], batch_first=True)
    sizes = torch.tensor([len(t["labels"]) for t in targets])
    valid = torch.arange(labels.shape[1]) < sizes[:, None]
    return labels, prompts, valid.to(labels.device)


class HungarianMatcher(nn.Module):
    """Optimal one-to-one matching of queries to targets, for a whole batch.

    Cost of query q for target t: ``cost_class * -softmax(logits_q)[label_t] +
    cost_prompt * ||prompts_q - prompts_t||_2`` on the flattened ``K x D``
    tokens (WPS-SAM: alpha = 10, beta = 1). Outputs with ``pred_boxes`` (a box head) add
    ``cost_box * L1`` to the targets' ``boxes``, as DETR does.
    """

    def __init__(
        self, cost_class: float = 10.0, cost_prompt: float = 1.0, *, cost_box: float = 5.0, backend: str = "auto"
    ):
        super().__init__()
        if cost_class < 0 or cost_prompt < 0 or cost_class + cost_prompt == 0:
            raise ValueError("HungarianMatcher: cost_class and cost_prompt must be >= 0, not both 0")
        self.cost_class = cost_class
        self.cost_prompt = cost_prompt
        self.cost_box = cost_box
        self.backend = backend

    def cost_matrix(
        self, logits: torch.Tensor, prompts: torch.Tensor, labels: torch.Tensor, target_prompts: torch.Tensor
    ) -> torch.Tensor:
        """``[B, Q, T]`` matching costs (padding columns included)."""
        batch, queries, _ = logits.shape
        prob = logits.float().softmax(-1)
        index = labels[:, None, :].expand(batch, queries, labels.shape[1])
        cost_class = -prob.gather(2, index)
        cost_prompt = _euclidean(prompts.flatten(2).float(), target_prompts.flatten(2).float())
        return self.cost_class * cost_class + self.cost_prompt * cost_prompt

    @torch.no_grad()
    def match(self, outputs: Mapping[str, torch.Tensor], targets: Targets) -> torch.Tensor:
        """``[B, Q]`` int64: the target index matched to each query, ``-1`` for none."""
        logits, prompts = _check_outputs(outputs, len(targets))
        batch, queries = logits.shape[:2]
        labels, target_prompts, valid = pad_targets(targets, tuple(prompts.shape[2:]))
        if labels.shape[1] == 0 or queries == 0:
            return torch.full((batch, queries), -1, dtype=torch.long, device=logits.device)
        cost = self.cost_matrix(logits, prompts, labels, target_prompts)
        if "pred_boxes" in outputs:
            cost = cost + self.cost_box * torch.cdist(outputs["pred_boxes"].float(), pad_boxes(targets).float(), p=1)
        # Padding columns cost a constant M above any difference of real
        # matchings: every image then gets the optimum over its own targets,
        # whether Q >= T (all columns matched) or not (as few padding as can be).
        real = cost.masked_select(valid[:, None, :].expand_as(cost))
        spread = (real.amax() - real.amin()) if real.numel() else cost.new_zeros(())
        big = spread * (queries + 1) + 1
        cost = torch.where(valid[:, None, :], cost, big)
        assignment = batch_linear_assignment(cost, check=False, backend=self.backend)
        matched_real = valid.gather(1, assignment.clamp(min=0)) & (assignment >= 0)
        return torch.where(matched_real, assignment, -1)

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Targets) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """DETR's convention: per image ``(query_idx, target_idx)``, sorted by query."""
        return assignment_to_pairs(self.match(outputs, targets), [len(t["labels"]) for t in targets])


def _euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B, Q, D] x [B, T, D] -> [B, Q, T]`` L2 distances as |a|^2 + |b|^2 - 2ab
    in one batched matmul: 4-5x faster than batched ``torch.cdist`` here, and
    accurate enough to rank matchings."""
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1)[:, None, :]
    return torch.baddbmm(sq, a, b.transpose(1, 2), alpha=-2.0).clamp_min_(0).sqrt_()


def assignment_to_pairs(assignment: torch.Tensor, sizes: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[B, Q]`` query->target assignment -> DETR's list of ``(query_idx, target_idx)``.

    Each image matches ``min(Q, T_b)`` pairs, known on the host, so the list is
    built from device tensors without a synchronisation.
    """
    batch, queries = assignment.shape
    width = max(sizes, default=0)
    query_of_target = torch.full((batch, width + 1), queries, dtype=torch.long, device=assignment.device)
    slot = torch.where(assignment >= 0, assignment, width)
    query_ids = torch.arange(queries, device=assignment.device).expand(batch, queries)
    query_of_target.scatter_(1, slot, query_ids)
    sorted_queries, target_order = query_of_target[:, :width].sort(dim=1, stable=True)
    pairs = []
    for b, size in enumerate(sizes):
        n = min(queries, size)
        pairs.append((sorted_queries[b, :n], target_order[b, :n]))
    return pairs


def _check_outputs(outputs: Mapping[str, torch.Tensor], n_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    if "pred_logits" not in outputs or "pred_prompts" not in outputs:
        raise ValueError("outputs needs 'pred_logits' [B, Q, C+1] and 'pred_prompts' [B, Q, K, D]")
    logits, prompts = outputs["pred_logits"], outputs["pred_prompts"]
    if logits.dim() != 3 or prompts.dim() != 4 or logits.shape[:2] != prompts.shape[:2]:
        raise ValueError(
            "outputs: expected pred_logits [B, Q, C+1] and pred_prompts [B, Q, K, D]; got "
            f"{tuple(logits.shape)} and {tuple(prompts.shape)}"
        )
    if logits.shape[0] != n_targets:
        raise ValueError(f"outputs hold {logits.shape[0]} images but targets {n_targets}")
    return logits, prompts


def pad_boxes(targets: Targets) -> torch.Tensor:
    """The targets' ``boxes`` ``[T, 4]`` -> ``[B, T_max, 4]`` (a box head's targets)."""
    if any("boxes" not in t for t in targets):
        raise ValueError("outputs with 'pred_boxes' need targets with 'boxes' [T, 4]")
    return nn.utils.rnn.pad_sequence([t["boxes"] for t in targets], batch_first=True)


class PromptSetCriterion(nn.Module):
    """WPS-SAM's set loss (eq. 4): over the Q queries of each image,
    ``cls_weight * CE`` (unmatched queries target "no object", the last class)
    plus ``reg_weight * SmoothL1`` between a matched query's prompt tokens and
    its target's, averaged over queries and images.

    ``no_object_weight`` down-weights the "no object" class in the CE (DETR
    uses 0.1; WPS-SAM's paper keeps 1). Outputs with ``pred_boxes`` (a box
    head) add ``box_weight * L1`` between matched boxes and the targets'
    ``boxes`` ``[T, 4]`` to the regression term, as DETR does.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        *,
        cls_weight: float = 5.0,
        reg_weight: float = 20.0,
        no_object_weight: float = 1.0,
        box_weight: float = 5.0,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"PromptSetCriterion: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.cls_weight = cls_weight
        self.reg_weight = reg_weight
        self.box_weight = box_weight
        weight = torch.ones(num_classes + 1)
        weight[-1] = no_object_weight
        self.register_buffer("class_weight", weight)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Targets) -> dict[str, torch.Tensor]:
        logits, prompts = _check_outputs(outputs, len(targets))
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {logits.shape[-1]} classes; expected num_classes + 1 = {self.num_classes + 1}"
            )
        assignment = self.matcher.match(outputs, targets)
        labels, target_prompts, _ = pad_targets(targets, tuple(prompts.shape[2:]))
        matched = assignment >= 0
        index = assignment.clamp(min=0)
        if labels.shape[1]:
            target_class = torch.where(matched, labels.gather(1, index), self.num_classes)
            tokens = target_prompts.gather(1, index[:, :, None, None].expand_as(prompts))
        else:
            target_class = torch.full_like(assignment, self.num_classes)
            tokens = torch.zeros_like(prompts)
        loss_cls = F.cross_entropy(logits.transpose(1, 2), target_class, weight=self.class_weight.to(logits.dtype))
        per_query = F.smooth_l1_loss(prompts, tokens.to(prompts.dtype), reduction="none").mean(dim=(2, 3))
        loss_reg = self.reg_weight * (per_query * matched).sum() / max(per_query.numel(), 1)
        if "pred_boxes" in outputs:
            loss_reg = loss_reg + self.box_weight * self._box_l1(outputs["pred_boxes"], targets, index, matched)
        loss_cls = self.cls_weight * loss_cls
        return {"loss": loss_cls + loss_reg, "loss_cls": loss_cls, "loss_reg": loss_reg, "assignment": assignment}

    @staticmethod
    def _box_l1(boxes: torch.Tensor, targets: Targets, index: torch.Tensor, matched: torch.Tensor) -> torch.Tensor:
        """Mean L1 between each matched query's box ``[B, Q, 4]`` and its target's (0 for the others)."""
        target_boxes = pad_boxes(targets).to(boxes)
        if target_boxes.shape[1] == 0:
            return boxes.sum() * 0
        gathered = target_boxes.gather(1, index[:, :, None].expand(-1, -1, 4))
        per_query = (boxes - gathered).abs().mean(-1)
        return (per_query * matched).sum() / max(per_query.numel(), 1)
