"""A schedule for a FLOP budget (library of `mdlm optimize`).

Budget. The saving is counted in FULL FLOPs (`flops.py` `full` accounting: blocks + head + conditioning per
forward, nominal T steps): saving(n) = n/T · (1 − C_light/C_heavy) for n light steps. The optimizer uses
the smallest n with saving(n) ≥ budget, in exact rational arithmetic, so the budget is met exactly or just
exceeded and n − 1 light steps would miss it. ``--budget`` is a fraction in (0, 1) or a schedule (name in
schedules/ or a file) whose full saving becomes the budget, e.g. ``sandwich`` for an equal-budget comparison.

Placement. A per-step predicted sensitivity c[i] (`importance.step_signals`) is an additive cost model:
predicted cost(S) = Σ_{i in S} c[i] for the light steps S. The optimizer minimises it over unions of at most
``max_segments`` contiguous runs with |S| = n (exact dynamic programme over steps), preferring fewer runs on
ties: contiguous light runs are what the paper's schedules look like and keep the schedule file short.

Signal. Each available signal (kl, ce_gap: per-timestep curves; swap: per-segment swap sensitivity) predicts
the search's placements through the same additive model; the one with the highest Spearman rank correlation
with the search's measured Δ log gen-PPL is used. Without search results the swap signal is preferred (it
measures the target metric, judge gen-PPL, directly), then kl.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.errors import UserError
from mdlm.importance import step_signals
from mdlm.io import read_json
from mdlm.patterns import HEAVY, LIGHT
from mdlm.schedule import Schedule, load_schedule, resolve_schedule_path
from mdlm.search import load_result

SIGNAL_PREFERENCE = ("swap", "kl", "ce_gap")  # order of preference when no search result ranks them


# ------------------------------------------------------------------------------------------------------------
# budget


def light_steps_for_budget(budget: Fraction, steps: int, cost_heavy: int, cost_light: int) -> int:
    """Smallest n with n/T · (1 − C_light/C_heavy) ≥ budget (exact); UserError if even all-light misses it."""
    if not 0 < budget < 1:
        raise UserError(f"optimize budget {float(budget):g}: expected a saving fraction in (0, 1)")
    if not 0 < cost_light < cost_heavy:
        raise UserError(f"optimize: light forward ({cost_light} MACs) must cost less than heavy ({cost_heavy})")
    per_step = Fraction(cost_heavy - cost_light, cost_heavy) / steps  # saving of one light step
    n = math.ceil(budget / per_step)
    if n > steps:
        raise UserError(f"optimize budget {float(budget):.4f}: above the all-light full saving "
                        f"{float(per_step * steps):.4f} of this profile")
    return n


def exact_saving(n_light: int, steps: int, cost_heavy: int, cost_light: int) -> Fraction:
    return Fraction(n_light, steps) * Fraction(cost_heavy - cost_light, cost_heavy)


def parse_budget(value: str | float, steps: int, costs: Mapping[str, int]) -> tuple[Fraction, str]:
    """A fraction ("0.25") or a schedule whose exact full saving is the budget. Returns (budget, source)."""
    try:
        return Fraction(str(value)), "fraction"
    except (ValueError, ZeroDivisionError):
        pass
    try:
        path = resolve_schedule_path(str(value))
    except UserError:
        raise UserError(f"--budget {value!r}: expected a saving fraction in (0, 1) or a schedule name/file") from None
    sched = load_schedule(path, steps, known_models=list(costs))
    n = sched.model_steps.get("light", 0)
    if set(sched.model_steps) - {"heavy", "light"}:
        raise UserError(f"{path}: budget schedules may use only the heavy and light models")
    return exact_saving(n, steps, costs["heavy"], costs["light"]), f"full saving of schedule {sched.name}"


# ------------------------------------------------------------------------------------------------------------
# placement


def place_light_steps(cost: np.ndarray, n_light: int, max_segments: int) -> list[tuple[int, int]]:
    """Light runs [(start, stop)] minimising Σ cost over n_light steps in at most max_segments runs.

    Exact DP over steps with state (runs opened m, light steps used j, last step light?); ties prefer
    continuing a run (fewer runs) and, at the end, the fewest runs.
    """
    cost = np.asarray(cost, dtype=np.float64)
    T = cost.size
    if not np.all(np.isfinite(cost)):
        raise UserError("optimize: the per-step signal has non-finite values")
    if not 1 <= n_light <= T:
        raise UserError(f"optimize: {n_light} light steps, expected 1..{T}")
    if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 1:
        raise UserError(f"optimize max_segments {max_segments!r}: expected a positive integer")
    M = max_segments
    inf = np.inf
    f0 = np.full((M + 1, n_light + 1), inf)  # last step heavy
    f1 = np.full((M + 1, n_light + 1), inf)  # last step light
    f0[0, 0] = 0.0
    from0 = np.zeros((T, M + 1, n_light + 1), dtype=bool)  # heavy step i: came from a light step?
    cont = np.zeros((T, M + 1, n_light + 1), dtype=bool)  # light step i: continued a run?
    for i in range(T):
        n0 = np.minimum(f0, f1)
        from0[i] = f1 < f0
        n1 = np.full_like(f1, inf)
        keep = f1[1:, :-1]  # [m, j-1], m >= 1
        open_ = f0[:-1, :-1]  # [m-1, j-1]
        cont[i, 1:, 1:] = keep <= open_
        n1[1:, 1:] = np.minimum(keep, open_) + cost[i]
        f0, f1 = n0, n1
    finals = [(f0[m, n_light], m, 0) for m in range(M + 1)] + [(f1[m, n_light], m, 1) for m in range(M + 1)]
    best, m, s = min(finals, key=lambda x: (x[0], x[1], x[2]))
    if not np.isfinite(best):
        raise UserError(f"optimize: cannot place {n_light} light steps in {M} runs over {T} steps")
    light = np.zeros(T, dtype=bool)
    j = n_light
    for i in range(T - 1, -1, -1):
        if s == 1:
            light[i] = True
            if not cont[i, m, j]:
                m, s = m - 1, 0
            j -= 1
        else:
            s = 1 if from0[i, m, j] else 0
    return runs_of(light)


def runs_of(light: np.ndarray) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, v in enumerate(list(light) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i))
            start = None
    return runs


def runs_schedule(runs: Sequence[tuple[int, int]], steps: int, name: str, description: str = "") -> Schedule:
    segments, pos = [], 0
    for a, b in runs:
        if a > pos:
            segments.append((HEAVY, a - pos))
        segments.append((LIGHT, b - a))
        pos = b
    if pos < steps:
        segments.append((HEAVY, steps - pos))
    return Schedule.from_segments(name, segments, steps, description=description)


def light_mask(schedule: Schedule) -> np.ndarray:
    return np.array([schedule.models[a] == "light" for a in schedule.step_aliases()])


# ------------------------------------------------------------------------------------------------------------
# which signal predicts the search


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when undefined (n < 3 or a constant side)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size:
        raise ValueError("spearman: x and y differ in length")
    if x.size < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(v.size, dtype=np.float64)
    for value in np.unique(v):  # ties share their average rank
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def placement_predictions(search: Mapping[str, Any], signals: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predicted cost of every ranked search placement under each signal (signals at the search's T)."""
    K, T = int(search["segments"]), int(search["steps"])
    seg = T // K
    out = {}
    for name, c in signals.items():
        if c.size != T:
            raise ValueError(f"signal {name}: {c.size} steps, the search has {T}")
        out[name] = np.array([sum(c[k * seg:(k + 1) * seg].sum() for k in r["light_segments"])
                              for r in search["ranking"]])
    return out


def signal_correlations(search: Mapping[str, Any], importance: Mapping[str, Any] | None,
                        swap: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Spearman ρ between each signal's predicted cost and the measured Δ log gen-PPL of the search."""
    signals = step_signals(int(search["steps"]), importance, swap)
    observed = [r["delta_log_ppl"] for r in search["ranking"]]
    preds = placement_predictions(search, signals)
    return {name: {"spearman": spearman(p, observed), "placements": len(observed)} for name, p in preds.items()}


def choose_signal(available: Sequence[str], correlations: Mapping[str, Mapping[str, Any]] | None) -> tuple[str, str]:
    """(signal, why): the best-ranked signal by Spearman ρ with the search, else by SIGNAL_PREFERENCE."""
    ranked = [(c["spearman"], s) for s, c in (correlations or {}).items()
              if s in available and c.get("spearman") is not None]
    if ranked:
        rho, name = max(ranked, key=lambda x: (x[0], -SIGNAL_PREFERENCE.index(x[1])))
        others = ", ".join(f"{s} {r:+.3f}" for r, s in sorted(ranked, reverse=True) if s != name)
        return name, (f"highest Spearman rank correlation with the search's Δ log gen-PPL over "
                      f"{next(iter(correlations.values()))['placements']} placements: {name} {rho:+.3f}"
                      + (f" (vs {others})" if others else ""))
    for name in SIGNAL_PREFERENCE:
        if name in available:
            return name, ("no search result to rank the signals; preferred order swap (measures judge gen-PPL "
                          "directly) > kl > ce_gap")
    raise UserError("optimize: no sensitivity signal available; run `mdlm importance` first")


def calibrate(search: Mapping[str, Any], signal: np.ndarray) -> dict[str, float] | None:
    """Least-squares Δ log gen-PPL ≈ a + b · predicted cost over the search placements (None if degenerate)."""
    pred = placement_predictions(search, {"s": signal})["s"]
    obs = np.array([r["delta_log_ppl"] for r in search["ranking"]])
    if pred.size < 3 or pred.std() == 0:
        return None
    b, a = np.polyfit(pred, obs, 1)
    resid = obs - (a + b * pred)
    r2 = 1 - float((resid ** 2).sum() / ((obs - obs.mean()) ** 2).sum()) if obs.std() > 0 else float("nan")
    return {"intercept": float(a), "slope": float(b), "r2": r2, "placements": int(pred.size)}


# ------------------------------------------------------------------------------------------------------------
# the optimizer


def reference_schedules(n_light: int, steps: int) -> dict[str, Schedule]:
    """Light-step placements of the paper's comparisons with the same n light steps."""
    h, mid = steps - n_light, (steps - n_light) // 2
    specs = {
        "sandwich": [(LIGHT, n_light // 2), (HEAVY, h), (LIGHT, n_light - n_light // 2)],
        "light-first": [(LIGHT, n_light), (HEAVY, h)],
        "light-last": [(HEAVY, h), (LIGHT, n_light)],
        "light-middle": [(HEAVY, mid), (LIGHT, n_light), (HEAVY, h - mid)],
    }
    return {k: Schedule.from_segments(k, [s for s in v if s[1] > 0], steps) for k, v in specs.items()}


def optimize(steps: int, costs: Mapping[str, int], budget: Fraction, signals: Mapping[str, np.ndarray], *,
             max_segments: int = 2, name: str = "optimized", search: Mapping[str, Any] | None = None,
             correlations: Mapping[str, Mapping[str, Any]] | None = None,
             budget_source: str = "fraction") -> tuple[Schedule, dict[str, Any]]:
    """Place light steps for ``budget`` (full saving) at the lowest predicted sensitivity. Returns the schedule
    and a JSON-ready record (budget, realised saving, signal and why, predicted cost)."""
    n = light_steps_for_budget(budget, steps, costs["heavy"], costs["light"])
    signal, why = choose_signal(list(signals), correlations)
    c = np.asarray(signals[signal], dtype=np.float64)
    if c.size != steps:
        raise UserError(f"optimize: signal {signal} has {c.size} steps, expected {steps}")
    runs = place_light_steps(c, n, max_segments)
    realised = exact_saving(n, steps, costs["heavy"], costs["light"])
    fewer = exact_saving(n - 1, steps, costs["heavy"], costs["light"])
    description = (f"Made by mdlm optimize: {n} of {steps} light steps for a full-FLOP saving budget of "
                   f"{float(budget):.4f} (realised {float(realised):.4f}; {budget_source}), placed in at most "
                   f"{max_segments} contiguous light runs where the predicted per-step sensitivity is lowest; "
                   f"signal {signal} ({_ascii_reason(signal, correlations)}).")
    schedule = runs_schedule(runs, steps, name, description)
    predicted = float(c[light_mask(schedule)].sum())
    cal = calibrate(search, c) if search is not None and int(search["steps"]) == steps else None
    refs = {k: float(c[light_mask(s)].sum()) for k, s in reference_schedules(n, steps).items()}
    record: dict[str, Any] = {
        "name": name, "schedule": schedule.notation, "steps": steps, "light_steps": n,
        "light_runs": [list(r) for r in runs], "max_segments": max_segments,
        "budget": float(budget), "budget_exact": str(budget), "budget_source": budget_source,
        "costs_macs": dict(costs), "light_over_heavy": costs["light"] / costs["heavy"],
        "full_saving": float(realised), "full_saving_exact": str(realised),
        "full_saving_one_fewer_light_step": float(fewer),
        "signal": signal, "signal_reason": why, "signal_correlations": dict(correlations or {}),
        "predicted_cost": predicted, "predicted_cost_units": _units(signal),
        "reference_predicted_costs": refs,
    }
    if cal is not None:
        record["calibration"] = cal
        record["predicted_delta_log_ppl"] = cal["intercept"] + cal["slope"] * predicted
        record["reference_predicted_delta_log_ppl"] = {k: cal["intercept"] + cal["slope"] * v
                                                       for k, v in refs.items()}
        record["calibration_note"] = ("linear fit over the search placements; extrapolated when the light-step "
                                      "count differs from the search's")
    return schedule, record


def _ascii_reason(signal: str, correlations: Mapping[str, Mapping[str, Any]] | None) -> str:
    """The signal choice in plain ASCII for the schedule file's description (the JSON has the full reason)."""
    rhos = {k: v["spearman"] for k, v in (correlations or {}).items() if v.get("spearman") is not None}
    if signal not in rhos:
        return "no search result to rank the signals; default preference swap > kl > ce_gap"
    others = ", ".join(f"{k} {r:+.3f}" for k, r in sorted(rhos.items(), key=lambda x: -x[1]) if k != signal)
    return f"best Spearman rank correlation with the search: {rhos[signal]:+.3f}" + (f"; {others}" if others else "")


def _units(signal: str) -> str:
    return {"swap": "Δ log gen-PPL (sum of per-step swap-sensitivity densities)",
            "kl": "nats (sum over light steps of KL per masked token at the step's t)",
            "ce_gap": "nats (sum over light steps of the CE gap per masked token at the step's t)"}[signal]


def load_signals(steps: int, importance_dir: Path, search_dir: Path) -> tuple[dict, dict | None, dict]:
    """(signals at T, search summary or None, correlations) from the stage outputs that exist."""
    imp_path, swap_path = importance_dir / "importance.json", importance_dir / "swap_sensitivity.json"
    importance = read_json(imp_path, "run `mdlm importance`") if imp_path.is_file() else None
    swap = load_result(swap_path)[0] if swap_path.is_file() else None
    search_path = search_dir / "search.json"
    search = load_result(search_path)[0] if search_path.is_file() else None
    signals = step_signals(steps, importance, swap)
    if not signals:
        raise UserError(f"optimize: neither {imp_path} nor {swap_path} exists; run `mdlm importance` first")
    correlations = signal_correlations(search, importance, swap) if search is not None else None
    return signals, search, correlations or {}


# ------------------------------------------------------------------------------------------------------------
# at a light fraction, from the selection-range outputs (the frontier's `optimized` family)


def light_fraction_budget(light: Fraction, costs: Mapping[str, int]) -> Fraction:
    """Full saving of making a fraction ``light`` of the steps light: light · (1 − C_light/C_heavy). At T steps
    the optimizer meets it with exactly ceil(light · T) light steps (the costs cancel)."""
    return Fraction(light) * Fraction(costs["heavy"] - costs["light"], costs["heavy"])


FractionOptimizer = Callable[[str, int, Fraction], tuple[Schedule, dict[str, Any]]]


def held_out_optimizer(costs: Mapping[str, int], max_segments: int, importance_dir: Path, search_dir: Path,
                       where: str) -> FractionOptimizer:
    """``build(name, T, light fraction) -> (schedule, record)``: the optimizer's placement of ceil(light · T)
    light steps at T, from the importance and search outputs. Those stages sample only the selection index
    ranges, so a schedule built here is held out from the evaluation samples it is later scored on.

    Both outputs are required (the search ranks the signals, as in the optimize stage): a missing one is a
    UserError naming ``where``. Signals are loaded once per T.
    """
    search_path = search_dir / "search.json"
    signal_paths = [importance_dir / "importance.json", importance_dir / "swap_sensitivity.json"]
    if not search_path.is_file():
        raise UserError(f"{where}: {search_path} is missing; run `mdlm search` first (or turn the switch off)")
    if not any(p.is_file() for p in signal_paths):
        raise UserError(f"{where}: neither {signal_paths[0]} nor {signal_paths[1].name} exists; run `mdlm "
                        f"importance` first (or turn the switch off)")
    loaded: dict[int, tuple[dict, dict | None, dict]] = {}

    def build(name: str, steps: int, light: Fraction) -> tuple[Schedule, dict[str, Any]]:
        if steps not in loaded:
            loaded[steps] = load_signals(steps, importance_dir, search_dir)
        signals, search, correlations = loaded[steps]
        return optimize(steps, costs, light_fraction_budget(light, costs), signals, max_segments=max_segments,
                        name=name, search=search, correlations=correlations,
                        budget_source=f"{float(light):g} of the steps light")

    return build
