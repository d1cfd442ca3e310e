"""One `pretrain-sam` step for candidate SAM sizes, side by side: which SAM can learn on a CPU?

    OMP_NUM_THREADS=1 python benchmarks/pretrain_step.py --out benchmarks/results/pretrain_step.md

A step is the real one (`wsseg_fast.pipelines.pretrain.instance_losses` on every image of a batch
of 4 generated demo images, 8 instances each, a box or point prompt then one corrective click;
backward; AdamW), timed after a warm-up. Candidates other than `tiny` are registered for the run
only. Reports seconds per step and the image encoder's share (forward + backward).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsseg_fast.data import CocoWeakDataset, make_demo
from wsseg_fast.io import atomic_write_text
from wsseg_fast.pipelines.pretrain import PretrainConfig, instance_losses, prepare_samples
from wsseg_fast.sam.model import MODEL_CONFIGS, Sam1Model, SamConfig, build_sam

CANDIDATES = {
    "tiny (64 wide, 2 blocks, 256 px)": "tiny",
    "128 wide, 4 blocks, 256 px": SamConfig(128, 4, 4, (1, 3), img_size=256, window_size=8),
    "192 wide, 4 blocks, 384 px": SamConfig(192, 4, 4, (1, 3), img_size=384, window_size=8),
    "128 wide, 4 blocks, 512 px": SamConfig(128, 4, 4, (1, 3), img_size=512, window_size=8),
}


def time_step(model: str, data: Path, rounds: int) -> dict:
    sam = Sam1Model(model, build_sam(model))  # the candidates are SAM 1 configs registered on the fly
    samples = prepare_samples(CocoWeakDataset(data / "annotations.json"), sam, print)[:4]
    cfg = PretrainConfig(coco="", out="")
    sam.module.train()
    optimizer = torch.optim.AdamW(sam.module.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(0)
    times, encoder = [], []
    for _ in range(rounds + 1):  # the first is a warm-up
        began = time.perf_counter()
        levels = sam.encode(torch.stack([s.pixels for s in samples]))
        encoded = time.perf_counter()
        loss = sum(
            instance_losses(sam, [t[j] for t in levels], s, torch.arange(min(8, len(s.masks))), cfg, generator)[0]
            for j, s in enumerate(samples)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
        encoder.append(encoded - began)
    n_params = sum(p.numel() for p in sam.image_encoder.parameters())
    return {
        "seconds_per_step": min(times[1:]),
        "encoder_forward_share": min(encoder[1:]) / min(times[1:]),
        "encoder_params": n_params,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the Markdown table here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        make_demo(Path(tmp), images=4, seed=5)
        rows = {}
        for name, config in CANDIDATES.items():
            model = config if isinstance(config, str) else "_candidate"
            if not isinstance(config, str):
                MODEL_CONFIGS[model] = config
            try:
                rows[name] = time_step(model, Path(tmp), args.rounds)
            finally:
                MODEL_CONFIGS.pop("_candidate", None)
            print(f"{name}: {rows[name]['seconds_per_step']:.3f} s/step", flush=True)
    base = rows[next(iter(rows))]["seconds_per_step"]
    lines = ["| SAM | encoder params | s/step | vs tiny | encoder forward share |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['encoder_params'] / 1e6:.2f} M | {r['seconds_per_step']:.3f} | "
            f"{r['seconds_per_step'] / base:.2f}x | {100 * r['encoder_forward_share']:.0f} % |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(
            args.out,
            f"# One pretrain-sam step (4 images x 8 instances, 1 click)\n\n"
            f"`OMP_NUM_THREADS=1 python benchmarks/pretrain_step.py`, best of {args.rounds}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n\n{table}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
