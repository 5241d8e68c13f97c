"""`mdlm optimize`: a heavy/light schedule for a FLOP budget, light steps where the predicted sensitivity is lowest."""

from __future__ import annotations

import argparse
from pathlib import Path

from mdlm import flops, optimize
from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.errors import UserError
from mdlm.io import atomic_write_json
from mdlm.paths import run_dir
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.schedule import dump_schedule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--budget", help="full-FLOP saving fraction in (0, 1), or a schedule name/file whose full "
                        "saving is the budget (e.g. sandwich); default: profile optimize.budget")
    parser.add_argument("--out", help="schedule YAML to write (default: runs/<profile>/optimize/optimized.yaml)")
    parser.add_argument("--report", help="JSON record (default: <out without .yaml>.json)")
    parser.add_argument("--name", help="schedule name (default: the file name of --out without .yaml)")
    parser.add_argument("--max-segments", type=int,
                        help="at most this many contiguous light runs (default: optimize.max_light_segments)")
    parser.add_argument("--importance", help="importance folder (default: runs/<profile>/importance/)")
    parser.add_argument("--search", help="search folder (default: runs/<profile>/search/)")
    parser.add_argument("--steps", type=int, help="denoising steps T (default: profile sample.steps)")


def model_costs(profile) -> dict[str, int]:
    """Full MACs of one forward of each model."""
    costs = flops.forward_costs(profile.model, profile.tokenizer, profile.data.seq_len)
    return {m: macs.total for m, macs in costs.items()}


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, overrides={
        "sample": {"steps": args.steps}, "optimize": {"max_light_segments": args.max_segments}})
    cfg, steps = profile.optimize, profile.sample.steps
    budget_arg = args.budget if args.budget is not None else cfg.budget
    out = Path(args.out) if args.out else run_dir(profile.name) / "optimize" / "optimized.yaml"
    if out.suffix not in (".yaml", ".yml"):
        raise UserError(f"--out {out}: expected a .yaml schedule file")
    report = Path(args.report) if args.report else out.with_suffix(".json")
    name = args.name or out.stem

    costs = model_costs(profile)
    budget, source = optimize.parse_budget(budget_arg, steps, costs)
    optimize.light_steps_for_budget(budget, steps, costs["heavy"], costs["light"])  # fail early if impossible
    rd = run_dir(profile.name)
    signals, search, correlations = optimize.load_signals(
        steps, Path(args.importance) if args.importance else rd / "importance",
        Path(args.search) if args.search else rd / "search")
    schedule, record = optimize.optimize(steps, costs, budget, signals, max_segments=cfg.max_light_segments,
                                         name=name, search=search, correlations=correlations, budget_source=source)
    record.update(profile=profile.name, schedule_file=str(out), **{STAGE_TIME_KEY: elapsed()})
    dump_schedule(schedule, out)
    atomic_write_json(report, record)
    print(f"optimize: {schedule.notation} ({record['light_steps']} light steps, full saving "
          f"{record['full_saving']:.4f} >= budget {record['budget']:.4f}); signal {record['signal']}; wrote {out}")
    return 0
