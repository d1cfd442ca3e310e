"""Ratio table (Markdown), CSV and PNG bar chart from a pytest-benchmark JSON.

    python benchmarks/report.py benchmarks/results/latest.json [--out-dir benchmarks/results]

For every group (one op at one shape) each implementation is compared with the
op's `torch` reference of the same run (or another implementation of the run,
`--reference dense-psa`): `speedup` = reference median time /
implementation median time (> 1 is faster). Extra numeric fields recorded by a
suite whose name starts with `peak_` (memory) are compared the same way
(`<field> ratio` = reference / implementation, > 1 is leaner).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

REFERENCE = "torch"


def load_rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    rows = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "op" not in info:
            continue
        row = {
            "group": bench.get("group") or info["op"],
            "op": info["op"],
            "shape": "x".join(str(s) for s in info.get("shape", [])),
            "impl": info["impl"],
            "kind": info.get("kind", ""),
            "median_s": bench["stats"]["median"],
        }
        row.update({k: v for k, v in info.items() if k.startswith("peak_")})
        rows.append(row)
    return rows


def add_ratios(rows: list[dict], reference: str = REFERENCE) -> list[str]:
    """Fill speedup (and peak_* ratios) against the group's reference; returns the peak_* field names."""
    by_group = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    peaks = sorted({k for row in rows for k in row if k.startswith("peak_")})
    for group_rows in by_group.values():
        ref = next((r for r in group_rows if r["impl"] == reference), None)
        for row in group_rows:
            row["speedup"] = ref["median_s"] / row["median_s"] if ref else float("nan")
            for key in peaks:
                ok = ref and row.get(key) and ref.get(key)
                row[f"{key}_ratio"] = ref[key] / row[key] if ok else float("nan")
    return peaks


def _ratio_cell(row: dict, key: str) -> str:
    """The ratio, or the raw value where the reference did not record one."""
    ratio = row[f"{key}_ratio"]
    if ratio == ratio:
        return f"{ratio:.2f}x"
    return f"({row[key]:g})" if row.get(key) is not None else "—"


def markdown(rows: list[dict], peaks: list[str], reference: str = REFERENCE) -> str:
    head = ["group", "impl", "kind", "median ms", f"speedup vs {reference}"] + [f"{p} ratio" for p in peaks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(rows, key=lambda r: (r["group"], -r["speedup"] if r["speedup"] == r["speedup"] else 0)):
        cells = [row["group"], row["impl"], row["kind"], f"{row['median_s'] * 1e3:.3f}", f"{row['speedup']:.2f}x"]
        cells += [_ratio_cell(row, p) for p in peaks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], peaks: list[str], path: Path) -> None:
    fields = ["op", "shape", "impl", "kind", "median_s", "speedup"] + peaks + [f"{p}_ratio" for p in peaks]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_png(rows: list[dict], path: Path, reference: str = REFERENCE) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({r["group"] for r in rows})
    impls = sorted({r["impl"] for r in rows}, key=lambda i: (i != reference, i))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        values = []
        for group in groups:
            match = [r["speedup"] for r in rows if r["group"] == group and r["impl"] == impl]
            values.append(match[0] if match else 0.0)
        ax.bar([g + k * width for g in range(len(groups))], values, width, label=impl)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel(f"speedup vs {reference} (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json=...)")
    parser.add_argument("--reference", default=REFERENCE, help="the implementation ratios are against (default: torch)")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="where the .md/.csv/.png go (default: beside the JSON)"
    )
    args = parser.parse_args(argv)
    if not args.json.is_file():
        print(f"report: no such file {args.json}", file=sys.stderr)
        return 2
    rows = load_rows(args.json)
    if not rows:
        print(f"report: {args.json} holds no wsseg_fast benchmarks", file=sys.stderr)
        return 1
    peaks = add_ratios(rows, args.reference)
    out_dir = args.out_dir or args.json.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.json.stem
    table = markdown(rows, peaks, args.reference)
    print(table)
    (out_dir / f"{stem}.md").write_text(table + "\n")
    write_csv(rows, peaks, out_dir / f"{stem}.csv")
    if write_png(rows, out_dir / f"{stem}.png", args.reference):
        print(f"\nwrote {out_dir / (stem + '.md')}, .csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
