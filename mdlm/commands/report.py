"""`mdlm report`: reports/results.md, its figures and plot data from the outputs of the other stages."""

from __future__ import annotations

import argparse
from pathlib import Path

from mdlm import flops, report
from mdlm.commands.common import add_profile_argument
from mdlm.errors import UserError
from mdlm.io import atomic_write_text
from mdlm.paths import project_root, run_dir
from mdlm.profiles import load_params, load_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default reports/)")


def model_forward_macs(profile) -> dict[str, flops.ForwardMacs]:
    # flops.profile_model_configs still reads the profile as a mapping: hand it the validated profile's dict
    configs = flops.profile_model_configs(profile.model_dump(), ["heavy", "light"])
    return {m: flops.analytic_macs(cfg) for m, cfg in configs.items()}


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    schedules = load_params().get("schedules") or []
    if "all-heavy" not in schedules:
        raise UserError("params.yaml: `schedules` must include all-heavy (the baseline of every comparison)")
    out_dir = args.out or project_root() / "reports"
    text = report.build_report(run=run_dir(profile.name), profile_name=profile.name, sample=profile.sample,
                               schedules=schedules, costs=model_forward_macs(profile), B=profile.evaluate.bootstrap,
                               seed=profile.evaluate.seed, out_dir=out_dir, root=project_root())
    atomic_write_text(out_dir / "results.md", text)
    print(f"wrote {out_dir / 'results.md'}")
    return 0
