"""Measure the pseudo-labelling goals with SAM vit_b (random weights saved here).

1. Cold vs warm embedding cache: ``wsseg-fast pseudo-label --method sam-box`` on 4
   demo images, each run a fresh process; reports whole-process wall time and the
   job's own time (``runs.jsonl``, without interpreter start-up and imports).
2. Image encoder, ONNX Runtime vs eager PyTorch: best of ``--repeats`` on one
   1024x1024 image, same thread count, outputs compared.

    python benchmarks/sam_goals.py [--threads 2] [--work /tmp/wsseg-sam-goals] [--name sam_goals]

Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_job(work: str, out: str, threads: int) -> tuple[float, dict]:
    cmd = [
        sys.executable,
        "-m",
        "wsseg_fast",
        "pseudo-label",
        "--coco",
        f"{work}/demo/annotations.json",
        "--method",
        "sam-box",
        "--model",
        "vit_b",
        "--checkpoint",
        f"{work}/sam_vit_b_random.pth",
        "--cache",
        f"{work}/cache",
        "--out",
        out,
        "--threads",
        str(threads),
        "--quiet",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "runs.jsonl")) as f:
        return wall, json.loads(f.readlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/wsseg-sam-goals")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="sam_goals", help="results file name in benchmarks/results/")
    args = parser.parse_args()

    import shutil

    import torch

    from wsseg_fast.data import make_demo
    from wsseg_fast.sam import ImageEncoderRunner, build_image_encoder, build_sam, export_onnx

    torch.set_num_threads(args.threads)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    ckpt = f"{args.work}/sam_vit_b_random.pth"
    torch.save(build_sam("vit_b").state_dict(), ckpt)
    make_demo(f"{args.work}/demo", images=4, seed=0)

    cold_wall, cold = run_job(args.work, f"{args.work}/out-cold", args.threads)
    warm_wall, warm = run_job(args.work, f"{args.work}/out-warm", args.threads)
    assert cold["encoded"] == 4 and warm["cache_hits"] == 4, (cold, warm)
    same = all(
        open(f"{args.work}/out-cold/labels/{f}", "rb").read() == open(f"{args.work}/out-warm/labels/{f}", "rb").read()
        for f in os.listdir(f"{args.work}/out-cold/labels")
    )

    encoder = build_image_encoder("vit_b", ckpt)
    start = time.perf_counter()
    onnx_path = export_onnx(encoder, f"{args.work}/vit_b_encoder.onnx")
    export_seconds = time.perf_counter() - start
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    timings, outputs = {}, {}
    for name, runner in (
        ("torch", ImageEncoderRunner(encoder, "torch")),
        ("onnxruntime", ImageEncoderRunner(encoder, "onnxruntime", model_file=onnx_path)),
    ):
        runner(x)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs[name] = runner(x)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    max_diff = float((outputs["torch"] - outputs["onnxruntime"]).abs().max())

    results = {
        "threads": args.threads,
        "cold": {"process_seconds": round(cold_wall, 2), "job_seconds": cold["seconds"]},
        "warm": {"process_seconds": round(warm_wall, 2), "job_seconds": warm["seconds"]},
        "warm_speedup_process": round(cold_wall / warm_wall, 2),
        "warm_speedup_job": round(cold["seconds"] / warm["seconds"], 2),
        "cold_and_warm_labels_identical": same,
        "encoder_seconds": {k: round(v, 3) for k, v in timings.items()},
        "onnxruntime_speedup": round(timings["torch"] / timings["onnxruntime"], 2),
        "onnxruntime_max_abs_diff": max_diff,
        "onnx_export_seconds": round(export_seconds, 1),
    }
    md = "\n".join(
        [
            f"# SAM goals (vit_b, random weights, 4 demo images, {args.threads} threads)",
            "",
            "| measure | cold | warm | speed-up |",
            "|---|---|---|---|",
            f"| whole process (s) | {cold_wall:.2f} | {warm_wall:.2f} | {results['warm_speedup_process']}x |",
            f"| job only (s) | {cold['seconds']:.2f} | {warm['seconds']:.2f} | {results['warm_speedup_job']}x |",
            "",
            f"| image encoder, 1x3x1024x1024 | seconds (best of {args.repeats}) |",
            "|---|---|",
            f"| torch eager | {timings['torch']:.3f} |",
            f"| onnxruntime | {timings['onnxruntime']:.3f} |",
            "",
            f"ONNX Runtime speed-up: {results['onnxruntime_speedup']}x; max |diff| {max_diff:.2e}; "
            f"cold/warm labels identical: {same}",
            "",
        ]
    )
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", args.name + ".json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(HERE, "results", args.name + ".md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
