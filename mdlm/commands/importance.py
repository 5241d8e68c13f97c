"""`mdlm importance`: per-timestep loss/KL of heavy vs light, and the swap-sensitivity profile."""

from __future__ import annotations

import argparse
from pathlib import Path

from mdlm import importance, patterns, search
from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.commands.common import profile_denoisers
from mdlm.config import overlap_message
from mdlm.errors import UserError
from mdlm.io import atomic_write_json, atomic_write_text, check_writable
from mdlm.judge import scorer
from mdlm.paths import run_dir
from mdlm.plots import plot_importance
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.sampling_law import SamplerConfig
from mdlm.tokenizers import get_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--out", help="output folder (default: runs/<profile>/importance/)")
    parser.add_argument("--swap", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the swap-sensitivity profile (samples + judge; default: on)")
    parser.add_argument("--swap-samples", type=int,
                        help="samples per swap (default: importance.swap_samples, else search.num_samples)")
    parser.add_argument("--no-progress", action="store_true")


def validation_rows(profile):
    """The prepared validation split of the profile [N, seq_len]."""
    from mdlm.data import load_split

    return load_split(profile.name, "valid")


def swap_sample_count(profile, override: int | None) -> int:
    cfg, srch = profile.require("importance"), profile.search
    n = override or cfg.swap_samples or (srch.num_samples if srch else 0)
    if n < 1:
        raise UserError(f"params.yaml: profiles.{profile.name}: set importance.swap_samples or "
                        f"search.num_samples, or pass --swap-samples")
    return n


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    cfg, ev = profile.require("importance"), profile.evaluate
    out = Path(args.out) if args.out else run_dir(profile.name) / "importance"
    importance.bin_centres(cfg.bins)
    if args.swap:  # validate the swap settings before the long first part
        swap_n = swap_sample_count(profile, args.swap_samples)
        clash = overlap_message(profile.sample_ranges(swap_n))
        if clash:
            raise UserError(f"--swap-samples {swap_n}: {clash}")
        patterns.check_steps(profile.sample.steps, cfg.swap_segments)
    check_writable(out / "importance.json")

    tokenizer = get_tokenizer(profile.tokenizer)
    sequences, rows_used = importance.select_sequences(validation_rows(profile), cfg.num_sequences,
                                                             cfg.seed)
    denoisers = profile_denoisers(profile)
    raw = importance.timestep_profile(denoisers["heavy"], denoisers["light"], sequences, bins=cfg.bins,
                                      mask_id=int(tokenizer.mask_id), batch_size=cfg.batch_size, seed=cfg.seed)
    seq_len = profile.data.seq_len
    rows = importance.summarize_profile(raw, seq_len, B=ev.bootstrap, seed=ev.seed)
    settings = {"profile": profile.name, "split": "valid", "num_sequences": cfg.num_sequences, "num_bins": cfg.bins,
                "batch_size": cfg.batch_size, "seed": cfg.seed, "seq_len": seq_len, "bootstrap": ev.bootstrap,
                "bootstrap_seed": ev.seed, "valid_rows_sha256": importance.rows_digest(rows_used)}
    record = importance.importance_json(rows, settings)
    atomic_write_text(out / "importance.csv", importance.profile_csv(rows))
    plot_importance(rows, out / "importance.png", f"{profile.name}: heavy vs light per timestep")

    if args.swap:
        result = run_swap(profile, denoisers, tokenizer, cfg.swap_segments, swap_n, progress=not args.no_progress)
        search.write_result(result, out, "swap_sensitivity", "Swap sensitivity (one light segment)", markdown=False)
        order = " < ".join(str(r["light_segments"][0]) for r in result.rows)
        print(f"swap sensitivity: {cfg.swap_segments} segments, {swap_n} samples; segments from most to least "
              f"robust: {order}")
    # written last, with the time of the whole stage (the swap profile included)
    atomic_write_json(out / "importance.json", {**record, STAGE_TIME_KEY: elapsed()})
    peak = max(rows, key=lambda r: r["kl"])
    print(f"importance: {cfg.bins} bins x {cfg.num_sequences} sequences; NELBO heavy "
          f"{record['nelbo_estimate']['heavy']:.3f}, light {record['nelbo_estimate']['light']:.3f} nats/token; "
          f"KL peaks at t = {peak['t']:.3f} ({peak['kl']:.4f}); wrote {out}")
    return 0


def run_swap(profile, denoisers, tokenizer, segments: int, num_samples: int, progress: bool) -> search.SearchResult:
    """The search with one light segment: each segment alone made light, paired with all-heavy."""
    from tqdm import tqdm

    s, ev = profile.sample, profile.evaluate
    config = SamplerConfig.from_settings(profile.sample)
    score_fn, judge_meta = judge_scorer(profile)
    total = patterns.planned_runs(segments, 1, config)
    with tqdm(total=total, desc=f"swap K={segments}", disable=not progress, mininterval=1.0) as bar:
        result = search.run_placements(
            denoisers, tokenizer.batch_decode, score_fn, segments=segments, light=1, steps=s.steps,
            mask_id=int(tokenizer.mask_id), seq_len=profile.data.seq_len, num_samples=num_samples, seed=s.seed,
            config=config, first_index=profile.require("importance").swap_first_index, batch_size=s.batch_size,
            bootstrap=ev.bootstrap, bootstrap_seed=ev.seed,
            progress=lambda _: bar.update(1))
    result.meta = search.result_meta(profile.name, judge_meta, config, ev.bootstrap, ev.seed)
    return result


def judge_scorer(profile):
    """The profile's judge as a function of decoded texts (replaced by a stand-in in tests)."""
    return scorer(profile.evaluate, profile.tokenizer, profile.data.seq_len)
