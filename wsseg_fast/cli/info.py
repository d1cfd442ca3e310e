"""``info`` (versions, the extension, backends per op) and ``ops-demo`` (WPS-SAM set matching)."""

from __future__ import annotations

import sys
import time

import torch

import wsseg_fast
from wsseg_fast import _native
from wsseg_fast.cli.common import UsageError
from wsseg_fast.matching import HungarianMatcher, PromptSetCriterion
from wsseg_fast.ops import OP_SPECS, available_backends
from wsseg_fast.reference.matching import match_per_image
from wsseg_fast.sam.registry import available_models


def add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="versions, the extension, the SAM models and the backend of each op here",
    )
    p.add_argument("--device", default="cpu", help="device to check the backends for (default: cpu)")
    p.set_defaults(func=run_info)


def run_info(args) -> int:
    print(
        f"wsseg_fast {wsseg_fast.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"{torch.get_num_threads()} CPU threads, GPU: {torch.cuda.is_available()}"
    )
    print(f"compiled extension: {'loaded' if _native.LOAD_ERROR is None else 'NOT loaded: ' + _native.LOAD_ERROR}")
    print("\nSAM models (--model):")
    for name, problem in available_models().items():
        print(f"  {name:16s} {problem or 'available'}")
    for op in sorted(OP_SPECS):
        print(f"\n{op}:")
        for backend, status in available_backends(op, args.device).items():
            print(f"  {backend:7s} {status}")
    return 0


def add_ops_demo(sub) -> None:
    p = sub.add_parser("ops-demo", help="a small end-to-end run of the ops: WPS-SAM set matching and loss")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--queries", type=int, default=25)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_ops_demo)


def run_ops_demo(args) -> int:
    """Random prompter outputs and targets -> batched matching -> loss -> backward,
    with the per-image SciPy matcher as the check and the baseline."""
    if args.batch < 1 or args.queries < 1 or args.classes < 1:
        raise UsageError("--batch, --queries and --classes must be >= 1")
    g = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(args.batch, args.queries, args.classes + 1, generator=g, requires_grad=True)
    prompts = torch.randn(args.batch, args.queries, 2, 256, generator=g, requires_grad=True)
    targets = []
    for _ in range(args.batch):
        n = int(torch.randint(1, args.queries + 1, (1,), generator=g))
        targets.append(
            {
                "labels": torch.randint(0, args.classes, (n,), generator=g),
                "prompts": torch.randn(n, 2, 256, generator=g),
            }
        )
    outputs = {"pred_logits": logits, "pred_prompts": prompts}
    matcher = HungarianMatcher()
    criterion = PromptSetCriterion(args.classes, matcher)

    def best_of_5(fn):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return result, min(times)

    pairs, batched = best_of_5(lambda: matcher(outputs, targets))
    reference, looped = best_of_5(lambda: match_per_image(outputs, targets))

    with torch.no_grad():
        cost = [
            matcher.cost_matrix(logits[b : b + 1], prompts[b : b + 1], t["labels"][None], t["prompts"][None])[0]
            for b, t in enumerate(targets)
        ]
    ours = sum(float(c[q, t].sum()) for c, (q, t) in zip(cost, pairs))
    theirs = sum(float(c[q, t].sum()) for c, (q, t) in zip(cost, reference))
    losses = criterion(outputs, targets)
    losses["loss"].backward()
    losses = {k: float(v.detach()) for k, v in losses.items() if k.startswith("loss")}
    print(f"matched {sum(len(q) for q, _ in pairs)} query/target pairs over {args.batch} images")
    print(f"total matching cost: batched {ours:.6f}, per-image SciPy {theirs:.6f}")
    print(f"matching time: batched {batched * 1e3:.2f} ms, per-image SciPy loop {looped * 1e3:.2f} ms")
    print(
        f"loss {losses['loss']:.4f} (cls {losses['loss_cls']:.4f}, reg {losses['loss_reg']:.4f}); "
        f"grad norms: logits {float(logits.grad.norm()):.4f}, prompts {float(prompts.grad.norm()):.4f}"
    )
    if abs(ours - theirs) > 1e-4 * max(1.0, abs(theirs)):
        print("error: the batched matching is not optimal", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    add_info(sub)
    add_ops_demo(sub)
