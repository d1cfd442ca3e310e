"""slic `cpu` vs scikit-image's `slic`, timed interleaved: one call of each in turn,
so both see the same load on a shared machine (the pytest-benchmark suite times them
minutes apart). Prints the median of each, their ratio and the SLIC energy ratio.

    OMP_NUM_THREADS=1 python -m benchmarks.slic_interleaved [--rounds 7] [--size 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.test_slic import N_SEGMENTS, PHOTOS, photo, skimage_slic
from wsseg_fast.ops import slic
from wsseg_fast.reference import slic_energy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    print(f"| photo {args.size}² | cpu ms | scikit-image ms | cpu speedup | energy cpu / scikit-image |")
    print("|---|---|---|---|---|")
    for name in PHOTOS:
        image = photo(name, args.size)
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
        ours, theirs = slic(tensor, N_SEGMENTS, backend="cpu"), skimage_slic(image)  # warm-up
        times = {"cpu": [], "skimage": []}
        for _ in range(args.rounds):
            start = time.perf_counter()
            slic(tensor, N_SEGMENTS, backend="cpu")
            times["cpu"].append(time.perf_counter() - start)
            start = time.perf_counter()
            skimage_slic(image)
            times["skimage"].append(time.perf_counter() - start)
        cpu, sk = (1e3 * float(np.median(times[k])) for k in ("cpu", "skimage"))
        energy = slic_energy(tensor, ours, N_SEGMENTS) / slic_energy(tensor, torch.from_numpy(theirs)[None], N_SEGMENTS)
        print(f"| {name} | {cpu:.1f} | {sk:.1f} | {sk / cpu:.1f}x | {energy.item():.2f} |")


if __name__ == "__main__":
    main()
