"""What a sampling call costs besides its rows, and the realized / executed saving that implies per schedule.

A call of the folded forward costs a fixed amount (the head's weights read once, the ops' dispatch, the
sampler's own work) plus an amount per row. The executed-FLOP accounting sees only the rows, so a schedule
that splits its rows between models, and so makes more and emptier calls than all-heavy for the same
row-forwards, realizes less than its FLOPs say. This script measures that, without the timing stage:

1. per model, the time of a call of 1, 2, 4, 8, 12 and 16 rows (one selected position each, as at
   T = 1000), the models and sizes interleaved over rounds, median per size; a least-squares line gives
   the fixed cost and the cost per row;
2. the sampler's own time, per call and per drawn position, fitted over runs of every schedule whose
   denoisers return zero logits at once;
3. per schedule, the calls and their rows of the timing stage's run (the same sample indices, seed and
   batch size; the events do not depend on the logits), the time that the line predicts for them and the
   executed FLOPs (`mdlm.flops`); the predicted realized saving over the executed one.

The prediction leaves out what a line cannot see (caches shared with another process, a call's rows in
chunks), so it is a bound on what the call structure allows, to read beside the measured ratios of
`mdlm timing`. Random weights, tiny profile, one thread:

    PYTHONPATH=. python -m bench.call_costs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.common import ROOT, random_models, tiny_configs, tiny_profile
from mdlm import flops, sampler
from mdlm.folded import FoldedDiT
from mdlm.schedule import Schedule, load_schedule, resolve_schedule_path

MASK_ID = 1  # bpe-8k's [MASK]
CALL_ROWS = (1, 2, 4, 8, 12, 16)


def fit_call_costs(denoisers: dict, seq_len: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per model: {"fixed_ms", "per_row_ms"} of a least-squares line through the median call times."""
    gen = torch.Generator().manual_seed(0)
    inputs = {n: (torch.randint(2, 8000, (n, seq_len), generator=gen), torch.arange(n),
                  torch.randint(0, seq_len, (n,), generator=gen)) for n in CALL_ROWS}
    times: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in range(rounds):
        order = [(m, n) for n in CALL_ROWS for m in denoisers]
        for m, n in order if r % 2 == 0 else order[::-1]:
            denoisers[m](*inputs[n])  # the call before the timed ones: its caches as in a run of calls
            start = time.perf_counter()
            for _ in range(3):
                denoisers[m](*inputs[n])
            times[m, n].append((time.perf_counter() - start) / 3)
    out = {}
    for m in denoisers:
        ms = [1e3 * statistics.median(times[m, n]) for n in CALL_ROWS]
        per_row, fixed = np.polyfit(CALL_ROWS, ms, 1)
        out[m] = {"fixed_ms": float(fixed), "per_row_ms": float(per_row),
                  "median_ms": dict(zip(CALL_ROWS, ms, strict=True))}
    return out


def call_structure(schedule: Schedule, vocab: int, samples: int, seed: int, batch_size: int, config):
    """(rows of each call per model, the run's result, its seconds: the sampler's own) with instant denoisers."""
    log: dict[str, list[int]] = defaultdict(list)

    def logged(name):
        def denoiser(ids, rows, pos):
            log[name].append(int(ids.shape[0]))
            return torch.zeros(pos.numel(), vocab)
        denoiser.last_block_positions = FoldedDiT.last_block_positions  # count as the folded forward runs
        denoiser.computes_conditioning = FoldedDiT.computes_conditioning
        return denoiser

    fns = {m: logged(m) for m in set(schedule.models.values())}
    seconds = []
    for _ in range(3):  # the fastest of three: the sampler's own time is a few % of a run, easily disturbed
        log.clear()
        start = time.perf_counter()
        result = sampler.sample(fns, schedule, mask_id=MASK_ID, seq_len=tiny_profile().data.seq_len,
                                sample_indices=range(samples), seed=seed, config=config, batch_size=batch_size)
        seconds.append(time.perf_counter() - start)
    return dict(log), result, min(seconds)


def predicted_ms(rows: dict[str, list[int]], costs: dict[str, dict[str, float]], per_call: float,
                 per_position: float, head_positions: int) -> float:
    """A run's predicted milliseconds: per call of model m, its fixed cost plus the sampler's per-call time and
    the model's cost per row times the call's rows; plus the sampler's time per drawn (head) position."""
    model_ms = sum(len(r) * (costs[m]["fixed_ms"] + per_call) + sum(r) * costs[m]["per_row_ms"]
                   for m, r in rows.items())
    return float(per_position * head_positions + model_ms)


def predict(rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    profile = tiny_profile()
    configs = tiny_configs()
    vocab = configs["heavy"].vocab_size
    denoisers = {m: sampler.denoiser_from_model(model) for m, model in random_models(configs).items()}
    costs = fit_call_costs(denoisers, profile.data.seq_len, rounds)
    settings, timing = profile.sample, profile.timing
    config = sampler.SamplerConfig.from_settings(settings)
    names = [str(n) for n in yaml.safe_load((ROOT / "params.yaml").read_text())["schedules"]]
    runs, predicted, own = {}, {}, []
    for name in names:
        schedule = load_schedule(resolve_schedule_path(name), settings.steps)
        rows, result, seconds = call_structure(schedule, vocab, timing.samples, settings.seed, settings.batch_size,
                                               config)
        own.append((int(result.calls.sum()), int(result.head_positions.sum()), 1e3 * seconds))
        runs[name] = (rows, result, schedule)
    # the sampler's own time: a cost per call and one per drawn position (its float64 draw over the vocabulary),
    # fitted over the schedules' runs
    (per_call, per_position), *_ = np.linalg.lstsq(np.array([o[:2] for o in own], dtype=float),
                                                  np.array([o[2] for o in own]), rcond=None)
    for name, (rows, result, _) in runs.items():
        predicted[name] = predicted_ms(rows, costs, per_call, per_position, int(result.head_positions.sum()))
    base = _sampled(runs["all-heavy"][1], runs["all-heavy"][2], config)
    out = {"threads": threads, "rounds": rounds, "samples": timing.samples, "batch_size": settings.batch_size,
           "call_costs": costs,
           "sampler_ms": {"per_call": float(per_call), "per_position": float(per_position)}, "schedules": {}}
    for name, (rows, result, schedule) in runs.items():
        executed = flops.executed_accounting(_sampled(result, schedule, config), configs, baseline=base)["saving"]
        realized = 1.0 - predicted[name] / predicted["all-heavy"]
        out["schedules"][name] = {
            "calls": {m: len(r) for m, r in rows.items()}, "row_forwards": {m: sum(r) for m, r in rows.items()},
            "predicted_ms": predicted[name], "executed_saving": executed, "predicted_saving": realized,
            "predicted_ratio": realized / executed if executed and executed > 1e-9 else None}
    return out


def _sampled(result, schedule: Schedule, config) -> flops.SampledRun:
    return flops.SampledRun(path=schedule.name, rows=int(result.sample_indices.size), steps=schedule.steps,
                            noise_removal=config.noise_removal,
                            row_forwards={m: int(v.sum()) for m, v in result.row_forwards_by_model().items()},
                            calls=result.calls_by_model(), schedule=schedule.name,
                            head_positions=result.head_positions_by_model(),
                            last_block_positions=result.last_block_positions_by_model(),
                            conditioning_rows=result.conditioning_rows_by_model())


def _table(out: dict) -> str:
    lines = [f"call costs (1 thread, {out['rounds']} rounds): " + "; ".join(
        f"{m} {c['fixed_ms']:.2f} ms + {c['per_row_ms']:.3f} ms/row" for m, c in out["call_costs"].items())
        + "; sampler {per_call:.3f} ms/call + {per_position:.4f} ms/position".format(**out["sampler_ms"]),
        f"{'schedule':14s} {'calls':>18s} {'executed':>9s} {'predicted':>10s} {'ratio':>6s}"]
    for name, s in out["schedules"].items():
        calls = " / ".join(f"{m[0]}{c}" for m, c in sorted(s["calls"].items()))
        ratio = "-" if s["predicted_ratio"] is None else f"{s['predicted_ratio']:.3f}"
        lines.append(f"{name:14s} {calls:>18s} {s['executed_saving']:9.1%} {s['predicted_saving']:10.1%} {ratio:>6s}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    out = predict(args.rounds, args.threads)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(_table(out))


if __name__ == "__main__":
    main()
