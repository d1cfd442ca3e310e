"""One WPS-SAM prompter training step: batched matcher vs DETR's per-image SciPy loop.

Same model, batch, targets and loss in both rows; only the matcher differs
(``batched``: wsseg_fast.matching.HungarianMatcher, one batched solver call;
``scipy``: wsseg_fast.reference.matching.match_per_image, one SciPy call per
image). Steps of the two rows alternate so that load changes hit both. Each
row reports the median over steps of: forward, matcher, loss+backward,
optimizer step, whole step (ms).

    python benchmarks/prompter_step.py                       # paper-size model, B=16, Q=25, 64x64 embeddings
    python benchmarks/prompter_step.py --small               # d=32, 1+1 layers, 16x16 embeddings

Absolute times on a shared machine are noise; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wsseg_fast.matching import HungarianMatcher, PromptSetCriterion
from wsseg_fast.models.prompter import QueryPrompter
from wsseg_fast.reference.matching import match_per_image


class ScipyLoopMatcher(HungarianMatcher):
    """DETR's matcher: per image a cost matrix and one SciPy call; same [B, Q] result format."""

    def match(self, outputs, targets):
        batch, queries = outputs["pred_logits"].shape[:2]
        out = torch.full((batch, queries), -1, dtype=torch.long)
        for b, (rows, cols) in enumerate(match_per_image(outputs, targets, self.cost_class, self.cost_prompt)):
            out[b, rows] = cols
        return out


class Timed:
    """Wraps a matcher's ``match`` and records its wall time."""

    def __init__(self, matcher):
        self.matcher, self.seconds = matcher, 0.0
        self._match = matcher.match
        matcher.match = self

    def __call__(self, outputs, targets):
        t = time.perf_counter()
        out = self._match(outputs, targets)
        self.seconds = time.perf_counter() - t
        return out


def make_batch(batch, queries, classes, max_targets, grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, 256, grid, grid, generator=g)
    sizes = torch.randint(1, max_targets + 1, (batch,), generator=g).tolist()
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=g), "prompts": torch.randn(n, 2, 256, generator=g)}
        for n in sizes
    ]
    return embeddings, targets


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--queries", type=int, default=25)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--max-targets", type=int, default=20)
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (after one warm-up step each)")
    p.add_argument("--small", action="store_true", help="d=32, 1+1 layers, FFN 64, 16x16 (tiny SAM) embeddings")
    args = p.parse_args(argv)
    sizes = (
        dict(embed_size=16, d_model=32, nhead=4, dim_feedforward=64, num_encoder_layers=1, num_decoder_layers=1)
        if args.small
        else {}
    )
    grid = 16 if args.small else 64
    embeddings, targets = make_batch(args.batch, args.queries, args.classes, args.max_targets, grid)
    rows = {}
    for name, matcher in (("batched", HungarianMatcher()), ("scipy", ScipyLoopMatcher())):
        torch.manual_seed(0)
        model = QueryPrompter(args.classes, num_queries=args.queries, **sizes)
        rows[name] = dict(
            model=model,
            crit=PromptSetCriterion(args.classes, matcher),
            timer=Timed(matcher),
            opt=torch.optim.Adam(model.parameters(), 1e-4),
            times=[],
        )
    for step in range(args.steps + 1):
        for r in rows.values():
            t0 = time.perf_counter()
            out = r["model"](embeddings)
            t1 = time.perf_counter()
            losses = r["crit"](out, targets)
            r["opt"].zero_grad(set_to_none=True)
            losses["loss"].backward()
            t2 = time.perf_counter()
            r["opt"].step()
            t3 = time.perf_counter()
            if step:
                m = r["timer"].seconds
                r["times"].append((t1 - t0, m, t2 - t1 - m, t3 - t2, t3 - t0))
    print(
        f"torch threads {torch.get_num_threads()}, B={args.batch}, Q={args.queries}, C={args.classes}, "
        f"targets 1..{args.max_targets}, embedding 256x{grid}x{grid}, {'small' if args.small else 'paper-size'} "
        f"model, median of {args.steps} steps (ms)\n"
    )
    print("| matcher | forward | matcher | loss+backward | optimizer | step | matcher share |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for name, r in rows.items():
        med[name] = [statistics.median(col) * 1e3 for col in zip(*r["times"])]
        f, m, b, o, s = med[name]
        print(f"| {name} | {f:.1f} | {m:.2f} | {b:.1f} | {o:.1f} | {s:.1f} | {100 * m / s:.2f}% |")
    print(
        f"\nstep scipy / batched: {med['scipy'][4] / med['batched'][4]:.3f}x; "
        f"matcher scipy / batched: {med['scipy'][1] / med['batched'][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
