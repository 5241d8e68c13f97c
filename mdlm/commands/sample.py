"""`mdlm sample`: sample a profile's models with a schedule; writes <out>.jsonl and <stem>.meta.json."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.commands.common import profile_denoisers
from mdlm.errors import UserError
from mdlm.io import atomic_write_json, check_writable, read_json
from mdlm.paths import run_dir
from mdlm.prefixes import read_prefixes
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.sample_runs import meta_path, run_meta, sample_distributed, sample_record, world, write_samples
from mdlm.sampler import gemms_of
from mdlm.sampling_law import (
    PRECISION_ALIASES,
    PRECISIONS,
    PREDICTORS,
    SamplerConfig,
)
from mdlm.schedule import load_schedule, resolve_schedule_path
from mdlm.tokenizers import get_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--schedule", required=True, help="schedule file, or the name of one in schedules/")
    parser.add_argument("--num-samples", type=int, help="default: profile sample.num_samples")
    parser.add_argument("--seed", type=int, help="default: profile sample.seed")
    parser.add_argument("--batch-size", type=int, help="default: profile sample.batch_size")
    prefix = parser.add_mutually_exclusive_group()
    prefix.add_argument("--prefix", help="text every sample starts with")
    prefix.add_argument("--prefix-file", help="a text file (one prefix for all samples) or a .jsonl file "
                        "with one {\"text\": ...} or {\"token_ids\": [...]} per sample, in sample order")
    parser.add_argument("--prefix-bos", action=argparse.BooleanOptionalAction, default=True,
                        help="put BOS before a text prefix (default: on)")
    parser.add_argument("--precision", choices=(*PRECISIONS, *PRECISION_ALIASES),
                        help="default: profile sample.precision")
    parser.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]; default: profile sample.top_p")
    parser.add_argument("--predictor", choices=PREDICTORS, help="default: profile sample.predictor")
    parser.add_argument("--steps", type=int, help="denoising steps T; default: profile sample.steps")
    parser.add_argument("--noise-removal", action=argparse.BooleanOptionalAction, default=None,
                        help="final argmax pass (default: profile sample.noise_removal)")
    parser.add_argument("--workers", type=int, help="CPU worker processes, one thread each (default: profile "
                        "sample.workers)")
    parser.add_argument("--device", default="cpu", help="torch device of the models (default: cpu)")
    parser.add_argument("--out", help="samples .jsonl (default: runs/<profile>/samples/<schedule name>.jsonl)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, overrides={"sample": {
        "steps": args.steps, "num_samples": args.num_samples, "batch_size": args.batch_size, "seed": args.seed,
        "precision": args.precision, "top_p": args.top_p, "predictor": args.predictor,
        "noise_removal": args.noise_removal, "workers": args.workers}})
    settings = profile.sample
    config = SamplerConfig.from_settings(settings)
    size, rank = world()
    device = args.device
    if device == "cuda" and size > 1:  # one GPU per torchrun process
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"

    # cheap checks first: schedule, tokenizer and prefixes before the models are loaded
    schedule_path = resolve_schedule_path(args.schedule)
    checked = load_schedule(schedule_path, settings.steps)
    tokenizer = get_tokenizer(profile.tokenizer)
    prefixes = read_prefixes(tokenizer, settings.num_samples, args.prefix, args.prefix_file, args.prefix_bos)
    out = Path(args.out) if args.out else run_dir(profile.name) / "samples" / f"{checked.name}.jsonl"
    if rank == 0:
        check_writable(out)
    if settings.workers > 1 and size == 1 and device == "cpu":
        status = relaunch(args.argv, settings.workers)
        # rank 0 wrote the files with its own time; the stage's is this process's, the workers' CPU included
        restamp_stage_time(meta_path(out))
        return status
    denoisers = profile_denoisers(profile, device)
    schedule = load_schedule(schedule_path, settings.steps, known_models=list(denoisers))

    result = sample_distributed(
        denoisers=denoisers, schedule=schedule, mask_id=int(tokenizer.mask_id), seq_len=profile.data.seq_len,
        sample_indices=range(settings.num_samples), seed=settings.seed, config=config,
        batch_size=settings.batch_size, prefixes=prefixes, device=device,
        progress=rank == 0 and not args.no_progress,
    )
    if result is None:
        return 0
    texts = tokenizer.batch_decode([row.tolist() for row in result.token_ids])
    records = [sample_record(result, k, texts[k], schedule, settings.seed, config) for k in range(len(texts))]
    meta = run_meta(result, schedule, settings.seed, config, profile=profile.name, batch_size=settings.batch_size,
                    world_size=size, device=str(device), torch_version=torch.__version__,
                    num_threads=torch.get_num_threads(), machine=platform.machine(),
                    sampling_gemm=gemms_of(denoisers), **{STAGE_TIME_KEY: elapsed()})
    write_samples(out, records, meta)
    print(f"wrote {len(records)} samples to {out} ({meta['wall_time_s']:.1f} s; calls {meta['calls']}, "
          f"row-forwards {meta['row_forwards']})")
    return 0


def restamp_stage_time(meta_file: Path) -> None:
    """Put this process's time into a run record that a worker process wrote."""
    meta = read_json(meta_file, "the sample workers write it")
    meta[STAGE_TIME_KEY] = elapsed()
    atomic_write_json(meta_file, meta)


def relaunch(argv: list[str], workers: int) -> int:
    """Run this same command line as ``workers`` torchrun processes of one thread each (gloo on this host).

    On a few CPU cores, processes beat threads: a sampling call is a chain of small kernels, and intra-op
    threads synchronise at every one of them (and stall whenever another job holds a core). Rank 0 gathers
    the samples and writes the files; a run's samples depend on how rows are batched only through the fp32
    rounding of the GEMMs (docs/sampler.md), and the run record states `world_size`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launch = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={workers}", "-m", "mdlm", *argv])
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the workers' thread count (torchrun would set it, with a warning)
    try:
        run(launch)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        raise UserError(f"sample: {len(exc.failures)} of {workers} worker processes failed (exit status "
                        f"{', '.join(map(str, codes))}; their error is above)") from None
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return 0
