"""Per-stage wall and CPU times of the pipeline, read back from the outputs that carry them (`mdlm.clock`).

Each stage's command records its time under `stage_time` in the JSON output it writes last, so a stage that
DVC restored from its cache shows the time of the run that made its output. Stage names are those of
dvc.yaml (`sample@sandwich`, ...), in its order. assets, prepare and train record no time: their outputs are
folders that every later stage depends on, and a time inside them would make any rerun of them (even one
that rebuilds identical files) invalidate everything downstream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mdlm.clock import STAGE_TIME_KEY
from mdlm.errors import UserError
from mdlm.io import read_json

UNTIMED = ("assets", "prepare", "train@heavy", "train@light")
# the schedules that dvc.yaml's sample-derived / evaluate-derived stages make from the optimizer and the search
DERIVED = ("optimized", "optimized-25", "search-best")
OPTIMIZE_RECORDS = ("optimized.json", "optimized-25.json")  # the two `mdlm optimize` runs of the optimize stage


def stage_files(run: Path, schedules: Sequence[str]) -> list[tuple[str, tuple[Path, ...]]]:
    """(stage, the outputs holding its time) in dvc.yaml's order; no outputs for the stages that record none."""
    per_schedule = [
        ("sample", lambda s: run / "samples" / f"{s}.meta.json", schedules),
        ("evaluate", lambda s: run / "metrics" / f"{s}.json", schedules),
        ("flops", lambda s: run / "flops" / f"{s}.json", schedules),
    ]
    stages: list[tuple[str, tuple[Path, ...]]] = [(name, ()) for name in UNTIMED]
    stages.append(("importance", (run / "importance" / "importance.json",)))
    for stage, path, names in per_schedule:
        stages += [(f"{stage}@{s}", (path(s),)) for s in names]
    stages += [("timing", (run / "timing" / "timing.json",)), ("search", (run / "search" / "search.json",)),
               ("optimize", tuple(run / "optimize" / f for f in OPTIMIZE_RECORDS))]
    stages += [(f"sample-derived@{s}", (run / "samples" / f"{s}.meta.json",)) for s in DERIVED]
    stages += [(f"evaluate-derived@{s}", (run / "metrics" / f"{s}.json",)) for s in DERIVED]
    stages.append(("frontier", (run / "frontier" / "frontier.json",)))
    return stages


def recorded_time(path: Path) -> dict[str, float] | None:
    """The `stage_time` record of one output; None when the output or the record is absent (not run, or made
    before stages recorded their time). A record that is not two finite seconds counts is an error."""
    if not path.is_file():
        return None
    data = read_json(path)
    record = data.get(STAGE_TIME_KEY) if isinstance(data, dict) else None
    if record is None:
        return None
    try:
        values = {k: float(record[k]) for k in ("wall_s", "cpu_s")}
    except (KeyError, TypeError, ValueError):
        values = {}
    if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values.values()):
        raise UserError(f"{path}: {STAGE_TIME_KEY} must be {{\"wall_s\": seconds, \"cpu_s\": seconds}}, "
                        f"got {record!r}")
    return values


def stage_time(paths: Sequence[Path]) -> dict[str, float] | None:
    """The time of a stage: the sum over the commands it runs (one output each); None if any is unknown."""
    times = [recorded_time(p) for p in paths]
    if not times or any(t is None for t in times):
        return None
    return {k: sum(t[k] for t in times) for k in ("wall_s", "cpu_s")}


def collect(run: Path, schedules: Sequence[str]) -> list[dict[str, Any]]:
    """[{"stage", "wall_s", "cpu_s"}] for every stage but the report (None where not recorded)."""
    rows = []
    for stage, paths in stage_files(run, schedules):
        t = stage_time(paths) or {"wall_s": None, "cpu_s": None}
        rows.append({"stage": stage, **t})
    return rows


def with_report(rows: Sequence[Mapping[str, Any]], report: Mapping[str, float] | None) -> dict[str, Any]:
    """The stage-time table of the summary: ``rows``, the report's own time, and the totals of the stages that
    recorded one."""
    stages = [dict(r) for r in rows if r["stage"] != "report"]
    stages.append({"stage": "report", "wall_s": None if report is None else report["wall_s"],
                   "cpu_s": None if report is None else report["cpu_s"]})
    timed = [r for r in stages if r["wall_s"] is not None]
    total = {"wall_s": round(sum(r["wall_s"] for r in timed), 3), "cpu_s": round(sum(r["cpu_s"] for r in timed), 3),
             "recorded": len(timed), "stages": len(stages)}
    return {"stages": stages, "total": total}
