"""`mdlm report`: reports/results.md, summary.json, figures and plot data, and the README's results block."""

from __future__ import annotations

import argparse
from pathlib import Path

from mdlm import flops, prose, report
from mdlm.claims import TestSettings
from mdlm.clock import elapsed
from mdlm.errors import UserError
from mdlm.io import atomic_write_text
from mdlm.paths import project_root, run_dir
from mdlm.profiles import add_profile_argument, load_params, load_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default reports/)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="README whose generated results block to rewrite (default: README.md of the project; "
                             "only with the params.yaml default profile)")
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")


def main(args: argparse.Namespace) -> int:
    params = load_params()
    profile = load_profile(args.profile)
    schedules = tuple(params.get("schedules") or [])
    if "all-heavy" not in schedules:
        raise UserError("params.yaml: `schedules` must include all-heavy (the baseline of every comparison)")
    root = project_root()
    out_dir = args.out or root / "reports"
    # the README shows the default profile only: another profile's report must not overwrite it
    readme = None if args.no_readme or (args.readme is None and profile.name != params.get("profile")) else (
        args.readme or root / "README.md")
    readme_text = readme.read_text(encoding="utf-8") if readme else None
    if readme_text is not None:
        prose.readme_section(readme_text)  # markers present: checked before anything is written
    ev, cl = profile.evaluate, profile.claims
    inputs = report.ReportInputs(
        run=run_dir(profile.name), profile_name=profile.name, predictor=profile.sample.predictor,
        precision=profile.sample.precision, schedules=schedules,
        costs=flops.forward_costs(profile.model, profile.tokenizer, profile.data.seq_len),
        tests=TestSettings(cl.sandwich_margin, cl.entropy_margin, cl.alpha, cl.power, ev.bootstrap, ev.seed),
        ranges=profile.sample_ranges())
    summary = report.write_report(inputs, out_dir, root, own_time=elapsed)
    if readme_text is not None:
        atomic_write_text(readme, prose.splice_readme(readme_text, prose.readme_block(summary), str(readme)))
    verdicts = ", ".join(f"{c['id']} {c['verdict']}" for c in summary["claims"]["claims"])
    print(f"wrote {out_dir / 'results.md'}" + (f" and the results block of {readme}" if readme else "")
          + f"; claims: {verdicts}")
    return 0
