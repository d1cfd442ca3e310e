"""SAM 1 and SAM 2.1 side by side, in one run: what each backbone costs the pseudo-labelling job.

For each model (random weights: speed does not depend on their values):

- image encoder, seconds per 1024-px input image: eager PyTorch fp32 (and bf16), ONNX Runtime;
- mask decoder, milliseconds per box, 1 and 16 boxes per call on a cached embedding;
- cache entry bytes per image at fp16 and fp32 (every level the decoder reads);
- the whole ``wsseg-fast pseudo-label --method sam-box`` job on ``--images`` images of 480x360
  (the demo's shapes, resized): images per second cold (empty cache) and warm (every embedding
  cached), each run a fresh process, per backend.

    python benchmarks/backbones.py --threads 2 [--models vit_b sam2.1_hiera_t ...] [--name backbones]

Writes ``benchmarks/results/<name>.json`` and ``.md``. Goals: the cold job with sam2.1_hiera_t at least
4x the images per second of vit_b (same backend), and a warm job at least 10x its own cold job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsseg_fast.cache import EmbeddingCache
from wsseg_fast.data import make_demo
from wsseg_fast.io import atomic_write_json, atomic_write_text
from wsseg_fast.sam import ImageEncoderRunner, SamEngine, build_image_encoder, export_onnx

HERE = Path(__file__).resolve().parent
MODELS = ("vit_b", "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+")


def best(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def street_sized(work: Path, images: int) -> Path:
    """``images`` demo images resized to 480x360, their boxes scaled alike (a COCO set under ``work``)."""
    root = work / "data"
    if (root / "annotations.json").exists():
        return root
    make_demo(work / "demo", images=images, seed=0)
    coco = json.loads((work / "demo" / "annotations.json").read_text())
    (root / "images").mkdir(parents=True)
    for record in coco["images"]:
        with Image.open(work / "demo" / "images" / record["file_name"]) as im:
            sx, sy = 480 / im.width, 360 / im.height
            im.convert("RGB").resize((480, 360), Image.BILINEAR).save(root / "images" / record["file_name"])
        record.update(width=480, height=360)
        for ann in coco["annotations"]:
            if ann["image_id"] == record["id"]:
                x, y, w, h = ann["bbox"]
                ann["bbox"] = [x * sx, y * sy, w * sx, h * sy]
                for key in ("segmentation", "points", "scribbles", "area"):
                    ann.pop(key, None)
    atomic_write_json(root / "annotations.json", coco)
    return root


def encoder_seconds(model: str, repeats: int, work: Path) -> dict:
    encoder = build_image_encoder(model)
    x = torch.randn(1, 3, encoder.img_size, encoder.img_size, generator=torch.Generator().manual_seed(0))
    out = {}
    for precision in ("fp32", "bf16"):
        runner = ImageEncoderRunner(encoder, "torch", precision=precision)
        out[f"torch_{precision}"] = best(lambda r=runner: r(x), repeats)
    onnx = export_onnx(encoder, work / f"{model}.onnx")
    runner = ImageEncoderRunner(encoder, "onnxruntime", model_file=str(onnx))
    out["onnxruntime"] = best(lambda: runner(x), repeats)
    return out


def decoder_and_cache(model: str, image: np.ndarray, work: Path) -> dict:
    out = {}
    for dtype in ("fp16", "fp32"):
        cache = EmbeddingCache(work / f"cache-{model}-{dtype}", dtype=dtype)
        engine = SamEngine(model, cache=cache)
        [embedding] = engine.embed([image])
        out[f"cache_bytes_{dtype}"] = sum(e.size for e in cache.entries())
    rng = np.random.default_rng(0)
    for n in (1, 16):
        xy = rng.uniform(0, 300, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(30, 150, (n, 2))], 1).astype(np.float32)
        seconds = best(lambda b=boxes: engine.predict(embedding, boxes=b), 5)
        out[f"decoder_ms_per_box_{n}"] = 1e3 * seconds / n
    return out


def job(model: str, data: Path, cache: Path, out: Path, backend: str, threads: int) -> float:
    """Images per second of one pseudo-label run in a fresh process (the job's own time)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "wsseg_fast",
        "pseudo-label",
        "--coco",
        str(data / "annotations.json"),
        "--method",
        "sam-box",
        "--model",
        model,
        "--backend",
        backend,
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--threads",
        str(threads),
        "--quiet",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    run = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])
    return run["images_labelled"] / run["seconds"]


def measure(model: str, args, work: Path, data: Path) -> dict:
    print(f"{model}: encoder", flush=True)
    row = {"model": model, **encoder_seconds(model, args.repeats, work)}
    image = np.asarray(Image.open(next((data / "images").iterdir())).convert("RGB"))
    row.update(decoder_and_cache(model, image, work))
    for backend in args.backends:
        cache = work / f"job-cache-{model}-{backend}"
        shutil.rmtree(cache, ignore_errors=True)
        print(f"{model}: job ({backend})", flush=True)
        row[f"cold_{backend}"] = job(model, data, cache, work / "cold", backend, args.threads)
        row[f"warm_{backend}"] = job(model, data, cache, work / "warm", backend, args.threads)
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict], args) -> str:
    base = next((r for r in rows if r["model"] == "vit_b"), rows[0])
    lines = [
        f"# SAM backbones side by side ({args.threads} thread(s), load {os.getloadavg()[0]:.1f} at the end)",
        "",
        f"`python benchmarks/backbones.py --threads {args.threads}`; encoder on one 1024-px input (best of "
        f"{args.repeats}), decoder on one cached embedding (best of 5), job = `pseudo-label --method sam-box` on "
        f"{args.images} images of 480x360, fresh process per run.",
        "",
        "| model | encoder s/img eager | bf16 | onnxruntime | decoder ms/box (1 / 16 per call) | cache KiB/img "
        "fp16 / fp32 | " + " | ".join(f"job img/s cold / warm ({b})" for b in args.backends) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(args.backends),
    ]
    for r in rows:
        jobs = " | ".join(f"{r[f'cold_{b}']:.3f} / {r[f'warm_{b}']:.2f}" for b in args.backends)
        lines.append(
            f"| {r['model']} | {r['torch_fp32']:.2f} | {r['torch_bf16']:.2f} | {r['onnxruntime']:.2f} | "
            f"{r['decoder_ms_per_box_1']:.1f} / {r['decoder_ms_per_box_16']:.1f} | "
            f"{r['cache_bytes_fp16'] / 1024:.0f} / {r['cache_bytes_fp32'] / 1024:.0f} | {jobs} |"
        )
    lines.append("")
    for r in rows:
        for b in args.backends:
            lines.append(
                f"- {r['model']} ({b}): cold job {r[f'cold_{b}'] / base[f'cold_{b}']:.2f}x vit_b's, "
                f"warm job {r[f'warm_{b}'] / r[f'cold_{b}']:.1f}x its cold job"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default="/tmp/wsseg-backbones")
    parser.add_argument("--name", default="backbones", help="results file name in benchmarks/results/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = street_sized(work, args.images)
    rows = [measure(model, args, work, data) for model in args.models]
    results = {"threads": args.threads, "images": args.images, "rows": rows}
    atomic_write_json(HERE / "results" / f"{args.name}.json", results)
    table = markdown(rows, args)
    atomic_write_text(HERE / "results" / f"{args.name}.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
