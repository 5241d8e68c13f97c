"""`mdlm search`: every placement of N light among K equal segments, sampled and judged against all-heavy."""

from __future__ import annotations

import argparse
from pathlib import Path

from mdlm import patterns, search
from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.commands.common import profile_denoisers
from mdlm.io import check_writable
from mdlm.judge import scorer
from mdlm.paths import run_dir
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.sampling_law import SamplerConfig
from mdlm.schedule import dump_schedule
from mdlm.tokenizers import get_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--segments", type=int, help="K equal segments (default: profile search.segments)")
    parser.add_argument("--light", type=int, help="N light segments per placement (default: profile search.light)")
    parser.add_argument("--num-samples", type=int, help="samples per placement (default: profile search.num_samples)")
    parser.add_argument("--traversal", choices=("auto", "trie", "full"), default="auto",
                        help="trie: sample each distinct segment prefix once (default when the predictor allows)")
    parser.add_argument("--out", help="output folder (default: runs/<profile>/search/)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    profile = load_profile(args.profile, overrides={"search": {
        "segments": args.segments, "light": args.light, "num_samples": args.num_samples}})
    cfg, s, ev = profile.require("search"), profile.sample, profile.evaluate
    out = Path(args.out) if args.out else run_dir(profile.name) / "search"
    patterns.check_steps(s.steps, cfg.segments)  # validate before loading anything heavy
    check_writable(out / "search.json")
    config = SamplerConfig.from_settings(profile.sample)
    total = patterns.planned_runs(cfg.segments, cfg.light, config, args.traversal)
    tokenizer = get_tokenizer(profile.tokenizer)
    denoisers = profile_denoisers(profile)
    score_fn, judge_meta = judge_scorer(profile)
    with tqdm(total=total, desc=f"search K={cfg.segments} N={cfg.light}", disable=args.no_progress,
              mininterval=1.0) as bar:
        result = search.run_placements(
            denoisers, tokenizer.batch_decode, score_fn, segments=cfg.segments, light=cfg.light, steps=s.steps,
            mask_id=int(tokenizer.mask_id), seq_len=profile.data.seq_len, num_samples=cfg.num_samples,
            seed=s.seed, config=config, first_index=cfg.first_index, batch_size=s.batch_size,
            bootstrap=ev.bootstrap, bootstrap_seed=ev.seed,
            traversal=args.traversal, progress=lambda _: bar.update(1))
    result.meta = search.result_meta(profile.name, judge_meta, config, ev.bootstrap, ev.seed)
    result.meta[STAGE_TIME_KEY] = elapsed()  # search.json is written last; its figure is not counted
    dump_schedule(search.best_schedule(result), out / "best.yaml")
    search.write_result(result, out, "search", "Coarse segment search")
    best = result.best
    print(f"search: {len(result.rows)} placements ({result.traversal.mode} traversal, "
          f"{result.traversal.segment_runs} segment runs); best {best['pattern']} ({best['schedule']}) "
          f"Δ log gen-PPL {best['delta_log_ppl']:+.4f} [{best['delta_log_ppl_ci_low']:+.4f}, "
          f"{best['delta_log_ppl_ci_high']:+.4f}]; wrote {out}")
    return 0


def judge_scorer(profile):
    """The profile's judge as a function of decoded texts (replaced by a stand-in in tests)."""
    return scorer(profile.evaluate, profile.tokenizer, profile.data.seq_len)
