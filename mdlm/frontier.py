"""The quality–compute frontier: placement families against fewer denoising steps, at equal executed compute.

The grid is generated from a profile's `frontier:` section (docs/frontier.md), never from hand-written files:

* step-count baselines `all-heavy-T<T>` / `all-light-T<T>` for every T of `step_counts` (plus `all-heavy` at
  the profile's T, the reference every record is paired against);
* placement families `<family>-<pct>-T<T>` (sandwich, light-first, light-last, light-middle) at each light
  fraction of `fractions`, built as percent segments at the profile's T;
* the combination: the families of `reduced_families` at each T of `reduced_steps` (both savings at once);
* with `optimized: true`, the family `optimized-<pct>-T<T>`: `mdlm optimize`'s placement of the same number of
  light steps (ceil(fraction · T)), chosen from the importance and search outputs, which sample only the
  selection index ranges: held out from the evaluation samples by construction.

Every schedule is sampled on the same sample indices with the same seed as `mdlm sample`, so any two of them
share unmasking times and token uniforms (common random numbers) and differ only through the models: paired
intervals between any two points are legitimate. Cost is the executed FLOPs per sample (`mdlm.flops.executed_macs`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np

from mdlm.config import OPTIMIZED_FAMILY, FrontierSettings
from mdlm.errors import UserError
from mdlm.flops import SampledRun, executed_macs
from mdlm.model import DiTConfig
from mdlm.optimize import FractionOptimizer
from mdlm.sampler import SampleResult, sample
from mdlm.sampling_law import SamplerConfig
from mdlm.schedule import Schedule
from mdlm.stats import (
    Interval,
    bootstrap_ci,
    bootstrap_p,
    contrast_replicates,
    holm_levels,
    paired_ci,
    percentile_interval,
)

REFERENCE_MODEL = "heavy"
BASELINE_FAMILIES = {"heavy": "all-heavy", "light": "all-light"}
HEAD_SELECTED, HEAD_FULL = "selected", "full"


# ---- the grid -----------------------------------------------------------------------------------------------

def _pct(x: Decimal) -> str:
    return format(x.normalize(), "f")


def family_segments(family: str, light: Decimal) -> list[str]:
    """Percent segments of a placement family with ``light`` (a fraction in (0, 1)) of the steps light."""
    lp, hp = light * 100, (1 - light) * 100  # exact decimals: the segments sum to 100% exactly
    segments = {
        "sandwich": [("L", lp / 2), ("H", hp), ("L", lp / 2)],
        "light-first": [("L", lp), ("H", hp)],
        "light-last": [("H", hp), ("L", lp)],
        "light-middle": [("H", hp / 2), ("L", lp), ("H", hp / 2)],
    }[family]
    return [f"{alias}{_pct(p)}%" for alias, p in segments]


@dataclass(frozen=True)
class FrontierPoint:
    """One schedule of the grid and where it sits in it."""

    schedule: Schedule
    family: str  # all-heavy, all-light, sandwich, light-first, light-last, light-middle, optimized
    kind: str  # "baseline" (a step-count run of one model) or "family" (a placement of light steps)
    nominal_fraction: float  # the light fraction asked for (0 or 1 for baselines)
    selection: Mapping[str, Any] | None = field(default=None, compare=False)  # the optimizer's record, if any

    @property
    def name(self) -> str:
        return self.schedule.name

    @property
    def steps(self) -> int:
        return self.schedule.steps


def _check_grid(settings: FrontierSettings, steps: int, where: str) -> None:
    limit = settings.max_steps_factor * steps
    for key in ("step_counts", "reduced_steps"):
        for t in getattr(settings, key):
            if not 1 <= t <= limit:
                raise UserError(f"{where}.{key}: T = {t} outside [1, {limit}] (max_steps_factor "
                                f"{settings.max_steps_factor} x sample.steps {steps})")
    for f in settings.fractions:
        if not 0.0 < f < 1.0:
            raise UserError(f"{where}.fractions: {f!r} is not a light fraction in (0, 1)")
    if len(set(settings.fractions)) != len(settings.fractions):
        raise UserError(f"{where}.fractions: {settings.fractions} lists a fraction twice")


def frontier_schedules(settings: FrontierSettings, steps: int, taken_names: Iterable[str] | Mapping[str, str] = (),
                       where: str = "frontier", optimizer: FractionOptimizer | None = None) -> list[FrontierPoint]:
    """Every schedule of the grid, the reference (`all-heavy-T<steps>`) first.

    ``taken_names``: schedule names already in use, as names of `schedules/` files or as {name: file holding it}
    (e.g. the optimize stage's outputs); a generated name among them, a name generated twice, or a segment that
    rounds to zero steps is a UserError naming ``where``. ``optimizer`` builds the `optimized` family's schedules
    (required when the grid has them).
    """
    _check_grid(settings, steps, where)
    points = [_baseline(REFERENCE_MODEL, steps, where)]
    for model in settings.baseline_models:
        points += [_baseline(model, t, where) for t in sorted(set(settings.step_counts), reverse=True)]
    families = [*settings.families, *([OPTIMIZED_FAMILY] if settings.optimized else [])]
    reduced = settings.reduced_families if settings.reduced_families is not None else families
    grid = [(steps, family) for family in families]
    grid += [(t, family) for t in sorted(set(settings.reduced_steps), reverse=True) for family in reduced]
    if optimizer is None and any(family == OPTIMIZED_FAMILY for _, family in grid):
        raise UserError(f"{where}.optimized: the grid has optimized schedules but no optimizer inputs were given")
    for t, family in grid:
        for f in settings.fractions:
            light = Decimal(repr(f))
            name = f"{family}-{_pct(light * 100)}-T{t}"
            if family == OPTIMIZED_FAMILY:
                schedule, record = optimizer(name, t, Fraction(str(light)))
                points.append(FrontierPoint(schedule, family, "family", f, selection=record))
                continue
            schedule = _build(name, family_segments(family, light), t, where)
            points.append(FrontierPoint(schedule, family, "family", f))
    taken = dict(taken_names) if isinstance(taken_names, Mapping) else {n: f"schedules/{n}.yaml" for n in taken_names}
    return _unique_names(points, taken, where)


def _unique_names(points: list[FrontierPoint], taken: Mapping[str, str], where: str) -> list[FrontierPoint]:
    """``points`` without the reference's repeat; a name taken elsewhere or generated twice is a UserError."""
    seen, unique = set(), []
    for p in points:
        if p.name in taken:
            raise UserError(f"{where}: generated schedule name {p.name!r} collides with {taken[p.name]}")
        if p.name in seen:
            if p.kind == "baseline" and p.family == "all-heavy":  # the reference listed again in step_counts
                continue
            raise UserError(f"{where}: schedule {p.name!r} is generated twice (a T listed in both "
                            f"sample.steps and reduced_steps?)")
        seen.add(p.name)
        unique.append(p)
    return unique


def _baseline(model: str, t: int, where: str) -> FrontierPoint:
    alias = "H" if model == "heavy" else "L"
    name = f"{BASELINE_FAMILIES[model]}-T{t}"
    return FrontierPoint(_build(name, [f"{alias}{t}"], t, where), BASELINE_FAMILIES[model], "baseline",
                         0.0 if model == "heavy" else 1.0)


def _build(name: str, segments: list[str], t: int, where: str) -> Schedule:
    try:
        return Schedule.from_segments(name, segments, t)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


# ---- executed cost ------------------------------------------------------------------------------------------

def head_positions_of(result: SampleResult) -> dict[str, int] | None:
    """Positions at which each model's output head ran, if the sampler records them (one that uses `select`)."""
    by_model = getattr(result, "head_positions_by_model", None)
    return {m: int(v) for m, v in by_model().items()} if callable(by_model) else None


def result_flops_per_sample(result: SampleResult, configs: Mapping[str, DiTConfig]) -> tuple[float, str]:
    """Executed FLOPs per sample of a sampling run (`mdlm.flops.executed_macs`), and how the head was counted
    (`selected`: at the positions the sampler recorded; `full`: at every position of every row-forward)."""
    n = max(1, int(result.sample_indices.size))
    heads = head_positions_of(result)
    last = getattr(result, "last_block_positions_by_model", None)
    conditioned = getattr(result, "conditioning_rows_by_model", None)
    run = SampledRun(path="frontier", rows=n, steps=0, noise_removal=False,
                     row_forwards={m: int(v.sum()) for m, v in result.row_forwards_by_model().items()},
                     head_positions=heads, last_block_positions=last() if callable(last) else None,
                     conditioning_rows=conditioned() if callable(conditioned) else None)
    by_model, _ = executed_macs(run, dict(configs))
    return 2.0 * sum(by_model.values()) / n, HEAD_FULL if heads is None else HEAD_SELECTED


# ---- sampling and scoring -----------------------------------------------------------------------------------

@dataclass
class PointRun:
    """One sampled and judged schedule: per-sample scores in sample-index order."""

    point: FrontierPoint
    sample_indices: np.ndarray  # [N]
    seed: int
    nll_sum: np.ndarray  # [N] float64
    n_tokens: np.ndarray  # [N] int64
    row_forwards: dict[str, np.ndarray]  # model -> [N]
    flops_per_sample: float
    head: str
    sample_s: float
    score_s: float
    sample_cpu_s: float = 0.0  # process CPU time: with one thread, about the wall time on an idle machine
    score_cpu_s: float = 0.0
    head_positions: dict[str, float] | None = None  # model -> total positions its head ran at, if recorded


def run_point(point: FrontierPoint, denoisers: Mapping[str, Any], score: Callable[[Sequence[str]], tuple],
              decode: Callable[[list[list[int]]], list[str]], configs: Mapping[str, DiTConfig], *,
              mask_id: int, seq_len: int, sample_indices: Sequence[int], seed: int, config: SamplerConfig,
              batch_size: int) -> PointRun:
    """Sample ``point`` on ``sample_indices`` with ``seed``, judge the texts, count the executed FLOPs."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = sample(denoisers, point.schedule, mask_id=mask_id, seq_len=seq_len, sample_indices=sample_indices,
                    seed=seed, config=config, batch_size=batch_size)
    sampled, cpu_sampled = time.perf_counter(), time.process_time()
    nll_sum, n_tokens = score(decode([row.tolist() for row in result.token_ids]))
    flops, head = result_flops_per_sample(result, configs)
    return PointRun(point, result.sample_indices, seed, np.asarray(nll_sum, np.float64),
                    np.asarray(n_tokens, np.int64), result.row_forwards_by_model(), flops, head,
                    sampled - start, time.perf_counter() - sampled, cpu_sampled - cpu_start,
                    time.process_time() - cpu_sampled, head_positions_of(result))


# ---- summaries ----------------------------------------------------------------------------------------------

def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, loss) points, whether each is on the front: no other point is <= in both and < in one."""
    out = []
    for c, q in points:
        dominated = any(c2 <= c and q2 <= q and (c2 < c or q2 < q) for c2, q2 in points)
        out.append(not dominated)
    return out


def _check_paired(a: PointRun, b: PointRun) -> None:
    if a.seed != b.seed or not np.array_equal(a.sample_indices, b.sample_indices):
        raise UserError(f"frontier: {a.point.name} and {b.point.name} were not sampled on the same indices "
                        f"and seed, so they do not pair")


def _paired(a: PointRun, b: PointRun, B: int, seed: int) -> Interval:
    """Δ log gen-PPL of a minus b over their common samples (both runs use the same indices and seed)."""
    _check_paired(a, b)
    return paired_ci(a.nll_sum, a.n_tokens, b.nll_sum, b.n_tokens, B=B, seed=seed)


def _ci_dict(prefix: str, ci: Interval, transform: Callable[[float], float]) -> dict[str, float]:
    return {prefix: transform(ci.point), f"{prefix}_ci_low": transform(ci.low),
            f"{prefix}_ci_high": transform(ci.high)}


def point_records(runs: Sequence[PointRun], B: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One record per schedule: gen-PPL with CI, paired Δ vs the reference (runs[0]), FLOPs, front flag."""
    reference = runs[0]
    records = []
    for run in runs:
        p = run.point
        rec: dict[str, Any] = {
            "name": p.name, "family": p.family, "kind": p.kind, "steps": p.steps,
            "segments": p.schedule.notation, "light_fraction": p.schedule.light_fraction,
            "nominal_light_fraction": p.nominal_fraction, "num_samples": int(run.sample_indices.size),
            "flops_per_sample": run.flops_per_sample, "head": run.head,
            "row_forwards_per_sample": {m: float(v.mean()) for m, v in run.row_forwards.items()},
            "head_positions_per_sample": None if run.head_positions is None else
            {m: v / run.sample_indices.size for m, v in run.head_positions.items()},
        }
        if p.selection is not None:
            rec["optimizer"] = dict(p.selection)
        rec.update(_ci_dict("gen_ppl", bootstrap_ci(run.nll_sum, run.n_tokens, B=B, seed=seed), math.exp))
        rec["reference"] = reference.point.name
        rec.update(_ci_dict("delta_log_ppl", _paired(run, reference, B, seed), float))
        rec["sample_s"], rec["score_s"] = round(run.sample_s, 3), round(run.score_s, 3)
        rec["sample_cpu_s"], rec["score_cpu_s"] = round(run.sample_cpu_s, 3), round(run.score_cpu_s, 3)
        records.append(rec)
    front = pareto_front([(r["flops_per_sample"], r["gen_ppl"]) for r in records])
    for rec, on in zip(records, front, strict=True):
        rec["on_front"] = on
    return records


def nearest_baseline(flops: float, baselines: Sequence[tuple[str, float]]) -> str:
    """The baseline whose executed FLOPs per sample are closest to ``flops`` (ties: the costlier one)."""
    if not baselines:
        raise UserError("frontier: no all-heavy step-count baseline to compare against")
    return min(baselines, key=lambda b: (abs(b[1] - flops), -b[1]))[0]


def verdict(ci_low: float, ci_high: float) -> str:
    """Reading of a paired Δ log gen-PPL (schedule − baseline) interval."""
    if ci_low > 0:
        return "baseline better"
    if ci_high < 0:
        return "scheduling better"
    return "no difference detectable"


def budget_table(runs: Sequence[PointRun], records: Sequence[Mapping[str, Any]], B: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> list[dict[str, Any]]:
    """Every placement-family point against the all-heavy step-count baseline nearest in executed FLOPs.

    Per row: the paired Δ log gen-PPL (family point − baseline) with its 95% interval, and a verdict from
    Holm-adjusted intervals over all rows (family-wise error ``alpha``, step-down: testing stops at the first
    row whose adjusted interval contains 0). No family is picked on the samples it is scored on.
    """
    by_name = {r.point.name: r for r in runs}
    rec_by_name = {r["name"]: r for r in records}
    baselines = [(r["name"], r["flops_per_sample"]) for r in records if r["family"] == "all-heavy"]
    family_points = sorted((r for r in records if r["kind"] == "family"),
                           key=lambda r: (-r["steps"], r["nominal_light_fraction"], r["family"]))
    rows, replicates = [], []
    for r in family_points:
        base = rec_by_name[nearest_baseline(r["flops_per_sample"], baselines)]
        a, b = by_name[r["name"]], by_name[base["name"]]
        _check_paired(a, b)
        point, reps = contrast_replicates([(1.0, a.nll_sum, a.n_tokens), (-1.0, b.nll_sum, b.n_tokens)], B, seed)
        replicates.append((point, reps))
        rows.append({
            "name": r["name"], "family": r["family"], "steps": r["steps"],
            "light_fraction": r["nominal_light_fraction"], "gen_ppl": r["gen_ppl"],
            "flops_per_sample": r["flops_per_sample"], "baseline": base["name"], "baseline_steps": base["steps"],
            "baseline_gen_ppl": base["gen_ppl"], "baseline_flops_per_sample": base["flops_per_sample"],
            "flops_ratio": r["flops_per_sample"] / base["flops_per_sample"],
            **_ci_dict("delta_log_ppl", percentile_interval(point, reps, 0.95), float),
        })
    _holm_verdicts(rows, replicates, alpha)
    return rows


def _holm_verdicts(rows: list[dict[str, Any]], replicates: Sequence[tuple[float, np.ndarray]], alpha: float) -> None:
    """Adjusted intervals and verdicts in Holm's step-down order (smallest bootstrap p-value first)."""
    levels = holm_levels([bootstrap_p(reps, 0.0) for _, reps in replicates], alpha)
    stopped = False
    for i in sorted(range(len(rows)), key=lambda i: levels[i][0]):
        point, reps = replicates[i]
        adjusted = percentile_interval(point, reps, levels[i][1])
        found = "no difference detectable" if stopped else verdict(adjusted.low, adjusted.high)
        stopped = stopped or found == "no difference detectable"
        rows[i].update({"adjusted_level": levels[i][1], "delta_log_ppl_adj_low": adjusted.low,
                        "delta_log_ppl_adj_high": adjusted.high, "verdict": found})


def per_sample_rows(runs: Sequence[PointRun]) -> list[dict[str, Any]]:
    return [{"schedule": run.point.name, "seed": run.seed, "sample_index": int(k),
             "nll_sum": float(run.nll_sum[i]), "n_tokens": int(run.n_tokens[i]),
             "row_forwards": {m: int(v[i]) for m, v in run.row_forwards.items()}}
            for run in runs for i, k in enumerate(run.sample_indices)]


PLOT_COLUMNS = ("name", "family", "kind", "steps", "light_fraction", "flops_per_sample", "gen_ppl",
                "gen_ppl_ci_low", "gen_ppl_ci_high", "on_front")


def plot_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `dvc plots` data: one row per schedule (CSV columns PLOT_COLUMNS)."""
    return [{k: r[k] for k in PLOT_COLUMNS} for r in records]
