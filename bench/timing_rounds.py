"""A timing record's rounds, read again: each schedule's realized / executed ratio with its interval, and the
same median per worker and per half of each worker's rounds.

`mdlm timing` writes one record (`runs/<profile>/timing/timing.json`, or `--out`) with every round's wall
time per schedule. Its intervals cover the spread of the rounds within that run; this script shows how far
the medians of parts of the run move, which is how far a shorter run could land from the whole one. A
long run's record is kept in `bench/records/` (bench/README.md, "Eleventh pass"):

    PYTHONPATH=. python -m bench.timing_rounds bench/records/timing-64-f24858e.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mdlm.errors import UserError
from mdlm.io import read_json
from mdlm.stats import median_interval
from mdlm.timing import per_round_savings


def round_ratios(record: dict) -> dict[str, np.ndarray]:
    """Per schedule that saves executed FLOPs: (1 − t_r / t_r(reference)) / executed saving, per round r."""
    wall = {s["schedule"]: s["wall_s"] for s in record["schedules"]}
    return {s["schedule"]: per_round_savings(wall, s["schedule"], record["reference"]) / s["executed_saving"]
            for s in record["schedules"] if s["executed_saving"]}


def part_medians(ratios: np.ndarray, workers: np.ndarray) -> list[tuple[int, float, float, float]]:
    """(worker, median of its rounds, of their first half, of their second half), rounds in record order."""
    out = []
    for k in sorted(set(workers.tolist())):
        mine = ratios[workers == k]
        half = mine.size // 2
        out.append((int(k), float(np.median(mine)), float(np.median(mine[:half])) if half else float("nan"),
                    float(np.median(mine[half:]))))
    return out


def table(record: dict) -> str:
    workers = np.asarray(record["worker_of_round"])
    lines = ["schedule        ratio [95% CI]            sd     per worker: median (first half / second half)"]
    for name, ratios in round_ratios(record).items():
        point, bounds = median_interval(ratios)
        ci = f"[{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "(too few rounds)"
        parts = "; ".join(f"w{k} {m:.3f} ({a:.3f} / {b:.3f})" for k, m, a, b in part_medians(ratios, workers))
        spread = float(ratios.std(ddof=1)) if ratios.size > 1 else float("nan")
        lines.append(f"{name:15s} {point:.3f} {ci:18s} {spread:.3f}  {parts}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path, help="a JSON record written by `mdlm timing`")
    path = parser.parse_args().record
    try:
        print(table(read_json(path)))
    except (KeyError, TypeError, ValueError, UserError) as err:
        parser.exit(2, f"{path}: not a timing record of `mdlm timing` ({type(err).__name__}: {err})\n")


if __name__ == "__main__":
    main()
