"""`mdlm timing`: controlled wall-clock savings of the pipeline's schedules (design: `mdlm.timing`).

Every schedule is sampled in one process (threads pinned to `timing.threads`): `timing.warmup` untimed runs of
all-heavy, then rounds on sample indices 0..`timing.samples`-1 of `sample.seed`, at most `sample.batch_size`
rows per call, with the schedules' runs interleaved in time slices of model calls (ddpm_cache; `mdlm.timing`).
With `timing.workers` > 1 the `timing.rounds` rounds are shared among that many spawned processes running at
once (one per core), each with its own models and warm-up; a round's pairs never span two workers. Writes
`runs/<profile>/timing/timing.json`: per schedule the seconds per round (wall, CPU),
the realized saving vs all-heavy of the same round (median over rounds, order-statistic interval over rounds),
the executed-FLOP saving of the same timed runs (`mdlm.flops`, `executed`) and their ratio.

timing.json: {"profile", "reference": "all-heavy", "steps", "settings": {timing section}, "sample_indices",
"seed", "batch_size", "predictor", "num_threads" (per worker), "torch_version", "machine", "cpu_capability",
"sampling_gemm": {model: the GEMMs its denoiser ran}, "orders": [[names] per round], "worker_of_round": [worker
index per round], "total_wall_s", "schedules": [record], "stage_time": {"wall_s", "cpu_s"} of the whole command
(its workers' CPU included)}; a record:
{"schedule", "wall_s": [per round], "cpu_s": [per round], "median_wall_s", "executed_saving", "realized_saving"
and "realized_saving_cpu": {"point", "ci_low", "ci_high"}, "ratio_to_executed" and "ratio_to_executed_cpu": same
or null (no executed saving); ci_low/ci_high null below 6 rounds, "meets_target": bool or null (executed
saving < 10%), "rounds_to_show_target": int or null, "row_forwards",
"head_positions", "head_positions_source", "executed_flops", "calls", "same_tokens_every_round"}.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import platform
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mdlm import sampler
from mdlm.clock import STAGE_TIME_KEY, elapsed
from mdlm.commands.common import profile_denoisers
from mdlm.errors import UserError
from mdlm.flops import SampledRun, executed_accounting, model_configs
from mdlm.io import atomic_write_json, check_writable
from mdlm.onednn import cpu_capability
from mdlm.paths import run_dir
from mdlm.profiles import add_profile_argument, load_params, load_profile
from mdlm.run_counts import run_counts_from_meta
from mdlm.sample_runs import run_meta
from mdlm.sampling_law import SamplerConfig
from mdlm.schedule import Schedule, load_schedule, resolve_schedule_path
from mdlm.timing import RoundTimes, measure_rounds, merge_round_times, round_shares, summarize

REFERENCE_SCHEDULE = "all-heavy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedules", nargs="+", help="schedule names or files (default: profile "
                        f"timing.schedules, else params.yaml `schedules`); must include {REFERENCE_SCHEDULE}")
    parser.add_argument("--rounds", type=int, help="timed rounds (default: profile timing.rounds)")
    parser.add_argument("--samples", type=int, help="samples per schedule and round (default: timing.samples)")
    parser.add_argument("--threads", type=int, help="torch threads (default: timing.threads)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first, in each worker (default: timing.warmup)")
    parser.add_argument("--workers", type=int, help="processes sharing the rounds (default: timing.workers)")
    parser.add_argument("--steps", type=int, help="T (default: timing.steps, else sample.steps)")
    parser.add_argument("--out", help="default: runs/<profile>/timing/timing.json")
    add_profile_argument(parser)


def mask_id(tokenizer: str) -> int:
    from mdlm.tokenizers import get_tokenizer

    return int(get_tokenizer(tokenizer).mask_id)


def main(args: argparse.Namespace) -> int:
    overrides = {"timing": {"rounds": args.rounds, "samples": args.samples, "threads": args.threads,
                            "warmup": args.warmup, "steps": args.steps, "workers": args.workers}}
    profile = load_profile(args.profile, overrides=overrides)
    settings = profile.timing
    steps = settings.steps or profile.sample.steps
    names = list(args.schedules or settings.schedules or load_params().get("schedules") or [])
    schedules = _schedules(names, steps)
    out = Path(args.out) if args.out else run_dir(profile.name) / "timing" / "timing.json"
    check_writable(out)
    config = _sampler_config(profile)
    shares = round_shares(settings.rounds, settings.workers)
    start = time.perf_counter()
    parts = run_parts([(args.profile, overrides, names, first, rounds) for first, rounds in shares])
    total = time.perf_counter() - start
    times = merge_round_times([part.times for part in parts])
    results = parts[0].results  # every worker sampled the same indices: the same counts (checked by digest)
    digests = {n: set().union(*(part.digests[n] for part in parts)) for n in schedules}

    runs = {n: _sampled_run(n, results[n], s, config) for n, s in schedules.items()}
    used = {m for s in schedules.values() for m in s.model_steps} | {"heavy"}
    configs = model_configs(profile.model, profile.tokenizer, profile.data.seq_len, sorted(used))
    executed = {n: executed_accounting(r, configs, baseline=runs[REFERENCE_SCHEDULE]) for n, r in runs.items()}
    records = summarize(times, {n: e["saving"] for n, e in executed.items()}, REFERENCE_SCHEDULE)
    for rec in records:
        e = executed[rec["schedule"]]
        rec.update(row_forwards=e["row_forwards"], head_positions=e["head_positions"],
                   head_positions_source=e["head_positions_source"], executed_flops=e["flops"],
                   calls=runs[rec["schedule"]].calls, same_tokens_every_round=len(digests[rec["schedule"]]) == 1)
    atomic_write_json(out, {
        "profile": profile.name, "reference": REFERENCE_SCHEDULE, "steps": steps,
        "settings": settings.model_dump(), "sample_indices": list(range(settings.samples)),
        "seed": profile.sample.seed, "batch_size": profile.sample.batch_size, "predictor": config.predictor,
        "num_threads": settings.threads, "torch_version": torch.__version__, "machine": platform.machine(),
        "cpu_capability": cpu_capability(), "sampling_gemm": parts[0].gemms,
        "orders": times.orders, "worker_of_round": [k for k, (_, n) in enumerate(shares) for _ in range(n)],
        "total_wall_s": total, "schedules": records, STAGE_TIME_KEY: elapsed(),
    })
    print(f"timed {len(schedules)} schedules x {settings.rounds} rounds in {len(shares)} worker(s) ({total:.1f} s) "
          f"-> {out}: " + ", ".join(_summary(r) for r in records if r["schedule"] != REFERENCE_SCHEDULE))
    return 0


def _schedules(names: list[str], steps: int) -> dict[str, Schedule]:
    schedules = {s.name: s for s in (load_schedule(resolve_schedule_path(n), steps) for n in names)}
    if REFERENCE_SCHEDULE not in schedules or len(schedules) != len(names):
        raise UserError(f"timing: schedules {names} must be distinct and include {REFERENCE_SCHEDULE!r}")
    return schedules


def _sampler_config(profile: Any) -> SamplerConfig:
    config = SamplerConfig.from_settings(profile.sample)
    if config.predictor != "ddpm_cache" or config.precision == "float32-reference":
        raise UserError(f"timing: profile {profile.name!r} samples with predictor {config.predictor!r}, precision "
                        f"{config.precision!r}; the interleaved rounds need ddpm_cache and a non-reference precision")
    return config


class Part(NamedTuple):
    """One worker's rounds: their times, the last run of each schedule, and the digests of its samples."""

    times: RoundTimes
    results: dict[str, Any]
    digests: dict[str, set[str]]
    gemms: dict[str, str]  # the GEMMs each model's denoiser ran (`sampler.gemms_of`)


def run_parts(jobs: list[tuple[Any, ...]], part: Callable[..., Any] | None = None) -> list[Part]:
    """``part(*job)`` (default `measure_part`) for each job: in this process for one job, else one spawned
    process per job (its own models and thread pool), all at once. A worker's error reaches this process as its
    own exception; a worker that dies without one, as a one-line error."""
    part = part or measure_part
    if len(jobs) == 1:
        return [part(*jobs[0])]
    try:
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(part, *zip(*jobs, strict=True)))
    except BrokenProcessPool as exc:  # killed (out of memory, a signal): it has no exception of its own to show
        raise UserError(f"timing: a worker process ended abruptly ({exc}); `--workers 1` runs the rounds in this "
                        f"process, where its error shows") from None


def measure_part(profile_name: str | None, overrides: dict[str, Any], names: list[str], first_round: int,
                 rounds: int) -> Part:
    """Rounds first_round..first_round + rounds - 1 of the measurement, after this process's own warm-up."""
    profile = load_profile(profile_name, overrides=overrides)
    settings = profile.timing
    schedules = _schedules(names, settings.steps or profile.sample.steps)
    torch.set_num_threads(settings.threads)
    config = _sampler_config(profile)
    denoisers = profile_denoisers(profile)
    mask = mask_id(profile.tokenizer)
    results: dict[str, Any] = {}
    digests: dict[str, set[str]] = {n: set() for n in schedules}

    def start_run(name: str) -> Iterator[float]:  # one model call per step (`sampler.sample_by_call`)
        result = yield from sampler.sample_by_call(
            denoisers, schedules[name], mask_id=mask, seq_len=profile.data.seq_len,
            sample_indices=range(settings.samples), seed=profile.sample.seed, config=config,
            batch_size=profile.sample.batch_size)
        results[name] = result
        digests[name].add(hashlib.sha256(result.token_ids.tobytes()).hexdigest())

    # warm-up (lazy init, allocator, thread pool): the reference only; every schedule runs the same two models
    times = measure_rounds(list(schedules), start_run, rounds, settings.warmup, warmup_names=[REFERENCE_SCHEDULE],
                           slice_s=settings.slice_s, first_round=first_round)
    return Part(times, results, digests, sampler.gemms_of(denoisers))


def _sampled_run(name: str, result: Any, schedule: Schedule, config: Any) -> SampledRun:
    """The counts of a timed run, read back through the run record the sampler would write."""
    meta = run_meta(result, schedule, 0, config)
    counts = run_counts_from_meta(meta, f"timing run of {name}")
    return SampledRun(path=f"timing run of {name}", rows=int(result.sample_indices.size), steps=schedule.steps,
                      noise_removal=config.noise_removal, row_forwards=counts["row_forwards"] or {},
                      calls=counts["calls"] or {}, schedule=name, head_positions=counts["head_positions"],
                      last_block_positions=counts["last_block_positions"],
                      conditioning_rows=counts["conditioning_rows"])


def _summary(rec: dict[str, Any]) -> str:
    s = rec["realized_saving"]
    interval = "no interval below 6 rounds" if s["ci_low"] is None else f"{s['ci_low']:+.1%}, {s['ci_high']:+.1%}"
    return f"{rec['schedule']} {s['point']:+.1%} [{interval}] (executed {rec['executed_saving']:+.1%})"
