"""A finished pipeline's stage times, summed by what the stages are for: how much of a `dvc repro` each part of
the experiment needs, and so what a smaller default could save.

`mdlm report` writes every stage's recorded wall and CPU time into `reports/summary.json` (`stage_times`).
This script groups them, in the order a reader would drop them:

- **main**: sampling, judging and counting the FLOPs of the schedules of `params.yaml` (the results table and
  the claims; 64 evaluation samples each in the `tiny` profile);
- **timing**: the controlled wall-clock measurement (the table's wall-clock column);
- **optimizer**: importance, search and optimize, which the optimizer's schedule needs (it is fit on both), and
  that schedule's held-out sampling and judging;
- **report**;
- **extras**: the other selected schedules (search-best, optimized-25) and the frontier.

With ``--dvc-seconds`` (the whole `dvc repro`'s wall time) it also prints what no stage recorded: dvc's own
work, the stages that record no time (assets, prepare, train) and each command's start-up before its clock.

    PYTHONPATH=. python -m bench.stage_budget [reports/summary.json] [--dvc-seconds 1788]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mdlm.errors import UserError
from mdlm.io import read_json

GROUPS = ("main", "timing", "optimizer", "report", "extras")
OPTIMIZER_STAGES = ("importance", "search", "optimize", "sample-derived@optimized", "evaluate-derived@optimized")


def group_of(stage: str) -> str:
    """The group of a stage name of dvc.yaml (`sample@sandwich`, `evaluate-derived@search-best`, ...)."""
    kind = stage.split("@")[0]
    if kind in ("sample", "evaluate", "flops"):
        return "main"
    if stage in OPTIMIZER_STAGES:
        return "optimizer"
    if kind in ("sample-derived", "evaluate-derived", "frontier"):
        return "extras"
    if kind in ("timing", "report"):
        return kind
    raise UserError(f"stage {stage!r}: not a stage this script knows; add it to a group")


def grouped(stages: list[dict]) -> dict[str, dict[str, float]]:
    """{group: {"wall_s", "cpu_s", "stages"}} over the stages that recorded a time (the others are skipped)."""
    out = {g: {"wall_s": 0.0, "cpu_s": 0.0, "stages": 0} for g in GROUPS}
    for row in stages:
        if row.get("wall_s") is None:
            continue
        g = out[group_of(row["stage"])]
        g["wall_s"] += float(row["wall_s"])
        g["cpu_s"] += float(row["cpu_s"])
        g["stages"] += 1
    return out


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:4.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", nargs="?", default="reports/summary.json")
    parser.add_argument("--dvc-seconds", type=float, help="the whole dvc repro's wall time, in seconds")
    args = parser.parse_args()
    summary = read_json(Path(args.summary))
    try:
        stages = summary["stage_times"]["stages"]
    except (KeyError, TypeError):
        raise SystemExit(f"{args.summary}: no stage_times.stages (not a report summary)") from None
    groups = grouped(stages)
    total = 0.0
    print(f"{'group':10s} {'stages':>6s} {'wall':>14s} {'CPU':>14s} {'cumulative wall':>16s}")
    for name in GROUPS:
        g = groups[name]
        total += g["wall_s"]
        print(f"{name:10s} {g['stages']:6d} {_minutes(g['wall_s']):>14s} {_minutes(g['cpu_s']):>14s} "
              f"{_minutes(total):>16s}")
    if args.dvc_seconds is not None:
        print(f"not recorded by any stage (dvc, untimed stages, start-up): {_minutes(args.dvc_seconds - total)} "
              f"of {_minutes(args.dvc_seconds)}")


if __name__ == "__main__":
    main()
