"""The results report (library of `mdlm report`): one Markdown page and its figures from the stage outputs.

Reads runs/<profile>/{metrics,flops,importance,search,optimize} (timing/ and frontier/ when present; the stage
times of `mdlm.stage_times`) and produces reports/results.md, reports/summary.json (every number the prose
uses), reports/figures/*.png (the offline view; `dvc plots` HTML needs a CDN) and reports/plots/*.csv (for `dvc
plots`). Every number and sentence comes from those files (`mdlm.prose` templates the sentences); nothing is
typed in by hand. All inputs are read and checked before anything is written, so bad input leaves no partial
report.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from mdlm import claims as claims_mod
from mdlm import prose, stage_times
from mdlm.errors import UserError
from mdlm.importance import split_bins
from mdlm.io import atomic_path, atomic_write_json, atomic_write_text, read_json, sha256_file
from mdlm.patterns import pattern_schedule
from mdlm.plots import plot_ppl_vs_flops
from mdlm.scores import PatternScores, paired_deltas
from mdlm.search import load_result
from mdlm.timing import read_record

FIGURES = ("importance.png", "swap_sensitivity.png", "search.png", "frontier.png")


# ------------------------------------------------------------------------------------------------------------
# reading the stage outputs


def shown(path: Path, run: Path) -> str:
    """``path`` as runs/<profile>/...: reports must not carry machine paths."""
    try:
        return str(Path(path).relative_to(run.parent.parent))
    except ValueError:
        return Path(path).name


def _read(path: Path) -> dict[str, Any]:
    return read_json(path, "run the stage that writes it, or `dvc repro`")


SCORED_UNDER = ("judge", "judge_sha256", "genppl_protocol", "retokenize_length")


def schedule_rows(run: Path, schedules: Sequence[str], scores: Mapping[str, PatternScores], B: int, seed: int
                  ) -> list[dict[str, Any]]:
    """One row per schedule: FLOP savings, judge metrics and paired deltas vs all-heavy (from the per-sample
    scores, so no evaluate stage scores the baseline again), plus the controlled wall-clock saving when the
    timing stage ran (`read_timing`). Schedules scored by another judge or rule than all-heavy: an error."""
    timing = read_timing(run / "timing" / "timing.json")
    reference = _read(run / "metrics" / "all-heavy.json")
    rows = []
    for name in schedules:
        metrics = _read(run / "metrics" / f"{name}.json")
        differs = [k for k in SCORED_UNDER if metrics.get(k) != reference.get(k)]
        if differs:
            raise UserError(f"{run / 'metrics' / name}.json: scored under another {', '.join(differs)} than "
                            f"all-heavy; rerun `mdlm evaluate` on both")
        flops = _read(run / "flops" / f"{name}.json")
        rows.append({
            "schedule": name,
            "light_steps": flops["steps_per_model"].get("light", 0),
            "steps": flops["steps"],
            "blocks_only_saving": flops["blocks_only_saving"],
            "full_saving": flops["full_saving"],
            # the row-forwards this run executed vs those of the all-heavy run of the same sampler
            "effective_saving": flops.get("effective_saving_vs_baseline", flops.get("effective_saving")),
            "executed_saving": flops.get("executed_saving"),
            **timing.get(name, {}),
            **{k: metrics.get(k) for k in (
                "gen_ppl", "gen_ppl_ci_low", "gen_ppl_ci_high", "entropy", "entropy_ci_low", "entropy_ci_high",
                "num_samples", "judge")},
            **paired_deltas(scores[name], scores["all-heavy"], B, seed),
        })
    return rows


TIMING_KEYS = ("wall_saving", "wall_saving_ci_low", "wall_saving_ci_high")


def read_timing(path: Path) -> dict[str, dict[str, float | None]]:
    """{schedule: wall_saving and its CI} from the controlled measurement of `mdlm timing` (timing.json):
    the median over interleaved rounds of 1 - time / time(all-heavy of the same round), with its
    order-statistic interval over rounds (None below 6 rounds). No file: no wall-clock column (single-run
    timings are never shown)."""
    record = read_record(path)
    return {} if record is None else {
        r["schedule"]: dict(zip(TIMING_KEYS, (r["realized_saving"][k] for k in ("point", "ci_low", "ci_high")),
                                strict=True)) for r in record["schedules"]}


def read_frontier(path: Path) -> dict[str, Any] | None:
    """The frontier stage's records and budget table (`mdlm frontier`), if it ran."""
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        return {"num_samples": data["num_samples"], "schedules": data["schedules"], "budgets": data["budgets"]}
    except KeyError as exc:
        raise UserError(f"{path}: not a `mdlm frontier` record (no {exc})") from None


def machine_info(root: Path) -> dict[str, Any]:
    import torch

    from mdlm.onednn import cpu_capability, sampling_gemm

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=root, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    versions = {}
    for pkg in ("torch", "transformers", "fvcore", "dvc", "numpy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    lock = root / "constraints.txt"
    return {"environment lock (constraints.txt) sha256": sha256_file(lock) if lock.is_file() else None,
            "cpu": cpu, "cpu_capability": cpu_capability(),
            # the rule here; each samples meta file names the GEMMs its own run used
            "sampling GEMM (this machine's rule)": sampling_gemm(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "platform": platform.platform(), "commit": commit, **versions}


def write_plot_data(rows: list[dict[str, Any]], extra: list[dict[str, Any]], folder: Path) -> None:
    lines = ["name,kind,full_flops_fraction,blocks_only_saving,full_saving,gen_ppl,delta_log_ppl"]
    for r in rows:
        lines.append(f"{r['schedule']},schedule,{1 - r['full_saving']:.6f},{r['blocks_only_saving']:.6f},"
                     f"{r['full_saving']:.6f},{r['gen_ppl']},{r['delta_log_ppl']}")
    for e in extra:
        lines.append(f"{e['name']},{e['kind']},{1 - e['full_saving']:.6f},{e.get('blocks_only_saving', '')},"
                     f"{e['full_saving']:.6f},{e.get('gen_ppl', '')},{e.get('delta_log_ppl', '')}")
    atomic_write_text(folder / "ppl_vs_flops.csv", "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------------------
# importance / search / optimize sections


def _fmt_ci(point: float, low: float, high: float, fmt: str = "{:+.4f}") -> str:
    return f"{fmt.format(point)} [{fmt.format(low)}, {fmt.format(high)}]"


def _dict_ci(d: Mapping[str, float]) -> str:
    return _fmt_ci(d["point"], d["ci_low"], d["ci_high"])


def placement_savings(costs: Mapping[str, Any], pattern: str, steps: int) -> dict[str, float]:
    """Nominal blocks-only and full savings of a placement (flops.py analytic costs: {model: ForwardMacs})."""
    from mdlm.flops import schedule_savings

    return schedule_savings(pattern_schedule(pattern, steps).model_steps, dict(costs))


def importance_section(run: Path) -> list[str]:
    md = ["## Step importance (`mdlm importance`)", ""]
    imp_path = run / "importance" / "importance.json"
    if not imp_path.is_file():
        return md + [f"Not run ({shown(imp_path, run)} missing).", ""]
    imp = read_json(imp_path)
    bins = imp["bins"]
    outer, middle = split_bins(bins)
    peak = max(bins, key=lambda r: r["kl"])
    return md + [
        f"{len(bins)} time bins, {imp.get('num_sequences', '?')} validation sequences, both models on the "
        f"same masked inputs. NELBO estimate: heavy {imp['nelbo_estimate']['heavy']:.3f}, light "
        f"{imp['nelbo_estimate']['light']:.3f} nats/token. KL(heavy ‖ light) per masked token peaks at "
        f"t = {peak['t']:.3f} ({peak['kl']:.4f}); mean over the first and last quarter of the steps "
        f"(t > 0.75 or t ≤ 0.25) {np.mean([r['kl'] for r in outer]):.4f} vs the middle half "
        f"{np.mean([r['kl'] for r in middle]):.4f}; cross-entropy gap (light − heavy) "
        f"{np.mean([r['ce_gap'] for r in outer]):.4f} vs {np.mean([r['ce_gap'] for r in middle]):.4f}.", ""]


def swap_section(run: Path) -> list[str]:
    swap_path = run / "importance" / "swap_sensitivity.json"
    if not swap_path.is_file():
        return []
    swap, _ = load_result(swap_path)
    seg = swap["steps_per_segment"]
    md = [f"Swap sensitivity: one of {swap['segments']} segments light, {swap['num_samples']} samples, paired "
          "with all-heavy:", "", "| segment | steps | Δ log gen-PPL [95% CI] |", "|---:|---|---|"]
    for r in sorted(swap["ranking"], key=lambda r: r["light_segments"][0]):
        k = r["light_segments"][0]
        md.append(f"| {k} | [{k * seg}, {(k + 1) * seg}) | "
                  f"{_fmt_ci(r['delta_log_ppl'], r['delta_log_ppl_ci_low'], r['delta_log_ppl_ci_high'])} |")
    return md + [""]


def search_section(run: Path, costs: Mapping[str, Any], heavy_gen_ppl: float | None,
                   ) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown and plot points of the search. Placements are plotted at exp(log gen-PPL(all-heavy, pipeline)
    + Δ_search): their paired Δ anchored to the pipeline's all-heavy, since the search scores fewer samples."""
    md = ["## Coarse segment search (`mdlm search`)", ""]
    search_path = run / "search" / "search.json"
    if not search_path.is_file():
        return md + [f"Not run ({shown(search_path, run)} missing).", ""], []
    srch, _ = load_result(search_path)
    ranking = srch["ranking"]
    md += [f"{srch['placements']} placements of {srch['light']} light among {srch['segments']} segments "
           f"({srch['steps_per_segment']} steps each), {srch['num_samples']} samples each, paired with "
           f"all-heavy; {srch['traversal']['mode']} traversal ({srch['traversal']['segment_runs']} segment "
           f"runs). Best and worst:", "",
           "| rank | placement | schedule | Δ log gen-PPL [95% CI] | Δ entropy [95% CI] |",
           "|---:|---|---|---|---|"]
    listed = ranking if len(ranking) <= 8 else ranking[:5] + ranking[-3:]
    for r in listed:
        md.append(f"| {r['rank']} | `{r['pattern']}` | {r['schedule']} | "
                  f"{_fmt_ci(r['delta_log_ppl'], r['delta_log_ppl_ci_low'], r['delta_log_ppl_ci_high'])} | "
                  f"{_fmt_ci(r['delta_entropy'], r['delta_entropy_ci_low'], r['delta_entropy_ci_high'])} |")
    order = ", ".join(str(s["segment"]) for s in srch["segment_sensitivity"])
    md += ["", f"Segments from most to least robust (mean Δ over the placements that make them light): {order}.", ""]
    points = []
    for r in ranking:
        sav = placement_savings(costs, r["pattern"], int(srch["steps"]))
        gen = math.exp(math.log(heavy_gen_ppl) + r["delta_log_ppl"]) if heavy_gen_ppl else r["gen_ppl"]
        points.append({"name": f"search-{r['pattern']}", "kind": "search", "full_saving": sav["full_saving"],
                       "blocks_only_saving": sav["blocks_only_saving"], "gen_ppl": gen,
                       "delta_log_ppl": r["delta_log_ppl"]})
    return md, points


def _measured_table(measured: Mapping[str, Mapping[str, Any]]) -> list[str]:
    md = ["| schedule | gen-PPL [95% CI] | Δ log gen-PPL vs all-heavy [95% CI] |", "|---|---|---|"]
    for label, m in measured.items():
        if "gen_ppl" in m:
            delta = (_fmt_ci(m["delta_log_ppl"], m["delta_log_ppl_ci_low"], m["delta_log_ppl_ci_high"])
                     if "delta_log_ppl" in m else "–")
            ppl = (_fmt_ci(m["gen_ppl"], m["gen_ppl_ci_low"], m["gen_ppl_ci_high"], "{:.2f}")
                   if "gen_ppl_ci_low" in m else f"{m['gen_ppl']:.2f}")
            md.append(f"| {m.get('schedule', label)} | {ppl} | {delta} |")
    return md + [""]


def optimizer_section(run: Path, B: int, seed: int) -> tuple[list[str], list[dict[str, Any]], dict | None]:
    """Markdown, plot points and the last measured comparison of every optimizer record in run/optimize."""
    md = ["## Budgeted optimizer (`mdlm optimize`)", ""]
    records = sorted((run / "optimize").glob("*.json")) if (run / "optimize").is_dir() else []
    comparison, points = None, []
    for path in records:
        rec = read_json(path)
        if "light_runs" not in rec:
            continue
        md += [f"`{rec['name']}`: {rec['schedule']} ({rec['light_steps']}/{rec['steps']} light steps), full saving "
               f"{rec['full_saving']:.2%} for a budget of {rec['budget']:.2%} ({rec['budget_source']}). Signal "
               f"`{rec['signal']}`: {rec['signal_reason']}."
               + (f" Predicted Δ log gen-PPL {rec['predicted_delta_log_ppl']:+.4f} (linear fit on the search, "
                  f"R² {rec['calibration']['r2']:.2f})." if "predicted_delta_log_ppl" in rec else ""), ""]
        comparison = claims_mod.gather_comparison(run / "metrics", rec["name"], B=B, seed=seed)
        measured = comparison["schedules"]
        if measured:
            md += _measured_table(measured)
        for key, d in comparison.get("paired", {}).items():
            md.append(f"- {key.replace('_', ' ')}: Δ log gen-PPL {_dict_ci(d)}")
        if comparison["missing"]:
            md.append(f"- not evaluated by the pipeline: {', '.join(Path(p).name for p in comparison['missing'])}")
        md.append("")
        m = measured.get("optimized")
        if m and m.get("gen_ppl"):
            points.append({"name": rec["name"], "kind": "optimizer", "full_saving": rec["full_saving"],
                           "gen_ppl": m["gen_ppl"], "delta_log_ppl": m.get("delta_log_ppl")})
    if comparison is None:
        md += [f"Not run (no optimizer record in {shown(run / 'optimize', run)}).", ""]
    return md, points, comparison


def optimizer_records(run: Path) -> list[dict[str, Any]]:
    folder = run / "optimize"
    records = [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in records if "light_runs" in r]


def analysis_summary(run: Path, rows: Sequence[Mapping[str, Any]], costs: Mapping[str, Any], B: int,
                     seed: int) -> dict[str, Any]:
    """Markdown sections and plot points of the selection stages (run/{importance,search,optimize}).

    ``rows``: the report's per-schedule rows (name under "schedule", "gen_ppl", ...); ``costs``: {model:
    ForwardMacs}. Returns {"markdown", "points", "comparison"}. A stage that has not run is reported as such,
    never skipped silently.
    """
    heavy = next((r for r in rows if r.get("schedule") == "all-heavy" and r.get("gen_ppl")), None)
    search_md, search_points = search_section(run, costs, heavy["gen_ppl"] if heavy else None)
    opt_md, opt_points, comparison = optimizer_section(run, B, seed)
    md = importance_section(run) + swap_section(run) + search_md + opt_md
    return {"markdown": "\n".join(md), "points": search_points + opt_points, "comparison": comparison}


# ------------------------------------------------------------------------------------------------------------
# the report


@dataclass(frozen=True)
class ReportInputs:
    """What `mdlm report` reads besides the stage outputs, as plain values."""

    run: Path  # runs/<profile>
    profile_name: str
    predictor: str
    precision: str
    schedules: tuple[str, ...]
    costs: Mapping[str, Any]  # {model: flops.ForwardMacs}
    tests: claims_mod.TestSettings
    ranges: Mapping[str, tuple[int, int]]  # Profile.sample_ranges: evaluation, search, swap


def summarize(inp: ReportInputs) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, analysis): every number of the report, read and checked before anything is written."""
    scores = claims_mod.evaluation_scores(inp.run / "metrics", inp.schedules)
    rows = schedule_rows(inp.run, inp.schedules, scores, inp.tests.bootstrap, inp.tests.seed)
    search_path = inp.run / "search" / "search.json"
    search = load_result(search_path)[0] if search_path.is_file() else None
    heldout = claims_mod.heldout_rows(inp.run / "metrics", search, optimizer_records(inp.run), inp.tests.bootstrap,
                                      inp.tests.seed)
    analysis = analysis_summary(inp.run, rows, inp.costs, inp.tests.bootstrap, inp.tests.seed)
    first = rows[0] if rows else {}
    summary = {"profile": inp.profile_name, "num_samples": first.get("num_samples"), "steps": first.get("steps"),
               "judge": first.get("judge"), "predictor": inp.predictor, "precision": inp.precision,
               "ranges": {k: list(v) for k, v in inp.ranges.items()}, "table": rows,
               "claims": claims_mod.evaluate_claims(scores, inp.tests), "heldout": heldout,
               "frontier": read_frontier(inp.run / "frontier" / "frontier.json"),
               "timing": read_record(inp.run / "timing" / "timing.json"),
               "stage_times": stage_times.with_report(stage_times.collect(inp.run, inp.schedules), None)}
    return summary, analysis


def report_markdown(summary: Mapping[str, Any], analysis: Mapping[str, Any], figures: Sequence[str],
                    machine: Mapping[str, Any]) -> str:
    name = summary["profile"]
    return "\n".join([
        f"# Results: profile `{name}`", "",
        f"Generated by `mdlm report --profile {name}` from the outputs of `dvc repro`; sampler "
        f"{summary['predictor']} in {summary['precision']}. Intervals are bootstrap CIs over samples; Δ vs "
        "all-heavy is paired (same seeds and sample indices, common random numbers). FLOPs saved: `blocks_only` "
        "counts transformer blocks only (the paper's accounting), `full` adds the output head, attention and "
        "conditioning, `effective` compares the row-forwards the caching sampler actually ran with those of the "
        "all-heavy run.", "",
        *prose.results_block(summary), "",
        "# Selection stages (descriptive; selection samples only)", "",
        analysis["markdown"], "",
        "## Figures", "",
        "![gen PPL vs FLOPs](figures/ppl_vs_flops.png)",
        *[f"![{n}](figures/{n})" for n in figures if n != "frontier.png"], "",  # the frontier's is in its section
        *prose.timing_section(summary.get("timing")),
        *prose.stage_time_section(summary.get("stage_times")),
        "## Machine and versions", "",
        *[f"- {k}: {v}" for k, v in machine.items()], "",
    ])


def copy_figures(run: Path, figures: Path) -> list[str]:
    copied = []
    for folder in ("importance", "search", "frontier"):
        for name in FIGURES:
            src = run / folder / name
            if src.is_file():
                with atomic_path(figures / name) as tmp:
                    shutil.copyfile(src, tmp)
                copied.append(name)
    return [n for n in FIGURES if n in copied]


def write_report(inp: ReportInputs, out_dir: Path, root: Path,
                 own_time: Callable[[], Mapping[str, float]] | None = None) -> dict[str, Any]:
    """Read everything (`summarize`), then write figures, plot data, summary.json and results.md under
    ``out_dir``. ``own_time``: the report's own stage time so far (`mdlm.clock.elapsed`), taken just before
    summary.json is written. Returns the summary (for the README block)."""
    summary, analysis = summarize(inp)
    figures, plots = out_dir / "figures", out_dir / "plots"
    rows = summary["table"]
    plot_ppl_vs_flops(rows, analysis["points"], figures / "ppl_vs_flops.png")
    write_plot_data(rows, analysis["points"], plots)
    copied = copy_figures(inp.run, figures)
    summary["stage_times"] = stage_times.with_report(summary["stage_times"]["stages"], own_time and own_time())
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "results.md", report_markdown(summary, analysis, copied, machine_info(root)))
    return summary
