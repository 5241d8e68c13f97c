"""The paper's claims as pre-stated tests on the held-out evaluation samples (library; docs/claims.md).

Every comparison is a paired contrast of two schedules sampled with the same seeds and sample indices from the
evaluation range [0, sample.num_samples) (`Profile.sample_ranges`), scored by the judge (`mdlm evaluate` per-sample
files), with a percentile bootstrap over samples (`mdlm.stats`):

- (a1) early steps tolerate the light model better than middle steps: Δ = log gen-PPL(light-first) −
  log gen-PPL(light-middle); (a2) the same for late steps (light-last). Superiority: adjusted CI < 0 →
  reproduced, > 0 → contradicted, else inconclusive. a1 and a2 form one Holm family.
- (b) the sandwich is non-inferior to each other placement of the same light steps (light-first, light-last,
  light-middle, interleaved) with margin δ: Δ_k = log gen-PPL(sandwich) − log gen-PPL(other_k). Per
  comparison: adjusted CI < δ → non-inferior, > δ → inferior, else undecided (Holm family over the k).
  Reproduced when every comparison is non-inferior, contradicted when any is inferior, else inconclusive.
- (c) diversity: Δ = entropy(sandwich) − entropy(all-heavy) is within ±ε nats: the (1 − 2α) CI inside
  (−ε, ε) → reproduced (two one-sided tests), entirely outside → contradicted, else inconclusive.

Power: per comparison the minimum detectable effect (two-sided α, the profile's power) from the bootstrap
standard error, and the evaluation samples that would decide it at the observed effect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdlm import stats
from mdlm.errors import UserError
from mdlm.io import read_json
from mdlm.scores import PatternScores, aligned_scores, contrast_ci, contrast_replicates, interval_dict

VERDICTS = ("reproduced", "contradicted", "inconclusive")
B_COMPARATORS = ("light-first", "light-last", "light-middle", "interleaved")
MAIN_CONTRASTS = (("all-light", "all-heavy"), ("sandwich", "all-heavy"))
CLAIM_TEXT = {
    "a1": "early steps tolerate the light model better than middle steps",
    "a2": "late steps tolerate the light model better than middle steps",
    "b": "the sandwich is non-inferior to every other placement of the same light steps",
    "c": "the sandwich preserves sample diversity (unigram entropy)",
}


@dataclass(frozen=True)
class TestSettings:
    """The pre-stated parameters of the tests (the profile's `claims:` section as plain values)."""

    sandwich_margin: float = 0.05
    entropy_margin: float = 0.05
    alpha: float = 0.05
    power: float = 0.8
    bootstrap: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sandwich_margin", "entropy_margin"):
            if not getattr(self, name) > 0:
                raise UserError(f"claims.{name} {getattr(self, name)!r}: expected a margin > 0")


@dataclass(frozen=True)
class Spec:
    """One comparison: plus − minus on ``metric``, decided against ``threshold`` by ``decide``."""

    name: str
    plus: str
    minus: str
    metric: str  # "log_ppl" or "entropy"
    threshold: float
    decide: Callable[[float, float], str]
    distance: Callable[[float], float]  # |effect| left to cross the decision boundary


# ---- decision rules (each unit-tested on every branch) --------------------------------------------------------


def superiority(low: float, high: float) -> str:
    return "better" if high < 0 else "worse" if low > 0 else "undecided"


def non_inferiority(margin: float) -> Callable[[float, float], str]:
    return lambda low, high: "non-inferior" if high < margin else "inferior" if low > margin else "undecided"


def equivalence(margin: float) -> Callable[[float, float], str]:
    def decide(low: float, high: float) -> str:
        if -margin < low and high < margin:
            return "equivalent"
        return "different" if low > margin or high < -margin else "undecided"

    return decide


def equivalence_distance(margin: float) -> Callable[[float], float]:
    return lambda point: abs(margin - abs(point))


# ---- one family of comparisons -----------------------------------------------------------------------------


def _record(spec: Spec, scores: Mapping[str, PatternScores], point: float, reps, level: float, p: float,
            decision: str, ts: TestSettings) -> dict[str, Any]:
    ci = stats.percentile_interval(point, reps, level)
    se = float(reps.std(ddof=1)) if reps.size > 1 else 0.0
    n = len(scores[spec.plus].nll_sum)
    out = {"name": spec.name, "contrast": f"{spec.plus} − {spec.minus}", "metric": spec.metric, "n": n,
           "point": point, "ci_low": ci.low, "ci_high": ci.high, "level": level, "p": p, "threshold": spec.threshold,
           "decision": decision, "se": se, "mde": stats.detectable_effect(se, ts.alpha, ts.power),
           "samples_to_decide": stats.samples_to_decide(n, se, spec.distance(point), ts.alpha, ts.power)}
    if spec.metric == "log_ppl":
        out.update(pct=stats.pct_change(point), pct_low=stats.pct_change(ci.low), pct_high=stats.pct_change(ci.high))
    return out


def run_family(specs: Sequence[Spec], scores: Mapping[str, PatternScores], ts: TestSettings,
               holm: bool = True, level: float | None = None) -> list[dict[str, Any]]:
    """Test ``specs`` as one family: Holm-adjusted levels in order of p-value, stopping at the first undecided
    comparison (later ones are reported undecided, "holm_stopped"), or one fixed ``level`` without Holm."""
    reps = {}
    for s in specs:
        reps[s.name] = contrast_replicates(scores, {s.plus: 1.0, s.minus: -1.0}, B=ts.bootstrap, seed=ts.seed,
                                           metric=s.metric)
    ps = [stats.bootstrap_p(reps[s.name][1], s.threshold) for s in specs]
    plan = stats.holm_levels(ps, ts.alpha) if holm else [(i, level) for i in range(len(specs))]
    out: list[dict[str, Any] | None] = [None] * len(specs)
    stopped = False
    for i in sorted(range(len(specs)), key=lambda i: plan[i][0]):
        s, lvl = specs[i], plan[i][1]
        point, r = reps[s.name]
        ci = stats.percentile_interval(point, r, lvl)
        decision = "undecided" if stopped else s.decide(ci.low, ci.high)
        out[i] = _record(s, scores, point, r, lvl, ps[i], decision, ts)
        out[i]["holm_stopped"] = stopped and s.decide(ci.low, ci.high) != "undecided"
        stopped = stopped or (holm and decision == "undecided")
    return out


# ---- the claims --------------------------------------------------------------------------------------------


def _claim(cid: str, rule: str, comparisons: list[dict[str, Any]], verdict: str, reason: str = "") -> dict:
    return {"id": cid, "claim": CLAIM_TEXT[cid], "rule": rule, "verdict": verdict, "reason": reason,
            "comparisons": comparisons}


def claims_a(scores: Mapping[str, PatternScores], ts: TestSettings) -> list[dict[str, Any]]:
    rule = ("Δ log gen-PPL = {arm} − light-middle, paired; Holm over a1, a2 at family-wise α = "
            f"{ts.alpha:g}: CI < 0 reproduced, CI > 0 contradicted, else inconclusive")
    arms = {"a1": "light-first", "a2": "light-last"}
    present = [c for c, arm in arms.items() if arm in scores and "light-middle" in scores]
    specs = [Spec(c, arms[c], "light-middle", "log_ppl", 0.0, superiority, abs) for c in present]
    results = dict(zip(present, run_family(specs, scores, ts), strict=True)) if specs else {}
    out = []
    for c, arm in arms.items():
        if c not in results:
            out.append(_claim(c, rule.format(arm=arm), [], VERDICTS[2], f"{arm} or light-middle not evaluated"))
            continue
        d = results[c]["decision"]
        out.append(_claim(c, rule.format(arm=arm), [results[c]],
                          VERDICTS[0] if d == "better" else VERDICTS[1] if d == "worse" else VERDICTS[2]))
    return out


def claim_b(scores: Mapping[str, PatternScores], ts: TestSettings) -> dict[str, Any]:
    δ = ts.sandwich_margin
    rule = (f"Δ_k = log gen-PPL(sandwich) − log gen-PPL(other_k), paired, Holm over the comparisons at "
            f"family-wise α = {ts.alpha:g}: CI < δ = {δ:g} non-inferior, CI > δ inferior; all non-inferior → "
            "reproduced, any inferior → contradicted, else inconclusive")
    others = [o for o in B_COMPARATORS if o in scores]
    if "sandwich" not in scores or not others:
        return _claim("b", rule, [], VERDICTS[2], "the sandwich or its comparators were not evaluated")
    specs = [Spec(o, "sandwich", o, "log_ppl", δ, non_inferiority(δ), lambda p, δ=δ: abs(p - δ)) for o in others]
    comps = run_family(specs, scores, ts)
    decisions = {c["decision"] for c in comps}
    verdict = (VERDICTS[1] if "inferior" in decisions else VERDICTS[0] if decisions == {"non-inferior"}
               else VERDICTS[2])
    return _claim("b", rule, comps, verdict)


def claim_c(scores: Mapping[str, PatternScores], ts: TestSettings) -> dict[str, Any]:
    ε = ts.entropy_margin
    level = 1 - 2 * ts.alpha
    rule = (f"Δ = entropy(sandwich) − entropy(all-heavy) in nats, paired; {level:.0%} CI (two one-sided tests "
            f"at α = {ts.alpha:g}) inside ±ε = {ε:g} → reproduced, entirely outside → contradicted, else "
            "inconclusive")
    if "sandwich" not in scores or "all-heavy" not in scores:
        return _claim("c", rule, [], VERDICTS[2], "the sandwich or all-heavy was not evaluated")
    spec = Spec("entropy", "sandwich", "all-heavy", "entropy", ε, equivalence(ε), equivalence_distance(ε))
    comp = run_family([spec], scores, ts, holm=False, level=level)[0]
    verdict = {"equivalent": VERDICTS[0], "different": VERDICTS[1]}.get(comp["decision"], VERDICTS[2])
    return _claim("c", rule, [comp], verdict)


def main_comparisons(scores: Mapping[str, PatternScores], ts: TestSettings) -> list[dict[str, Any]]:
    """All-light and sandwich against all-heavy (95%-style two-sided at α, unadjusted), with their MDEs."""
    specs = [Spec(f"{a} vs {b}", a, b, "log_ppl", 0.0, superiority, abs) for a, b in MAIN_CONTRASTS
             if a in scores and b in scores]
    return run_family(specs, scores, ts, holm=False, level=1 - ts.alpha) if specs else []


def evaluate_claims(scores: Mapping[str, PatternScores], ts: TestSettings) -> dict[str, Any]:
    """Every claim's verdict and the main comparisons, from aligned evaluation scores {schedule: scores}."""
    return {"claims": [*claims_a(scores, ts), claim_b(scores, ts), claim_c(scores, ts)],
            "main_comparisons": main_comparisons(scores, ts),
            "settings": {"sandwich_margin": ts.sandwich_margin, "entropy_margin": ts.entropy_margin,
                         "alpha": ts.alpha, "power": ts.power, "bootstrap": ts.bootstrap, "seed": ts.seed}}


# ---- reading the evaluation outputs ----------------------------------------------------------------------


def evaluation_scores(metrics_dir: Path, schedules: Sequence[str]) -> dict[str, PatternScores]:
    """Per-sample scores of the evaluated schedules, paired with all-heavy by (seed, sample_index).

    A missing per-sample file or sample keys that do not pair: one-line UserError naming the file(s).
    """
    if "all-heavy" not in schedules:
        raise UserError("params.yaml: `schedules` must include all-heavy (the baseline of every comparison)")
    files = {name: Path(metrics_dir) / f"{name}.per_sample.jsonl" for name in schedules}
    return aligned_scores(files, "all-heavy")


def gather_comparison(metrics_dir: Path, optimized: str, *, B: int, seed: int, search_best: str = "search-best",
                      sandwich: str = "sandwich", baseline: str = "all-heavy") -> dict[str, Any]:
    """The optimized schedule vs the search's best and the sandwich, from the pipeline's evaluate outputs
    (metrics/<name>.json and .per_sample.jsonl): gen-PPL, Δ vs all-heavy, and paired Δ of the optimized
    schedule against each. Missing files are listed under "missing", never skipped silently."""
    mdir = Path(metrics_dir)
    labels = {"optimized": optimized, "search_best": search_best, "sandwich": sandwich, "all_heavy": baseline}
    out: dict[str, Any] = {"metrics_dir": str(mdir), "schedules": {}, "missing": []}
    for label, name in labels.items():
        path = mdir / f"{name}.json"
        if not path.is_file():
            out["missing"].append(str(path))
            continue
        m = read_json(path, "run `mdlm evaluate`")
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
                out["paired"][f"optimized_minus_{other}"] = interval_dict(*d)
    return out


def heldout_rows(metrics_dir: Path, search: Mapping[str, Any] | None,
                 optimizer_records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each selected schedule's score on the data that selected it next to its held-out evaluation score.

    search-best: its Δ log gen-PPL among the search placements (selection range) vs metrics/search-best.json
    (evaluation range). Optimizer schedules: the Δ predicted by the fit on the search (no interval) vs their
    metrics/<name>.json. A selected schedule without its evaluation file is an error (no partial report).
    """
    rows = []
    if search is not None:
        best = search["ranking"][0]
        held = read_json(Path(metrics_dir) / "search-best.json", "run `mdlm evaluate` on search-best (dvc repro)")
        rows.append({"schedule": "search-best", "pattern": best["pattern"], "selection": "search samples",
                     "in_sample": _delta(best, search.get("num_samples")), "held_out": _delta(held)})
    for rec in optimizer_records:
        held = read_json(Path(metrics_dir) / f"{rec['name']}.json", f"run `mdlm evaluate` on {rec['name']}")
        pred = rec.get("predicted_delta_log_ppl")
        rows.append({"schedule": rec["name"], "pattern": rec["schedule"], "selection": "fit on the search",
                     "in_sample": {"point": pred, "ci_low": None, "ci_high": None, "n": None},
                     "held_out": _delta(held)})
    return rows


def _delta(m: Mapping[str, Any], n: int | None = None) -> dict[str, Any]:
    if "delta_log_ppl" not in m:
        raise UserError(f"metrics of {m.get('schedule', '?')}: no delta_log_ppl (evaluate it with --baseline)")
    return {"point": m["delta_log_ppl"], "ci_low": m["delta_log_ppl_ci_low"], "ci_high": m["delta_log_ppl_ci_high"],
            "n": n if n is not None else m.get("num_samples")}
