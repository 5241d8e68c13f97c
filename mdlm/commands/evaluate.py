"""`mdlm evaluate`: judge gen-PPL and entropy of a samples file, with paired deltas against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.evaluate import compute_metrics, per_sample_path, per_sample_rows, read_samples, score_file
from mdlm.io import atomic_write_json, atomic_write_jsonl, check_writable
from mdlm.judge import DEFAULT_EOS_TEXT, load_judge, markers
from mdlm.judge_reference import GENPPL_PROTOCOLS
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.stats import align_pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="sampler JSONL file")
    parser.add_argument("--out", required=True, help="metrics JSON; per-sample scores go to <stem>.per_sample.jsonl")
    parser.add_argument("--judge", help="smollm2-135m, gpt2-large or a model folder (default: profile)")
    parser.add_argument("--baseline", help="all-heavy samples with the same seeds, for paired deltas")
    parser.add_argument("--batch-size", type=int, help="judge batch size (default: profile)")
    parser.add_argument("--bootstrap", type=int, help="bootstrap resamples B (default: profile)")
    parser.add_argument("--seed", type=int, help="bootstrap seed (default: profile)")
    parser.add_argument("--eos-text", help="the MDLM's EOS string in decoded text (default: from the profile's "
                        f"tokenizer, {DEFAULT_EOS_TEXT} for gpt2/bpe-8k, [SEP] for bert-base-uncased)")
    parser.add_argument("--bos-text", help="the MDLM's BOS string, if not the EOS string ([CLS] for bert)")
    parser.add_argument("--genppl-protocol", choices=GENPPL_PROTOCOLS,
                        help="gen-PPL rule: suite, or mdlm (the reference's); default: profile")
    parser.add_argument("--retokenize-length", type=int,
                        help="mdlm rule: judge ids kept per sample (default: profile, else data.seq_len)")
    parser.add_argument("--drop-remainder", action=argparse.BooleanOptionalAction, default=None,
                        help="mdlm rule: leave the last N %% batch-size samples unscored, as the reference does "
                        "(default: off)")
    add_profile_argument(parser)


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, overrides={"evaluate": {
        "judge": args.judge, "batch_size": args.batch_size, "bootstrap": args.bootstrap, "seed": args.seed,
        "eos_text": args.eos_text, "bos_text": args.bos_text, "genppl_protocol": args.genppl_protocol,
        "retokenize_length": args.retokenize_length, "drop_remainder": args.drop_remainder}})
    settings = profile.evaluate
    eos_text, bos_text = markers(settings, profile.tokenizer)

    samples = read_samples(args.samples)  # bad input fails before the judge loads
    base_samples = read_samples(args.baseline) if args.baseline else None
    if base_samples is not None:
        align_pairs(samples.keys, base_samples.keys, str(samples.path), str(base_samples.path))
    check_writable(Path(args.out))

    judge = load_judge(settings.judge)
    rule = dict(protocol=settings.genppl_protocol, drop_remainder=settings.drop_remainder,
                max_length=settings.retokenize_length or profile.data.seq_len)
    scores = score_file(judge, samples, settings.batch_size, eos_text, bos_text, **rule)
    same_file = base_samples is not None and Path(args.baseline).resolve() == Path(args.samples).resolve()
    base = scores if same_file else (score_file(judge, base_samples, settings.batch_size, eos_text, bos_text, **rule)
                                     if base_samples else None)
    if metrics_dropped(scores):
        print(f"WARNING: drop_remainder: {int(scores.dropped.sum())} of {len(scores.dropped)} samples of "
              f"{samples.path} NOT scored (the reference's remainder-batch drop)", file=sys.stderr)
    metrics = compute_metrics(judge, scores, base, B=settings.bootstrap, seed=settings.seed)
    metrics["eos_text"] = eos_text
    metrics["bos_text"] = bos_text
    metrics["per_sample"] = str(per_sample_path(args.out))
    metrics[STAGE_TIME_KEY] = elapsed()

    # per-sample scores first: metrics.json is the last file written, so its presence means a complete run
    atomic_write_jsonl(per_sample_path(args.out), per_sample_rows(scores))
    atomic_write_json(args.out, metrics)
    print(
        f"{samples.schedule}: gen-PPL {metrics['gen_ppl']:.3f} "
        f"[{metrics['gen_ppl_ci_low']:.3f}, {metrics['gen_ppl_ci_high']:.3f}], "
        f"entropy {metrics['entropy']:.4f} ({metrics['num_samples']} samples, judge {judge.name}, "
        f"gen-PPL rule {metrics['genppl_protocol']})"
        + (f", vs baseline {metrics['ppl_ratio_pct']:+.2f}% "
           f"[{metrics['ppl_ratio_pct_ci_low']:+.2f}, {metrics['ppl_ratio_pct_ci_high']:+.2f}]" if base else "")
    )
    return 0


def metrics_dropped(scores) -> bool:
    return scores.dropped is not None and bool(scores.dropped.any())
