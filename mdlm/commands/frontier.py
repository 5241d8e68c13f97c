"""`mdlm frontier`: sample and judge the profile's frontier grid in one process; write the frontier outputs.

Outputs in runs/<profile>/frontier/ (or --out-dir): frontier.per_sample.jsonl (per-sample scores),
frontier.csv (`dvc plots` data), frontier.png, frontier.md (the report section) and, last, frontier.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import torch

from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.commands.common import profile_denoisers
from mdlm.config import Profile
from mdlm.errors import UserError
from mdlm.flops import forward_costs, model_configs
from mdlm.frontier import (
    PLOT_COLUMNS,
    budget_table,
    frontier_schedules,
    per_sample_rows,
    plot_rows,
    point_records,
    run_point,
)
from mdlm.frontier_report import frontier_section, plot_frontier
from mdlm.io import atomic_path, atomic_write_json, atomic_write_jsonl, atomic_write_text, check_writable
from mdlm.judge import scorer
from mdlm.optimize import FractionOptimizer, held_out_optimizer
from mdlm.paths import project_root, run_dir
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.sampling_law import SamplerConfig
from mdlm.schedule import SCHEDULES_DIR
from mdlm.tokenizers import get_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--num-samples", type=int, help="default: frontier.num_samples, else sample.num_samples")
    parser.add_argument("--only", help="comma-separated schedule names of the grid to run (the all-heavy "
                        "reference always runs): for timing a few schedules")
    parser.add_argument("--list", action="store_true", help="print the grid's schedules and exit")
    parser.add_argument("--out-dir", help="default: runs/<profile>/frontier")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 on a busy machine)")


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    settings = profile.require("frontier")
    where = f"params.yaml: profiles.{profile.name}.frontier"
    points = frontier_schedules(settings, profile.sample.steps, _taken_names(profile.name), where,
                                _optimizer(profile, f"{where}.optimized") if settings.optimized else None)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = sorted(wanted - {p.name for p in points})
        if unknown:
            raise UserError(f"--only: {', '.join(unknown)} not in the grid of profile {profile.name}")
        points = [p for i, p in enumerate(points) if i == 0 or p.name in wanted]
    if args.list:
        for p in points:
            print(f"{p.name}\t{p.schedule.notation}")
        return 0
    num_samples = args.num_samples or settings.num_samples or profile.sample.num_samples
    if num_samples < 1:
        raise UserError(f"--num-samples {num_samples}: expected a positive integer")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: expected a positive integer")
    out_dir = Path(args.out_dir) if args.out_dir else run_dir(profile.name) / "frontier"
    check_writable(out_dir / "frontier.json")  # one line now, not after the grid has run

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = get_tokenizer(profile.tokenizer)
    seq_len = profile.data.seq_len
    configs = model_configs(profile.model, profile.tokenizer, seq_len, ("heavy", "light"))
    denoisers = profile_denoisers(profile)
    score, judge_info = scorer(profile.evaluate, profile.tokenizer)
    config = SamplerConfig.from_settings(profile.sample)
    start = time.perf_counter()
    runs = []
    for p in points:
        runs.append(run_point(p, denoisers, score, tokenizer.batch_decode, configs, mask_id=int(tokenizer.mask_id),
                              seq_len=seq_len, sample_indices=range(num_samples), seed=profile.sample.seed,
                              config=config, batch_size=profile.sample.batch_size))
    records = point_records(runs, B=profile.evaluate.bootstrap, seed=profile.evaluate.seed)
    table = budget_table(runs, records, B=profile.evaluate.bootstrap, seed=profile.evaluate.seed,
                         alpha=profile.claims.alpha)

    atomic_write_jsonl(out_dir / "frontier.per_sample.jsonl", per_sample_rows(runs))
    atomic_write_text(out_dir / "frontier.csv", _csv(plot_rows(records)))
    with atomic_path(out_dir / "frontier.png") as tmp:
        plot_frontier(records, tmp)
    atomic_write_text(out_dir / "frontier.md", frontier_section(records, table, figure="frontier.png"))
    atomic_write_json(out_dir / "frontier.json", {
        "profile": profile.name, "num_samples": num_samples, "seed": profile.sample.seed,
        "sample_indices": [0, num_samples], "steps": profile.sample.steps, **judge_info,
        "bootstrap": profile.evaluate.bootstrap, "num_threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - start, 3), "schedules": records, "budgets": table,
        "per_sample": "frontier.per_sample.jsonl", STAGE_TIME_KEY: elapsed()})
    print(f"wrote {out_dir / 'frontier.json'}: {len(records)} schedules x {num_samples} samples, "
          f"{sum(r['on_front'] for r in records)} on the front ({time.perf_counter() - start:.1f} s)")
    return 0


def _taken_names(profile_name: str) -> dict[str, str]:
    """Schedule names in use: the files of schedules/ and the optimize stage's outputs (names, not contents)."""
    taken = {p.stem: f"schedules/{p.name}" for p in (project_root() / SCHEDULES_DIR).glob("*.yaml")}
    for p in (run_dir(profile_name) / "optimize").glob("*.yaml"):
        taken.setdefault(p.stem, f"the optimize stage's {p.name}")
    return taken


def _optimizer(profile: Profile, where: str) -> FractionOptimizer:
    """The optimizer of the `optimized` family, from this profile's importance and search outputs."""
    costs = {m: macs.total for m, macs in
             forward_costs(profile.model, profile.tokenizer, profile.data.seq_len).items()}
    rd = run_dir(profile.name)
    return held_out_optimizer(costs, profile.optimize.max_light_segments, rd / "importance", rd / "search", where)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PLOT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
