"""Pool adaptation results over training seeds: one markdown table from several adaptation CSVs.

    python benchmarks/adaptation_seeds.py benchmarks/results/adaptation_graph_HalfCheetah-v5.csv \\
        benchmarks/results/adaptation_graph_HalfCheetah-v5_s1.csv \\
        benchmarks/results/adaptation_graph_HalfCheetah-v5_s2.csv

Rows come from ``adaptation_graph.py`` (or ``adaptation.py``) CSVs of ONE task (the rows do not name it). A
policy named ``"<algorithm> s<N>"`` is training seed N of that algorithm; a name without the suffix is seed 0.
For each algorithm and perturbation, each training seed contributes the mean over its evaluation seeds of
``return_theta`` and of ``return_<k>step - return_theta``; the table gives the mean over training seeds, the
standard error over training seeds and the per-seed values, so that a difference has to hold across
independently trained policies to count.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

SEED_SUFFIX = re.compile(r"^(?P<algo>.*?)(?: s(?P<seed>\d+))?$")


def load(paths: list[Path]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in paths:
        with path.open() as f:
            rows += list(csv.DictReader(f))
    return rows


def pooled_table(rows: list[dict[str, str]], steps: int) -> str:
    """Markdown: algorithm, perturbation, training seeds, theta, k-step − theta (± s.e. over training seeds)."""
    last = f"return_{steps}step"
    cells: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        m = SEED_SUFFIX.match(r["policy"])
        assert m is not None
        seed = int(m["seed"] or 0)
        theta, after = float(r["return_theta"]), float(r[last])
        if np.isfinite(theta) and np.isfinite(after):
            cells[(m["algo"], r["perturbation"])][seed].append((theta, after - theta))
    lines = [f"| algorithm | perturbation | training seeds | theta | {steps}-step − theta (± s.e. over seeds) "
             "| per training seed |", "|---|---|---|---|---|---|"]
    for (algo, pert), by_seed in cells.items():
        seeds = sorted(by_seed)
        theta = np.array([np.mean([t for t, _ in by_seed[s]]) for s in seeds])
        diff = np.array([np.mean([d for _, d in by_seed[s]]) for s in seeds])
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        per_seed = ", ".join(f"{d:+.1f}" for d in diff)
        lines.append(f"| {algo} | {pert} | {len(seeds)} | {theta.mean():.1f} | {diff.mean():+.1f} ± {se:.1f} "
                     f"| {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", type=Path, nargs="+")
    ap.add_argument("--steps", type=int, default=3, help="compare theta with the parameters after this many steps")
    args = ap.parse_args()
    for path in args.csv:
        if not path.is_file():
            ap.error(f"no such file: {path}")
    print(pooled_table(load(args.csv), args.steps))


if __name__ == "__main__":
    main()
