"""A schedule for a FLOP budget, and the paper's claims on a profile; `mdlm optimize`.

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

import argparse
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.errors import UserError
from mdlm.importance import load_json, step_signals
from mdlm.io import atomic_write_json, read_jsonl
from mdlm.schedule import Schedule, dump_schedule
from mdlm.search import HEAVY, LIGHT, PatternScores, contrast_ci, load_result, pattern_of

SIGNAL_PREFERENCE = ("swap", "kl", "ce_gap")  # order of preference when no search result ranks them
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


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


def profile_costs(profile: Mapping[str, Any]) -> dict[str, int]:
    """Full MACs of one forward of each model (flops.py analytic count, the source of truth for savings)."""
    from mdlm.flops import analytic_macs, profile_model_configs

    return {m: analytic_macs(cfg).total for m, cfg in profile_model_configs(profile, ["heavy", "light"]).items()}


def parse_budget(value: str | float, steps: int, costs: Mapping[str, int]) -> tuple[Fraction, str]:
    """A fraction ("0.25") or a schedule whose exact full saving is the budget. Returns (budget, source)."""
    try:
        return Fraction(str(value)), "fraction"
    except (ValueError, ZeroDivisionError):
        pass
    from mdlm.schedule import load_schedule, resolve_schedule_path

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
    importance = load_json(imp_path, "run `mdlm importance`") if imp_path.is_file() else None
    swap = load_result(swap_path)[0] if swap_path.is_file() else None
    search_path = search_dir / "search.json"
    search = load_result(search_path)[0] if search_path.is_file() else None
    signals = step_signals(steps, importance, swap)
    if not signals:
        raise UserError(f"optimize: neither {imp_path} nor {swap_path} exists; run `mdlm importance` first")
    correlations = signal_correlations(search, importance, swap) if search is not None else None
    return signals, search, correlations or {}


# ------------------------------------------------------------------------------------------------------------
# numbers for the report


def load_per_sample(path: str | Path) -> tuple[list[tuple], PatternScores]:
    """An `mdlm evaluate` per-sample file: keys (seed, sample_index) and the scores, in file order."""
    path = Path(path)
    keys, nll, tok, ent = [], [], [], []
    for n, r in read_jsonl(path, "per-sample file (run `mdlm evaluate`)"):
        try:
            keys.append((r["seed"], r["sample_index"]))
            nll.append(float(r["nll_sum"]))
            tok.append(int(r["n_tokens"]))
            ent.append(float(r["entropy"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}:{n}: malformed per-sample row ({exc})") from None
    if not keys:
        raise UserError(f"{path}: no samples")
    return keys, PatternScores(np.array(nll), np.array(tok, dtype=np.int64), np.array(ent))


def aligned_scores(files: Mapping[str, Path], reference: str) -> dict[str, PatternScores]:
    """Per-sample scores of several schedules, rows reordered to pair with ``reference``'s (seed, index)."""
    from mdlm.evaluate import align_pairs

    loaded = {k: load_per_sample(p) for k, p in files.items()}
    ref_keys = loaded[reference][0]
    out = {}
    for k, (keys, s) in loaded.items():
        perm = align_pairs(ref_keys, keys, str(files[reference]), str(files[k]))
        out[k] = PatternScores(s.nll_sum[perm], s.n_tokens[perm], s.entropy[perm])
    return out


def _interval(point: float, low: float, high: float) -> dict[str, float]:
    return {"point": point, "ci_low": low, "ci_high": high}


def gather_comparison(profile: Mapping[str, Any], optimized: str, *, search_best: str = "search-best",
                      sandwich: str = "sandwich", baseline: str = "all-heavy", metrics_dir: str | Path | None = None,
                      B: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The optimized schedule vs the search's best and the sandwich, from the pipeline's evaluate outputs
    (runs/<profile>/metrics/<name>.json and .per_sample.jsonl): gen-PPL, Δ vs all-heavy, and paired Δ of the
    optimized schedule against each. Missing files are listed under "missing", never skipped silently."""
    from mdlm.profiles import run_dir

    ev = profile.get("evaluate") or {}
    B = int(ev.get("bootstrap", 2000)) if B is None else B
    seed = int(ev.get("seed", 0)) if seed is None else seed
    mdir = Path(metrics_dir) if metrics_dir else run_dir(profile) / "metrics"
    labels = {"optimized": optimized, "search_best": search_best, "sandwich": sandwich, "all_heavy": baseline}
    out: dict[str, Any] = {"metrics_dir": str(mdir), "schedules": {}, "missing": []}
    for label, name in labels.items():
        path = mdir / f"{name}.json"
        if not path.is_file():
            out["missing"].append(str(path))
            continue
        m = load_json(path, "run `mdlm evaluate`")
        keep = ("schedule", "num_samples", "gen_ppl", "gen_ppl_ci_low", "gen_ppl_ci_high", "entropy",
                "delta_log_ppl", "delta_log_ppl_ci_low", "delta_log_ppl_ci_high", "ppl_ratio_pct",
                "delta_entropy", "delta_entropy_ci_low", "delta_entropy_ci_high")
        out["schedules"][label] = {k: m[k] for k in keep if k in m}
    files = {label: mdir / f"{name}.per_sample.jsonl" for label, name in labels.items()}
    present = {k: p for k, p in files.items() if p.is_file()}
    out["missing"] += [str(p) for k, p in files.items() if k not in present]
    if "optimized" in present:
        scores = aligned_scores(present, "optimized")
        out["paired"] = {}
        for other in ("search_best", "sandwich", "all_heavy"):
            if other in scores:
                d = contrast_ci(scores, {"optimized": 1.0, other: -1.0}, B=B, seed=seed)
                out["paired"][f"optimized_minus_{other}"] = _interval(*d)
    return out


def _verdict_better(interval: tuple[float, float, float]) -> str:
    """For a contrast where negative favours the claim: CI < 0 reproduced, CI > 0 not, else inconclusive."""
    _, low, high = interval
    return VERDICTS[0] if high < 0 else VERDICTS[1] if low > 0 else VERDICTS[2]


def outer_middle_segments(K: int) -> tuple[list[int], list[int]]:
    """Outer = the first and last quarter of the segments, middle = the rest (K = 8: 0,1,6,7 vs 2..5)."""
    q = max(1, K // 4)
    outer = sorted(set(range(q)) | set(range(K - q, K)))
    return outer, [k for k in range(K) if k not in outer]


def outer_vs_middle(scores: Mapping[str, PatternScores], baseline: str, B: int, seed: int) -> dict[str, Any] | None:
    """Mean log gen-PPL of the placements whose light segments are all outer minus of those all in the middle."""
    K = len(baseline)
    outer, middle = outer_middle_segments(K)
    groups = {"outer": [], "middle": []}
    for p in scores:
        light = {k for k, c in enumerate(p) if c == LIGHT}
        if not light:
            continue
        if light <= set(outer):
            groups["outer"].append(p)
        elif light <= set(middle):
            groups["middle"].append(p)
    if not groups["outer"] or not groups["middle"]:
        return None
    w = {p: 1 / len(groups["outer"]) for p in groups["outer"]}
    w.update({p: -1 / len(groups["middle"]) for p in groups["middle"]})
    d = contrast_ci(scores, w, B=B, seed=seed)
    return {"outer_segments": outer, "middle_segments": middle, "outer_placements": groups["outer"],
            "middle_placements": groups["middle"], "outer_minus_middle_log_ppl": _interval(*d),
            "verdict": _verdict_better(d)}


def claims_from_scores(
    *,
    search: Mapping[str, PatternScores] | None = None,
    swap: Mapping[str, PatternScores] | None = None,
    importance: Mapping[str, Any] | None = None,
    schedules: Mapping[str, PatternScores] | None = None,
    B: int = 2000,
    seed: int = 0,
    entropy_tolerance: float = 0.01,
) -> dict[str, Any]:
    """The paper's three claims from paired per-sample scores (rows aligned within each mapping).

    search/swap: {pattern: scores} including the all-heavy pattern. schedules: {"sandwich", "all-heavy",
    "light-first", "light-last", "light-middle", "interleaved": scores} from the pipeline (any subset).
    """
    out: dict[str, Any] = {}

    # (a) early and late steps are more robust than middle ones
    a: dict[str, Any] = {"claim": "early and late steps tolerate the light model better than middle steps",
                         "rule": "outer-minus-middle mean log gen-PPL over placements: CI < 0 reproduced, "
                                 "CI > 0 not reproduced, else inconclusive; the search decides, the swap "
                                 "profile is checked for agreement"}
    evidence = []
    for label, sc in (("search", search), ("swap_sensitivity", swap)):
        if sc:
            baseline = next(p for p in sc if LIGHT not in p)
            res = outer_vs_middle(sc, baseline, B, seed)
            if res is not None:
                a[label] = res
                evidence.append(res["verdict"])
    if importance is not None:
        bins = importance["bins"]
        is_outer = [r["t"] > 0.75 or r["t"] <= 0.25 for r in bins]  # first/last quarter of the steps
        kl_o = [r["kl"] for r, o in zip(bins, is_outer, strict=True) if o]
        kl_m = [r["kl"] for r, o in zip(bins, is_outer, strict=True) if not o]
        gap_o = [r["ce_gap"] for r, o in zip(bins, is_outer, strict=True) if o]
        gap_m = [r["ce_gap"] for r, o in zip(bins, is_outer, strict=True) if not o]
        if kl_o and kl_m:
            a["importance"] = {"t_outer": "t > 0.75 or t <= 0.25", "t_middle": "0.25 < t <= 0.75",
                               "mean_kl_outer": float(np.mean(kl_o)), "mean_kl_middle": float(np.mean(kl_m)),
                               "mean_ce_gap_outer": float(np.mean(gap_o)), "mean_ce_gap_middle": float(np.mean(gap_m)),
                               "note": "point values over bins (per-bin CIs in importance.json)"}
    if not evidence:
        a["verdict"], a["reason"] = VERDICTS[2], "no search or swap-sensitivity scores"
    elif VERDICTS[0] in evidence and VERDICTS[1] in evidence:
        a["verdict"], a["reason"] = VERDICTS[2], "search and swap sensitivity disagree"
    else:
        a["verdict"] = evidence[0]
    out["a_outer_steps_robust"] = a

    # (b) the sandwich is at least as good as other placements at the same budget
    b: dict[str, Any] = {"claim": "the sandwich is at least as good as other placements of the same light steps",
                         "rule": "Δ = log gen-PPL(sandwich) − log gen-PPL(other), paired: any CI > 0 → not "
                                 "reproduced; none > 0 and at least one < 0 → reproduced; else inconclusive",
                         "comparisons": {}}
    if schedules and "sandwich" in schedules:
        for other in ("light-first", "light-last", "light-middle", "interleaved"):
            if other in schedules:
                d = contrast_ci(schedules, {"sandwich": 1.0, other: -1.0}, B=B, seed=seed)
                b["comparisons"][other] = {**_interval(*d), "sandwich": ("better" if d[2] < 0 else
                                                                         "worse" if d[1] > 0 else "tie")}
    if not b["comparisons"]:
        b["verdict"], b["reason"] = VERDICTS[2], "no paired scores of the sandwich and its comparators"
    else:
        outcomes = [c["sandwich"] for c in b["comparisons"].values()]
        b["verdict"] = (VERDICTS[1] if "worse" in outcomes else VERDICTS[0] if "better" in outcomes
                        else VERDICTS[2])
    out["b_sandwich_best"] = b

    # (c) diversity is preserved
    c: dict[str, Any] = {"claim": "sample diversity (unigram entropy) is preserved by the sandwich",
                         "rule": f"Δ entropy = sandwich − all-heavy, paired (an equivalence test): CI within "
                                 f"±{entropy_tolerance:.0%} of the all-heavy entropy → reproduced; CI entirely "
                                 f"beyond that band → not reproduced; else (e.g. a wide CI) inconclusive"}
    if schedules and "sandwich" in schedules and "all-heavy" in schedules:
        d = contrast_ci(schedules, {"sandwich": 1.0, "all-heavy": -1.0}, B=B, seed=seed, metric="entropy")
        tol = entropy_tolerance * float(schedules["all-heavy"].entropy.mean())
        c["delta_entropy"] = _interval(*d)
        c["tolerance_nats"] = tol
        _, low, high = d
        if -tol <= low and high <= tol:
            c["verdict"] = VERDICTS[0]
        elif low > tol or high < -tol:
            c["verdict"] = VERDICTS[1]
        else:
            c["verdict"] = VERDICTS[2]
    else:
        c["verdict"], c["reason"] = VERDICTS[2], "no paired scores of the sandwich and all-heavy"
    out["c_diversity_preserved"] = c
    return out


def _display(path: Path) -> str:
    """A path relative to the project root where possible: reports must not carry machine paths."""
    from mdlm.profiles import project_root

    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


def search_schedule_scores(search: Mapping[str, PatternScores]) -> dict[str, PatternScores]:
    """The paper's comparison schedules that are placements of the search grid (K even, N light)."""
    baseline = next(p for p in search if LIGHT not in p)
    K = len(baseline)
    N = max(p.count(LIGHT) for p in search)
    wanted: dict[str, tuple[int, ...]] = {"all-heavy": (), "light-first": tuple(range(N)),
                                          "light-last": tuple(range(K - N, K))}
    if N % 2 == 0:
        wanted["sandwich"] = tuple(range(N // 2)) + tuple(range(K - N // 2, K))
    if (K - N) % 2 == 0:
        wanted["light-middle"] = tuple(range((K - N) // 2, (K + N) // 2))
    out = {}
    for name, light in wanted.items():
        p = pattern_of(light, K)
        if p in search:
            out[name] = search[p]
    return out


def paper_claims(profile: Mapping[str, Any], *, importance_dir: str | Path | None = None,
                 search_dir: str | Path | None = None, metrics_dir: str | Path | None = None) -> dict[str, Any]:
    """The claims on a profile from whatever stage outputs exist. Claims (b) and (c) use the pipeline's
    evaluate per-sample files (runs/<p>/metrics/<schedule>.per_sample.jsonl) when the sandwich's exists, else
    the search placements that coincide with those schedules."""
    from mdlm.profiles import run_dir

    ev = profile.get("evaluate") or {}
    B, seed = int(ev.get("bootstrap", 2000)), int(ev.get("seed", 0))
    idir = Path(importance_dir) if importance_dir else run_dir(profile) / "importance"
    sdir = Path(search_dir) if search_dir else run_dir(profile) / "search"
    mdir = Path(metrics_dir) if metrics_dir else run_dir(profile) / "metrics"
    search = load_result(sdir / "search.json")[1] if (sdir / "search.json").is_file() else None
    swap = (load_result(idir / "swap_sensitivity.json")[1] if (idir / "swap_sensitivity.json").is_file() else None)
    importance = load_json(idir / "importance.json", "") if (idir / "importance.json").is_file() else None
    names = ("sandwich", "all-heavy", "light-first", "light-last", "light-middle", "interleaved")
    files = {n: mdir / f"{n}.per_sample.jsonl" for n in names if (mdir / f"{n}.per_sample.jsonl").is_file()}
    if "sandwich" in files:
        schedules, source = aligned_scores(files, "sandwich"), f"pipeline ({_display(mdir)})"
    elif search is not None:
        schedules, source = search_schedule_scores(search), f"search placements ({_display(sdir)})"
    else:
        schedules, source = None, "none"
    claims = claims_from_scores(search=search, swap=swap, importance=importance, schedules=schedules, B=B,
                                seed=seed)
    claims["schedule_scores_source"] = source
    claims["profile"] = profile["name"]
    return claims


# ------------------------------------------------------------------------------------------------------------
# `mdlm optimize`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="params.yaml profile (default: its `profile` key)")
    parser.add_argument("--budget", help="full-FLOP saving fraction in (0, 1), or a schedule name/file whose full "
                        "saving is the budget (e.g. sandwich); default: profile optimize.budget")
    parser.add_argument("--out", help="schedule YAML to write (default: runs/<profile>/optimize/optimized.yaml)")
    parser.add_argument("--report", help="JSON record (default: <out without .yaml>.json)")
    parser.add_argument("--name", help="schedule name (default: the file name of --out without .yaml)")
    parser.add_argument("--max-segments", type=int,
                        help="at most this many contiguous light runs (default: optimize.max_light_segments or 2)")
    parser.add_argument("--importance", help="importance folder (default: runs/<profile>/importance/)")
    parser.add_argument("--search", help="search folder (default: runs/<profile>/search/)")
    parser.add_argument("--steps", type=int, help="denoising steps T (default: profile sample.steps)")


def main(args: argparse.Namespace) -> int:
    from mdlm.profiles import load_profile, run_dir

    profile = load_profile(args.profile)
    cfg = profile.get("optimize") or {}
    budget_arg = args.budget if args.budget is not None else cfg.get("budget")
    if budget_arg is None:
        raise UserError(f"params.yaml: profiles.{profile['name']}.optimize.budget is not set and no --budget given")
    steps = int(args.steps or profile["sample"]["steps"])
    max_segments = args.max_segments or int(cfg.get("max_light_segments", 2))
    out = Path(args.out) if args.out else run_dir(profile) / "optimize" / "optimized.yaml"
    if out.suffix not in (".yaml", ".yml"):
        raise UserError(f"--out {out}: expected a .yaml schedule file")
    report = Path(args.report) if args.report else out.with_suffix(".json")
    name = args.name or out.stem

    costs = profile_costs(profile)
    budget, source = parse_budget(budget_arg, steps, costs)
    light_steps_for_budget(budget, steps, costs["heavy"], costs["light"])  # fail early on an impossible budget
    rd = run_dir(profile)
    signals, search, correlations = load_signals(
        steps, Path(args.importance) if args.importance else rd / "importance",
        Path(args.search) if args.search else rd / "search")
    schedule, record = optimize(steps, costs, budget, signals, max_segments=max_segments, name=name, search=search,
                                correlations=correlations, budget_source=source)
    record.update(profile=profile["name"], schedule_file=str(out))
    dump_schedule(schedule, out)
    atomic_write_json(report, record)
    print(f"optimize: {schedule.notation} ({record['light_steps']} light steps, full saving "
          f"{record['full_saving']:.4f} >= budget {record['budget']:.4f}); signal {record['signal']}; wrote {out}")
    return 0
