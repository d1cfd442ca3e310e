"""Image-tag path timings.

1. train-cam epoch on cached embeddings vs. an epoch that re-runs SAM's image encoder
   (random weights of --model) on every image: the ratio of epoch times.
2. the share of the SSC step (CAM upsampling + ssc_alignment_loss) in a training step.
3. cam-sam-rw refinement of one image: grid prompts through the decoder, mask_affinity and
   the walk, at --size pixels (long side) and at the image's own resolution.

    OMP_NUM_THREADS=1 python benchmarks/bench_tags.py --model vit_b --images 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from wsseg_fast.data import CocoWeakDataset, make_demo
from wsseg_fast.models.cam import CamClassifier, cam_loss
from wsseg_fast.ops import ssc_alignment_loss
from wsseg_fast.pipelines.cam import embed_dataset, image_superpixels, letterboxed, tagged_images
from wsseg_fast.pipelines.cam_refine import grid_prompt_masks, refine_cams
from wsseg_fast.sam import SamEngine


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    make_demo(tmp, images=args.images, seed=0)
    dataset = CocoWeakDataset(f"{tmp}/annotations.json")
    indices, targets = tagged_images(dataset)
    engine = SamEngine(args.model)
    features, valid = embed_dataset(engine, dataset, indices)  # no cache: this encodes once
    torch.manual_seed(0)
    net = CamClassifier(features.shape[1], targets.shape[1])
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sp = image_superpixels(*letterboxed(dataset, indices, 4 * features.shape[-1]), 64)

    def step(x, ssc):
        logits, _, cams = net(x, valid)
        loss = cam_loss(logits, targets)["total"]
        if ssc:
            loss = loss + ssc_alignment_loss(
                F.interpolate(cams, size=sp.shape[1:], mode="bilinear"), sp, present=targets, erode=2
            )
        opt.zero_grad()
        loss.backward()
        opt.step()

    cached = timed(lambda: step(features, False))
    images = [dataset.load_image(dataset.images[i]) for i in indices]

    def recompute():
        emb = engine.embed(images)  # engine without cache: the encoder runs every time
        step(torch.stack([e.tensor.float() for e in emb]), False)

    encoder = timed(recompute, repeat=1)
    with_ssc = timed(lambda: step(features, True))
    print(f"model {args.model}, {len(indices)} images, threads {torch.get_num_threads()}")
    print(
        f"epoch on cached embeddings {cached * 1e3:.1f} ms; re-encoding {encoder * 1e3:.1f} ms; "
        f"ratio {encoder / cached:.0f}x"
    )
    print(
        f"training step without SSC {cached * 1e3:.1f} ms, with SSC {with_ssc * 1e3:.1f} ms "
        f"(SSC share {(with_ssc - cached) / with_ssc:.0%})"
    )

    emb = engine.embed(images[:1])[0]
    h, w = images[0].shape[:2]
    cams = torch.rand(1, targets.shape[1], *features.shape[-2:])
    masks = None

    def prompts():
        nonlocal masks
        with torch.no_grad():
            masks = grid_prompt_masks(engine.sam, emb.tensor.float()[None], (h, w), 16)

    t_prompts = timed(prompts, repeat=1)
    for size in (args.size, max(h, w)):
        s = min(1.0, size / max(h, w))
        shape = (max(1, round(h * s)), max(1, round(w * s)))
        m = F.interpolate(masks[None], size=shape, mode="bilinear")
        c = F.interpolate(cams, size=shape, mode="bilinear")
        t_walk = timed(lambda c=c, m=m: refine_cams(c, m, source_kind="masks"), repeat=1)
        print(
            f"cam-sam-rw at {shape[0]}x{shape[1]}: grid prompts (256 points) {t_prompts * 1e3:.0f} ms, "
            f"mask_affinity + walk {t_walk * 1e3:.0f} ms"
        )


if __name__ == "__main__":
    main()
