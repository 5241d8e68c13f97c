"""`mdlm flops --schedule FILE [--samples FILE.jsonl [--baseline-samples ALL_HEAVY.jsonl]]`: what a schedule costs.

Definitions of the four accountings (blocks_only, full, effective, executed): `mdlm.flops`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.errors import UserError
from mdlm.flops import REFERENCE_MODEL, model_configs, schedule_report
from mdlm.io import atomic_write_json
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.run_counts import read_sampled_run
from mdlm.schedule import load_schedule, resolve_schedule_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedule", required=True, help="schedule file, or the name of one in schedules/")
    parser.add_argument("--samples", help="samples JSONL of `mdlm sample` (with its .meta.json): adds the "
                        "effective and executed accountings")
    parser.add_argument("--baseline-samples", help="samples JSONL of the all-heavy run of the same sampler: "
                        "savings vs that run (executed saving needs it)")
    parser.add_argument("--steps", type=int, help="T (default: the samples' T, else the profile's sample.steps)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", help="also write the JSON report to this file (atomically)")
    parser.add_argument("--no-measure", action="store_true", help="skip the fvcore cross-check")
    add_profile_argument(parser)


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    if args.baseline_samples and not args.samples:
        raise UserError("--baseline-samples needs --samples (the run to compare with the baseline run)")
    run = read_sampled_run(args.samples) if args.samples else None
    baseline = read_sampled_run(args.baseline_samples) if args.baseline_samples else None
    steps = args.steps if args.steps is not None else (run.steps if run else profile.sample.steps)
    if run is not None and steps != run.steps:
        raise UserError(f"{run.path}: sampled with {run.steps} steps, but --steps is {steps}")
    if steps < 1:
        raise UserError(f"--steps {steps}: expected a positive integer")
    schedule = load_schedule(resolve_schedule_path(args.schedule), steps)
    if run is not None and (run.schedule != schedule.name
                            or run.notation is not None and run.notation != schedule.notation):
        raise UserError(f"{run.path}: sampled with schedule {run.schedule!r} ({run.notation or 'segments unknown'}), "
                        f"not {schedule.name!r} ({schedule.notation}, {schedule.source})")
    if baseline is not None and baseline.steps != steps:
        raise UserError(f"{baseline.path}: sampled with {baseline.steps} steps, the run with {steps}")

    names = [REFERENCE_MODEL, *schedule.model_steps]
    configs = model_configs(profile.model, profile.tokenizer, profile.data.seq_len, names)
    report = {"profile": profile.name,
              **schedule_report(configs, schedule, run, baseline, measure=not args.no_measure)}
    report[STAGE_TIME_KEY] = elapsed()
    if args.out:
        atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of `mdlm.flops.schedule_report`."""
    g = 1e9
    lines = [f"profile {r['profile']}, schedule {r['schedule']} ({r['notation']}), T = {r['steps']}, "
             f"seq_len {r['seq_len']}", f"units: {r['units']}", "",
             f"{'model':<8} {'steps':>6} {'blocks GFLOPs':>14} {'head GFLOPs':>12} {'other GFLOPs':>13} "
             f"{'total GFLOPs':>13} {'fvcore GFLOPs':>14} {'fvcore/analytic':>16}"]
    for m, e in r["models"].items():
        a = e["analytic"]["flops"]
        fv = e.get("fvcore", {}).get("flops", {}).get("total")
        ratio = e.get("fvcore_over_analytic")
        lines.append(f"{m:<8} {e['steps']:>6} {a['blocks'] / g:>14.3f} {a['head'] / g:>12.3f} {a['other'] / g:>13.4f} "
                     f"{a['total'] / g:>13.3f} {'-' if fv is None else f'{fv / g:.3f}':>14} "
                     f"{'-' if ratio is None else f'{ratio:.5f}':>16}")
    lines += ["", f"{'accounting':<12} {'TFLOPs/sequence':>16} {'all-heavy':>10} {'saving':>8}"]
    for acc, a in r["accountings"].items():
        per = a.get("rows", 1)
        heavy = a.get("all_heavy_flops")
        saving = a.get("saving")
        lines.append(f"{acc:<12} {a['flops'] / per / 1e12:>16.4f} "
                     f"{'-' if heavy is None else f'{heavy / per / 1e12:.4f}':>10} "
                     f"{'-' if saving is None else f'{saving:.2%}':>8}")
    if "effective_saving_vs_baseline" in r:
        lines.append(f"effective vs baseline run {r['accountings']['effective']['baseline']['samples']}: "
                     f"{r['effective_saving_vs_baseline']:.2%}")
    if "head_positions_source" in r:
        lines.append(f"executed: head positions {r['head_positions_source']}"
                     + ("" if r["executed_saving"] is not None else "; saving needs --baseline-samples"))
    lines += ["", f"convention: {r['noise_removal_convention']}"]
    return "\n".join(lines)
