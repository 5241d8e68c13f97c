"""The sampler (`mdlm.sampler.sample`, its public entry point) on the tiny sizes with random-weight models.

* `test_sampler_step[heavy|light]`: a single-model schedule with the `ddpm` predictor (every row through the
  model at every step), no final pass, batch 8, T = STEP_T; reported per step. Sampler overhead =
  (sampling time − time inside the model) / time inside the model, both measured in the same run (so the
  drift of a shared machine cancels), median over rounds. A small T puts more unmasking positions into each
  step (B·L/T, each a softmax and inverse CDF over the vocabulary) and amortises the per-run setup over
  fewer steps than the profile's T = 1000, so this overestimates the overhead at T = 1000.
* `test_schedule[all-heavy|sandwich]`: one whole run with the profile's sampler settings (ddpm_cache,
  float64, final noise-removal pass), batch SCHEDULE_BATCH, T = SCHEDULE_T.
* `test_schedule_round`: one round = one run of every shipped schedule, the order rotated from round to
  round. Realized saving of a schedule = median over rounds of 1 − time / time(all-heavy in the same round):
  pairing within a round cancels most of the drift of a shared machine. FLOP saving = the effective
  full-FLOP saving of the run's own row-forwards vs the all-heavy run's (`flops.effective_accounting`).
  All runs use one seed, so every schedule unmasks the same positions at the same steps (common random
  numbers) and pushes the same rows through a model at each step: only the models differ. The pooled
  ratio Σ realized / Σ FLOP saving over the non-reference schedules is the summary number. The same savings
  from this process's CPU time (`time.process_time`) are reported beside: with one thread, CPU time is what
  the wall clock of an idle machine would show, without the time lost to other processes.
"""

from __future__ import annotations

import statistics
import time

import pytest

from bench.common import (
    BATCH,
    MASK_ID,
    ROOT,
    SCHEDULE_BATCH,
    SCHEDULE_T,
    SUMMARY,
    matmul_peak_flops,
    min_median,
    tiny_profile,
)
from mdlm import flops, sampler
from mdlm.schedule import Schedule, load_schedule

STEP_T = 32
ROUNDS, WARMUP_ROUNDS = 3, 1
ROUND_ROUNDS = 5  # test_schedule_round: more pairs, since its savings are small numbers
SCHEDULE_FILES = sorted((ROOT / "schedules").glob("*.yaml"), key=lambda p: (p.stem != "all-heavy", p.stem))
REFERENCE = "all-heavy"


def _denoisers(models):
    # the denoiser `mdlm sample` builds: the head at the requested positions only
    return {name: sampler.denoiser_from_model(model) for name, model in models.items()}


def _sampler_config(**overrides) -> sampler.SamplerConfig:
    s = tiny_profile().sample
    settings = dict(predictor=s.predictor, precision=s.precision, top_p=s.top_p, noise_removal=s.noise_removal)
    return sampler.SamplerConfig(**{**settings, **overrides})


def _run(models, schedule: Schedule, config: sampler.SamplerConfig, batch: int) -> sampler.SampleResult:
    return sampler.sample(_denoisers(models), schedule, mask_id=MASK_ID, seq_len=tiny_profile().data.seq_len,
                          sample_indices=range(batch), seed=0, config=config, batch_size=batch)


def _sampled_run(result: sampler.SampleResult, schedule: Schedule, config: sampler.SamplerConfig) -> flops.SampledRun:
    return flops.SampledRun(path=schedule.name, rows=int(result.sample_indices.size), steps=schedule.steps,
                            noise_removal=config.noise_removal,
                            row_forwards={m: int(v.sum()) for m, v in result.row_forwards_by_model().items()},
                            calls=result.calls_by_model(), schedule=schedule.name)


@pytest.mark.parametrize("which", ["heavy", "light"])
def test_sampler_step(benchmark, models, which):
    alias = "H" if which == "heavy" else "L"
    schedule = Schedule.from_segments(f"all-{which}", [f"{alias}100%"], STEP_T)
    config = _sampler_config(predictor="ddpm", noise_removal=False)
    model = models[which]
    forward_times: list[float] = []
    overheads: list[float] = []  # per round: (sampling time - time inside the model) / time inside the model

    def timed_forward(ids, rows, pos):
        start = time.perf_counter()
        logits = model(ids, None, (rows, pos))  # ddpm asks for every position: the full head
        forward_times.append(time.perf_counter() - start)
        return logits

    def run():
        forward_times.clear()
        start = time.perf_counter()
        result = sampler.sample({which: timed_forward}, schedule, mask_id=MASK_ID,
                                seq_len=tiny_profile().data.seq_len, sample_indices=range(BATCH), seed=0,
                                config=config, batch_size=BATCH)
        total, inside = time.perf_counter() - start, sum(forward_times)
        overheads.append((total - inside) / inside)
        return result

    result = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    assert {m: c for m, c in result.calls_by_model().items() if c} == {which: STEP_T}
    assert not (result.token_ids == MASK_ID).any()  # T steps unmask all but ~t_min of the positions

    overhead = statistics.median(overheads[WARMUP_ROUNDS:] or overheads)  # disabled benchmark: one call
    entry = {"steps": STEP_T, "overhead": overhead}
    benchmark.extra_info.update(model=which, batch=BATCH, steps=STEP_T, predictor="ddpm",
                                precision=config.precision, noise_removal=False, overhead=overhead)
    times = min_median(benchmark)
    if times is None:
        return
    entry["per_step_s"] = times[0] / STEP_T
    forward, heavy = SUMMARY["forward_s"].get(which), SUMMARY["forward_s"].get("heavy")
    if forward is not None and heavy is not None:
        # the same overhead in units of a heavy forward (the light model's is relatively larger)
        entry["overhead_vs_heavy_forward"] = overhead * forward / heavy
    benchmark.extra_info.update(entry)
    SUMMARY["step"][which] = entry


@pytest.mark.parametrize("name", [REFERENCE, "sandwich"])
def test_schedule(benchmark, models, name):
    schedule = load_schedule(ROOT / "schedules" / f"{name}.yaml", SCHEDULE_T, known_models=list(models))
    config = _sampler_config()
    result = benchmark.pedantic(_run, args=(models, schedule, config, SCHEDULE_BATCH), rounds=ROUNDS,
                                warmup_rounds=WARMUP_ROUNDS)
    assert not (result.token_ids == MASK_ID).any()
    benchmark.extra_info.update(schedule=name, notation=schedule.notation, batch=SCHEDULE_BATCH,
                                steps=SCHEDULE_T, predictor=config.predictor, precision=config.precision,
                                row_forwards=_sampled_run(result, schedule, config).row_forwards)


def test_schedule_round(benchmark, models, configs):
    config = _sampler_config()
    schedules = [load_schedule(p, SCHEDULE_T, known_models=list(models)) for p in SCHEDULE_FILES]
    assert schedules[0].name == REFERENCE
    times: dict[str, list[float]] = {s.name: [] for s in schedules}  # wall clock
    cpu_times: dict[str, list[float]] = {s.name: [] for s in schedules}  # this process's CPU time
    runs: dict[str, flops.SampledRun] = {}
    rotation = iter(range(10**6))

    def one_round():
        shift = next(rotation) % len(schedules)
        for schedule in schedules[shift:] + schedules[:shift]:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = _run(models, schedule, config, SCHEDULE_BATCH)
            times[schedule.name].append(time.perf_counter() - start)
            cpu_times[schedule.name].append(time.process_time() - cpu_start)
            runs[schedule.name] = _sampled_run(result, schedule, config)

    benchmark.pedantic(one_round, rounds=ROUND_ROUNDS, warmup_rounds=0)

    costs = {m: flops.analytic_macs(cfg) for m, cfg in configs.items()}
    def paired_saving(series: dict[str, list[float]], name: str) -> float:
        return statistics.median(1.0 - t / r for t, r in zip(series[name], series[REFERENCE], strict=True))

    table = {}
    for schedule in schedules:
        name = schedule.name
        effective = flops.effective_accounting(runs[name], costs, baseline=runs[REFERENCE])
        nominal = flops.schedule_savings(schedule.model_steps, costs)
        realized, realized_cpu = paired_saving(times, name), paired_saving(cpu_times, name)
        flop_saving = effective["saving_vs_baseline"]
        table[name] = {
            "notation": schedule.notation, "time_s": min(times[name]), "median_s": statistics.median(times[name]),
            "cpu_time_s": min(cpu_times[name]),
            "realized_saving": realized, "flop_saving": flop_saving,
            "realized_over_flop": realized / flop_saving if flop_saving > 0.01 else None,
            "realized_cpu_saving": realized_cpu,
            "realized_cpu_over_flop": realized_cpu / flop_saving if flop_saving > 0.01 else None,
            "blocks_only_saving": nominal["blocks_only_saving"], "full_saving": nominal["full_saving"],
            "row_forwards": runs[name].row_forwards,
        }
    # pooled over the schedules: one ratio with far less noise than each small saving's own
    others = [t for name, t in table.items() if name != REFERENCE]
    flop_total = sum(t["flop_saving"] for t in others)
    pooled = {"pooled_realized_over_flop": sum(t["realized_saving"] for t in others) / flop_total,
              "pooled_realized_cpu_over_flop": sum(t["realized_cpu_saving"] for t in others) / flop_total}
    benchmark.extra_info.update(batch=SCHEDULE_BATCH, steps=SCHEDULE_T, predictor=config.predictor,
                                precision=config.precision, rounds=ROUND_ROUNDS, schedules=table, **pooled)
    if min_median(benchmark) is not None:
        SUMMARY["schedules"].update(table)
        SUMMARY.update(pooled)


WHOLE_T, WHOLE_BATCH = 1000, 32  # the tiny profile's sample settings


def test_all_heavy_whole_run(benchmark, models, configs):
    """All-heavy at the tiny profile's settings (32 samples, T = 1000, ddpm_cache, float64, final pass, its
    batch_size rows per call at most, one process), one run.

    samples/s; executed FLOP/s = the run's executed FLOPs (`mdlm.flops.executed_macs`: blocks and conditioning
    per row-forward, less the last block's per-position part where it was not computed, the final layer per
    head position) / wall time, against the fp32 matmul rate measured in the same test (before and after the run);
    sampler overhead = (wall - time inside the model calls) / time inside the model calls.
    """
    schedule = Schedule.from_segments("all-heavy", ["H100%"], WHOLE_T)
    heavy, inside = sampler.denoiser_from_model(models["heavy"]), []  # the forward `mdlm sample` runs

    def timed(ids, rows, pos):
        start = time.perf_counter()
        logits = heavy(ids, rows, pos)
        inside.append(time.perf_counter() - start)
        return logits

    timed.last_block_positions = heavy.last_block_positions  # the tally follows the forward it wraps
    timed.computes_conditioning = heavy.computes_conditioning

    # read params.yaml before the clock starts: three parses inside the timed run were ~1.4% of its wall time,
    # which the overhead figure counted as the sampler's
    profile, config = tiny_profile(), _sampler_config()

    def run():
        inside.clear()
        return sampler.sample({"heavy": timed}, schedule, mask_id=MASK_ID, seq_len=profile.data.seq_len,
                              sample_indices=range(WHOLE_BATCH), seed=0, config=config,
                              batch_size=profile.sample.batch_size)

    peak = matmul_peak_flops()
    start = time.perf_counter()
    result = benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    wall = time.perf_counter() - start
    peak = max(peak, matmul_peak_flops())
    assert not (result.token_ids == MASK_ID).any()

    row_forwards, heads = int(result.row_forwards.sum()), int(result.head_positions.sum())
    counted = flops.SampledRun(path="whole run", rows=WHOLE_BATCH, steps=WHOLE_T, noise_removal=True,
                               row_forwards={"heavy": row_forwards}, head_positions={"heavy": heads},
                               last_block_positions=result.last_block_positions_by_model(),
                               conditioning_rows=result.conditioning_rows_by_model())
    executed = 2 * sum(flops.executed_macs(counted, {"heavy": configs["heavy"]})[0].values())
    entry = {"steps": WHOLE_T, "samples": WHOLE_BATCH, "seconds": wall, "samples_per_s": WHOLE_BATCH / wall,
             "calls": int(result.calls.sum()), "row_forwards": row_forwards, "head_positions": heads,
             "executed_gflops_per_s": executed / wall / 1e9, "matmul_peak_gflops_per_s": peak / 1e9,
             "executed_fraction_of_peak": executed / wall / peak,
             "overhead": (wall - sum(inside)) / sum(inside)}
    benchmark.extra_info.update(entry)
    if min_median(benchmark) is not None:
        SUMMARY["whole_run"] = entry
